"""freeze/tf2: a tf.saved_model.save model frozen with the values tf.saved_model.load restores.

(Keras models, every signature of half_plus_two in TF2, tables through the C API:
tests/test_tf2.py.)
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.core import errors
from freezerlib.formats import saved_model
from freezerlib.freeze import tf2
import small_graphs

tf1 = tf.compat.v1
FEEDS = {'x': np.array([1.0, -1.0], np.float32), 'ids': np.array([4, 0]),
         'words': np.array([b'b', b'zz'], dtype=object)}


class _Model(tf.Module):
  """y = x * v[0] + emb[ids, 1] + table(words) + rows of emb, read four ways in a function."""

  def __init__(self):
    super().__init__()
    self.v = tf.Variable([2.0, 3.0])
    self.emb = tf.Variable(np.arange(10, dtype=np.float32).reshape(5, 2))
    self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['a', 'b']), tf.constant([1, 2], tf.int64)), -1)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='x'),
                                tf.TensorSpec([None], tf.int64, name='ids'),
                                tf.TensorSpec([None], tf.string, name='words')])
  def serve(self, x, ids, words):
    rows = tf.raw_ops.ResourceGather(resource=self.emb.handle, indices=ids, dtype=tf.float32)
    count = tf.cast(tf.raw_ops.VariableShape(input=self.emb.handle)[0], tf.float32)
    y = x * self.v[0] + rows[:, 1] + tf.cast(self.table.lookup(words), tf.float32) + count
    return {'y': y}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  module = _Model()
  path = str(tmp_path_factory.mktemp('tf2') / 'm')
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  expected = module.serve(**{k: tf.constant(v) for k, v in FEEDS.items()})['y'].numpy()
  return path, expected


def test_frozen_graph_answers_as_the_module(saved):
  path, expected = saved
  np.testing.assert_array_equal(expected, [2.0 + 9.0 + 2.0 + 5.0, -2.0 + 1.0 - 1.0 + 5.0])
  meta_graph = meta_graph_of(path)
  signatures = saved_model.select_signatures(meta_graph, None, path)
  model, variables, contents = tf2.freeze(path, meta_graph, signatures, ['serve'])
  handles = sorted(n.name for n in meta_graph.graph_def.node if n.op == 'VarHandleOp')
  assert variables == handles and len(handles) == 2
  assert [(sorted(c.keys.tolist()), c.op) for c in contents] == [([b'a', b'b'], 'HashTableV2')]
  ops = {n.op for n in model.graph_def.node} | {
      n.op for f in model.graph_def.library.function for n in f.node_def}
  assert not ops & {'VarHandleOp', 'ReadVariableOp', 'ResourceGather', 'VariableShape'}
  sig = model.signatures['serving_default']
  assert {k: i.name for k, i in sig.inputs.items()} == {'x': 'x:0', 'ids': 'ids:0',
                                                        'words': 'words:0'}
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(model.graph_def, name='')
    with tf1.Session(graph=graph) as session:
      session.run(model.table_init_op)
      got = session.run(sig.outputs['y'].name,
                        {sig.inputs[k].name: v for k, v in FEEDS.items()})
  np.testing.assert_array_equal(got, expected)


def test_inputs_named_by_key():
  graph_def = small_graphs.graph_def('''
      node { name: "default" op: "Const" }
      node { name: "serving_default_x" op: "PlaceholderWithDefault" input: "default" }
      node { name: "serving_default_y" op: "Placeholder" }
      node { name: "y" op: "Placeholder" }
      node { name: "call" op: "StatefulPartitionedCall" input: "serving_default_x:0"
             input: "serving_default_y" input: "^serving_default_x" }''')
  sigs = {'serving_default': small_graphs.signature(
      {'x': 'serving_default_x:0', 'y': 'serving_default_y:0'}, {'o': 'call:0'})}
  tf2._inputs_named_by_key(graph_def, sigs)
  nodes = {n.name: n for n in graph_def.node}
  assert nodes['x'].op == 'Placeholder' and not nodes['x'].input  # the default goes
  assert 'y_1' in nodes and nodes['y_1'].op == 'Placeholder'  # `y` was taken
  assert list(nodes['call'].input) == ['x:0', 'y_1', '^x']
  assert {k: i.name for k, i in sigs['serving_default'].inputs.items()} == {
      'x': 'x:0', 'y': 'y_1:0'}


def test_reads_the_converter_leaves_inside_functions():
  graph_def = small_graphs.graph_def('''
      library { function {
        signature { name: "f" input_arg { name: "emb" type: DT_FLOAT }
                    input_arg { name: "ids" type: DT_INT64 } }
        node_def { name: "same" op: "Identity" input: "emb"
                   attr { key: "T" value { type: DT_FLOAT } } }
        node_def { name: "g" op: "ResourceGather" input: "same:output:0" input: "ids"
                   attr { key: "dtype" value { type: DT_FLOAT } }
                   attr { key: "Tindices" value { type: DT_INT64 } }
                   attr { key: "_keep" value { s: "x" } } }
        node_def { name: "s" op: "VariableShape" input: "emb"
                   attr { key: "out_type" value { type: DT_INT32 } } } } }''')
  tf2._finish_function_conversion(graph_def)
  nodes = {n.name: n for n in graph_def.library.function[0].node_def}
  gather = nodes['g']
  assert gather.op == 'GatherV2'
  assert list(gather.input) == ['same:output:0', 'ids', 'g/freezer_axis:output:0']
  assert sorted(gather.attr) == ['Taxis', 'Tindices', 'Tparams', '_keep', 'batch_dims']
  assert gather.attr['Tparams'].type == tf.float32.as_datatype_enum
  assert nodes['g/freezer_axis'].op == 'Const'
  assert (nodes['s'].op, nodes['s'].attr['T'].type) == ('Shape', tf.float32.as_datatype_enum)
  graph_def.library.function[0].node_def.add(name='w', op='AssignVariableOp', input=['emb', 'x'])
  with pytest.raises(errors.UserError, match=r"op w \(AssignVariableOp\) in function f reads a "
                                             "variable in a way TensorFlow's converter cannot"):
    tf2._finish_function_conversion(graph_def)
