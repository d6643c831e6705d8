"""freeze/streaming: which models it takes, and the Consts it writes are the checkpoint's bytes."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.core import errors
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.freeze import streaming
from freezerlib.verify import loaders
import small_graphs

tf1 = tf.compat.v1
IDS = [0, 4, 5, 9, 3]


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  return small_graphs.stateful_model(tmp_path_factory.mktemp('streaming') / 'm')


def _plan(path, kept=()):
  meta_graph = meta_graph_of(path)
  return streaming.plan(meta_graph, saved_model.select_signatures(meta_graph, None, path), path,
                        kept)


def test_plan_of_plain_reads(model):
  the_plan = _plan(model)
  assert sorted(the_plan.variables) == ['b', 'emb/part_0', 'emb/part_1', 'emb/part_2', 'w']
  part = the_plan.variables['emb/part_1']
  assert (part.name, part.spec, part.dtype) == ('emb', '10 2 4,3:0,2', tf.float32)
  assert the_plan.variables['w'].spec == '' and the_plan.kept == []
  assert [(s.name, s.dtype) for s in the_plan.table_sources['table']] == [
      ('table-keys', tf.int64), ('table-values', tf.float32)]
  nodes = {n.name: n for n in the_plan.graph_def.node}
  assert {nodes[n].op for n in the_plan.variables} == {'Const'}
  assert 'unused' not in nodes and not any(n.device for n in nodes.values())
  # Readers of the variables are plain ops on the constants now.
  ops = {n.op for n in nodes.values()}
  assert 'GatherV2' in ops and not ops & {'ResourceGather', 'ReadVariableOp', 'VarHandleOp'}


def test_written_constants_hold_the_checkpoints_bytes(model, tmp_path):
  out = str(tmp_path / 'f.pb')
  the_plan = _plan(model)
  frozen, variables, contents, written = streaming.write(the_plan, ['serve'], out, chunk=7)
  data = open(out, 'rb').read()
  assert written == len(data)
  graph_def = frozen_graph.read_graph_def(out)
  # Each record's length was computed before its bytes were copied: they parse to the nodes.
  assert len(graph_def.node) == len(frozen.graph_def.node) + 1  # and the metadata node
  checkpoint = checkpoint_index.read_index(model + '/variables/variables')
  shard = open(checkpoint.data_files()[0], 'rb').read()
  consts = {n.name: n.attr['value'].tensor for n in graph_def.node if n.op == 'Const'}
  for key, entry in checkpoint.slices['emb']:
    (start, rows), _ = checkpoint_index.slice_key_extents(key, [10, 2])
    name = {0: 'emb/part_0', 4: 'emb/part_1', 7: 'emb/part_2'}[start]
    assert consts[name].tensor_content == shard[entry.offset:entry.offset + entry.size]
    assert [d.size for d in consts[name].tensor_shape.dim] == [rows, 2]
    assert consts[name].dtype == tf.float32.as_datatype_enum
  assert variables == ['b', 'emb/part_0', 'emb/part_1', 'emb/part_2', 'w']
  # The table's keys were streamed from the checkpoint too: counted, not held.
  assert [(c.name, c.num_keys) for c in contents] == [('table', 2)]
  assert sorted(tf.make_ndarray(consts['freezer/tables/table/keys']).tolist()) == [4, 5]
  assert frozen.table_init_op == 'freezer/init_tables' and frozen.saver_def is None
  assert 'value' not in {n.name: n for n in frozen.graph_def.node}['w'].attr  # structure only
  got = loaders.load_frozen_graph(out).run('serving_default', {'ids': np.array(IDS)})
  np.testing.assert_allclose(got['y'], small_graphs.stateful_expected(IDS))


def test_kept_variables_are_restored_from_beside_the_graph(model, tmp_path):
  out = str(tmp_path / 'f.pb')
  the_plan = _plan(model, kept={'w', 'table'})
  assert sorted(r.target for r in the_plan.kept) == ['table', 'w']
  assert 'w' not in the_plan.variables and 'table' not in the_plan.table_sources
  frozen, variables, contents, _ = streaming.write(the_plan, ['serve'], out)
  assert variables == ['b', 'emb/part_0', 'emb/part_1', 'emb/part_2'] and contents == []
  assert frozen.variables_prefix == 'f.pb.variables/variables'
  reader = tf.train.load_checkpoint(out + '.variables/variables')
  assert sorted(reader.get_variable_to_shape_map()) == ['table-keys', 'table-values', 'w']
  ops = {n.name: n.op for n in frozen_graph.read_graph_def(out).node}
  assert ops['w'] == 'VariableV2' and ops['table'] == 'MutableHashTableV2'
  got = loaders.load_frozen_graph(out).run('serving_default', {'ids': np.array(IDS)})
  np.testing.assert_allclose(got['y'], small_graphs.stateful_expected(IDS))


def test_a_string_variable_is_restored_whole(tmp_path):
  def build():
    names = tf1.get_variable('names', initializer=tf.constant(['a', 'bb', 'ccc']))
    i = tf1.placeholder(tf.int32, [None], name='i')
    return {'i': i}, {'name': tf.gather(names, i)}

  path = small_graphs.save_tf1(tmp_path / 'm', build)
  out = str(tmp_path / 'f.pb')
  streaming.write(_plan(path), ['serve'], out)
  got = loaders.load_frozen_graph(out).run('serving_default', {'i': np.array([2, 0])})
  assert got['name'].tolist() == [b'ccc', b'a']


def test_rewrite_of_every_plain_reader():
  graph_def = small_graphs.graph_def('''
      node { name: "v" op: "VarHandleOp" attr { key: "dtype" value { type: DT_FLOAT } }
             device: "/job:ps/task:0" }
      node { name: "i" op: "Placeholder" attr { key: "dtype" value { type: DT_INT64 } } }
      node { name: "read" op: "ReadVariableOp" input: "v" attr { key: "dtype" value {
             type: DT_FLOAT } } }
      node { name: "gather" op: "ResourceGather" input: "v" input: "i"
             attr { key: "dtype" value { type: DT_FLOAT } }
             attr { key: "Tindices" value { type: DT_INT64 } } }
      node { name: "shape" op: "VariableShape" input: "v" attr { key: "out_type" value {
             type: DT_INT64 } } }
      node { name: "ready" op: "VarIsInitializedOp" input: "v" }''')
  variables = {'v': streaming.Source('v', '', tf.float32)}
  rewritten = streaming._rewrite_readers(graph_def, variables)
  out = {n.name: n for n in rewritten.node}
  assert (out['v'].op, dict(out['v'].attr)['dtype'].type, out['v'].device) == (
      'Const', tf.float32.as_datatype_enum, '')
  assert out['read'].op == 'Identity' and out['read'].attr['T'].type == tf.float32.as_datatype_enum
  assert out['gather'].op == 'GatherV2' and list(out['gather'].input) == ['v', 'i', 'gather/axis']
  assert tf.make_ndarray(out['gather/axis'].attr['value'].tensor) == 0
  assert (out['shape'].op, out['shape'].attr['out_type'].type) == (
      'Shape', tf.int64.as_datatype_enum)
  assert out['ready'].op == 'Const' and not out['ready'].input
  assert tf.make_ndarray(out['ready'].attr['value'].tensor)


def _reason(monkeypatch, path, kept=()):
  reasons = []
  monkeypatch.setattr(streaming.logging, 'info', lambda fmt, *a: reasons.append(fmt % a))
  assert _plan(path, kept) is None
  return reasons[-1]


def test_models_it_does_not_take_and_why(tmp_path, monkeypatch):
  def static_table():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant([1], tf.int64), tf.constant([2.0])), 0.0)
    w = tf1.get_variable('w', initializer=tf.constant(3.0))
    return {'ids': ids}, {'y': table.lookup(ids) * w}

  def control_flow():
    x = tf1.placeholder(tf.float32, [None], name='x')
    w = tf1.get_variable('w', initializer=tf.constant(3.0), use_resource=True)
    return {'x': x}, {'y': tf1.cond(tf.reduce_sum(x) > 0, lambda: x * w, lambda: x - w)}

  no_variables = small_graphs.save_tf1(tmp_path / 'none', lambda: (
      lambda x: ({'x': x}, {'y': x + 1.0}))(tf1.placeholder(tf.float32, name='x')))
  assert 'no saver or no variables/' in _reason(monkeypatch, no_variables)
  path = small_graphs.save_tf1(tmp_path / 'static', static_table, main_op=tf1.tables_initializer)
  assert 'static tables are filled by an init op' in _reason(monkeypatch, path)
  path = small_graphs.save_tf1(tmp_path / 'cond', control_flow)
  assert 'cond reads w through If (control flow' in _reason(monkeypatch, path)
  path = small_graphs.save_tf1(tmp_path / 'partial', small_graphs.linear(),
                               saver=lambda: tf1.train.Saver(var_list=[tf1.global_variables()[0]]))
  assert 'b is not restored by the saver' in _reason(monkeypatch, path)
  # Only this freezer keeps variables: with --keep_as_variables the reason is an error.
  with pytest.raises(errors.UserError, match=r'--keep_as_variables needs the streaming freezer, '
                                             r'which cannot freeze this model \(static tables'):
    _plan(str(tmp_path / 'static'), kept={'w'})
  assert _plan(str(tmp_path / 'cond'), kept={'w'}).kept[0].target == 'w'  # kept: read anyhow


def test_a_checkpoint_that_does_not_match_is_refused(tmp_path):
  path = small_graphs.linear_model(tmp_path / 'm')
  other = small_graphs.save_tf1(tmp_path / 'other', lambda: (
      {'x': tf1.placeholder(tf.float32, name='x')},
      {'y': tf.cast(tf1.get_variable('w', initializer=tf.constant(2, tf.int64)), tf.float32) +
            tf1.get_variable('b', initializer=tf.constant(0.0))}))
  shutil.rmtree(os.path.join(path, 'variables'))
  shutil.copytree(os.path.join(other, 'variables'), os.path.join(path, 'variables'))
  with pytest.raises(errors.UserError, match=r'checkpoint .*variables does not match .*/m: w is '
                                             r'int64 in the checkpoint, float32 in'):
    _plan(path)
