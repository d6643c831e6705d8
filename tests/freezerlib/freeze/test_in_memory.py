"""freeze/in_memory: a TF1 SavedModel loaded in a session, its variables made constants and its
tables (static ones too) filled from constants."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.core import errors
from freezerlib.formats import saved_model
from freezerlib.freeze import in_memory
import small_graphs

tf1 = tf.compat.v1


def _build():
  """y = table(words) * w, the table static (filled by the main op), w read in a cond."""
  words = tf1.placeholder(tf.string, [None], name='words')
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(['a', 'b']), tf.constant([1.0, 2.0])), -1.0, name='vocab')
  w = tf1.get_variable('w', initializer=tf.constant(3.0))
  found = table.lookup(words)
  y = tf1.cond(tf.reduce_sum(found) > 0, lambda: found * w, lambda: found - w)
  return {'words': words}, {'y': tf.identity(y, name='y')}


def test_variables_become_constants_and_tables_are_filled(tmp_path):
  path = small_graphs.save_tf1(tmp_path / 'm', _build, main_op=tf1.tables_initializer)
  signatures = saved_model.select_signatures(meta_graph_of(path), None, path)
  model, variables, contents = in_memory.freeze(path, signatures, ['serve'])
  assert variables == ['w']
  assert [(c.name, sorted(c.keys.tolist())) for c in contents] == [('vocab', [b'a', b'b'])]
  assert model.table_init_op == 'freezer/init_tables' and model.tags == ['serve']
  ops = {n.op for n in model.graph_def.node}
  assert 'VarHandleOp' not in ops and 'ReadVariableOp' not in ops
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(model.graph_def, name='')
    with tf1.Session(graph=graph) as session:
      session.run(model.table_init_op)
      sig = model.signatures['serving_default']
      got = session.run(sig.outputs['y'].name, {sig.inputs['words'].name: ['b', 'zz', 'a']})
  np.testing.assert_array_equal(got, [6.0, -3.0, 3.0])


def test_freeze_session_of_a_live_session():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    v = tf1.get_variable('v', initializer=tf.constant(2.0), use_resource=False)
    tf1.get_variable('unread', initializer=tf.constant(1.0))
    tf.identity(x * v, name='y')
    sigs = {'s': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}
    sigs['s'].outputs['y'].dtype = tf.float32.as_datatype_enum + 100
    with tf1.Session(graph=graph) as session:
      with pytest.raises(errors.UserError, match='cannot read the variables: .*uninitialized'):
        in_memory.freeze_session(session, graph.as_graph_def(), sigs, ['serve'])
      session.run(tf1.global_variables_initializer())
      model, variables, contents = in_memory.freeze_session(session, graph.as_graph_def(), sigs,
                                                            ['serve'])
  assert variables == ['v'] and contents == [] and model.table_init_op is None
  assert model.signatures['s'].outputs['y'].dtype == tf.float32.as_datatype_enum  # not a ref
  consts = {n.name: n for n in model.graph_def.node if n.op == 'Const'}
  assert tf.make_ndarray(consts['v'].attr['value'].tensor) == 2.0
  assert 'unread' not in {n.name for n in model.graph_def.node}


def test_a_model_that_does_not_load_is_one_error(tmp_path):
  path = small_graphs.linear_model(tmp_path / 'm')
  signatures = saved_model.select_signatures(meta_graph_of(path), None, path)
  shutil.rmtree(os.path.join(path, 'variables'))
  with pytest.raises(errors.UserError, match='cannot load SavedModel .*/m: '):
    in_memory.freeze(path, signatures, ['serve'])
