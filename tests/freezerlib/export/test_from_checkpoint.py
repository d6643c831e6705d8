"""export/from_checkpoint: a TF1 structure and a training checkpoint become a serving
SavedModel holding only the tensors it restores.

(The demo model, a cluster's sharded checkpoint, the C API: tests/test_optimize_from_ckpt.py.)
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.core import errors
from freezerlib.export import from_checkpoint
from freezerlib.formats import saved_model
from freezerlib.verify import loaders
import small_graphs

tf1 = tf.compat.v1
IDS = [0, 4, 5, 9]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """small_graphs.stateful_model as the structure, and a checkpoint of it trained on: b = 4 and
  table {4: 400}. Returns (structure, checkpoint prefix, expected answers for IDS)."""
  root = tmp_path_factory.mktemp('from_checkpoint')
  structure = small_graphs.stateful_model(root / 'structure')
  with tf1.Session(graph=tf.Graph()) as session:
    meta_graph = tf1.saved_model.loader.load(session, ['serve'], structure)
    with session.graph.as_default():
      b = [v for v in tf1.global_variables() if v.op.name == 'b'][0]
      table = session.graph.get_operation_by_name('table').outputs[0]
      session.run([b.assign(4.0), tf.raw_ops.LookupTableInsertV2(
          table_handle=table, keys=tf.constant([4], tf.int64), values=tf.constant([400.0]))])
      os.makedirs(root / 'ckpt')
      prefix = tf1.train.Saver(saver_def=meta_graph.saver_def).save(
          session, str(root / 'ckpt' / 'model.ckpt'))
  expected = [3.0 * i + 0.5 * 4.0 + {4: 400.0, 5: 50.0}.get(i, -1.0) for i in IDS]
  return structure, prefix, expected


def test_export_answers_with_the_checkpoints_values(trained, tmp_path):
  structure, prefix, expected = trained
  out = str(tmp_path / 'out')
  report = from_checkpoint.saved_model_from_checkpoint(prefix, out, saved_model_dir=structure)
  assert report.path == out
  assert (report.tensors_exported, report.tensors_in_checkpoint) == (5, 6)  # not `unused`
  assert report.bytes_in_checkpoint - report.bytes_exported == 500 * 4
  reader = tf.train.load_checkpoint(out + '/variables/variables')
  assert sorted(reader.get_variable_to_shape_map()) == ['b', 'emb', 'table-keys',
                                                        'table-values', 'w']
  saved = loaders.load_saved_model(out)
  got = saved.run('serving_default', {'ids': np.array(IDS)})
  np.testing.assert_allclose(got['y'], expected)
  assert 'unused' not in {n.name for n in saved.graph_def.node}


def test_noprune_links_every_file_and_meta_graph_file_works(trained, tmp_path):
  structure, prefix, expected = trained
  report = from_checkpoint.saved_model_from_checkpoint(
      os.path.dirname(prefix), str(tmp_path / 'all'), saved_model_dir=structure,
      prune_tensors=False)
  assert report.tensors_exported == report.tensors_in_checkpoint == 6
  meta = tmp_path / 'structure.meta'
  meta.write_bytes(meta_graph_of(structure).SerializeToString())
  from_checkpoint.saved_model_from_checkpoint(prefix, str(tmp_path / 'meta'),
                                              meta_graph_path=str(meta))
  for out in ('all', 'meta'):
    got = loaders.load_saved_model(str(tmp_path / out)).run('serving_default',
                                                            {'ids': np.array(IDS)})
    np.testing.assert_allclose(got['y'], expected)


@pytest.mark.parametrize('content,message', [
    (None, r'meta graph .*s\.meta does not exist'),
    (b'\xff\xff', r's\.meta is not a MetaGraphDef \(truncated or corrupt'),
    (b'', r's\.meta is not a MetaGraphDef: it holds no graph')])
def test_load_structure_from_a_meta_graph_file(tmp_path, content, message):
  if content is not None:
    (tmp_path / 's.meta').write_bytes(content)
  with pytest.raises(errors.UserError, match=message):
    from_checkpoint.structure_from_meta_graph(str(tmp_path / 's.meta'))


def test_serving_graph_restores_what_it_keeps_and_inits_static_tables(tmp_path):
  def build():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    static = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant([1], tf.int64), tf.constant([2.0])), 0.0, name='static')
    w = tf1.get_variable('w', initializer=tf.constant(3.0))
    tf1.get_variable('slot', initializer=tf.constant(1.0))
    return {'ids': ids}, {'y': static.lookup(ids) * w}

  path = small_graphs.save_tf1(tmp_path / 'm', build, main_op=tf1.tables_initializer)
  meta_graph = meta_graph_of(path)
  sigs = saved_model.select_signatures(meta_graph, None, path)
  serving = from_checkpoint.serving_graph(meta_graph.graph_def, sigs, meta_graph.saver_def, path)
  assert [r.target for r in serving.restores] == ['w']
  assert serving.main_op == 'freezer/init_tables'
  nodes = {n.name: n for n in serving.graph_def.node}
  assert 'slot' not in nodes and nodes[serving.main_op].op == 'NoOp'
  assert [i.lstrip('^') for i in nodes[serving.main_op].input] == [
      'key_value_init/LookupTableImportV2']
  assert serving.saver_def.restore_op_name in nodes


def test_state_the_saver_does_not_restore_is_refused(tmp_path):
  def build():
    x = tf1.placeholder(tf.float32, [None], name='x')
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0, name='t')
    w = tf1.get_variable('w', initializer=tf.constant(3.0))
    return {'x': x}, {'y': x * w + table.lookup(tf.constant([1], tf.int64))}

  only_table = small_graphs.save_tf1(
      tmp_path / 'a', build, saver=lambda: tf1.train.Saver(
          var_list=[v for v in tf1.global_variables() if v.name != 'w:0'] +
          tf1.get_collection(tf1.GraphKeys.SAVEABLE_OBJECTS)))
  with pytest.raises(errors.UserError, match='the saver does not restore w, which the signatures '
                                             'need'):
    from_checkpoint.saved_model_from_checkpoint(only_table + '/variables/variables',
                                                str(tmp_path / 'out'), saved_model_dir=only_table)
  only_w = small_graphs.save_tf1(tmp_path / 'b', build, saver=lambda: tf1.train.Saver(
      var_list=tf1.global_variables()))
  with pytest.raises(errors.UserError, match='the saver does not restore table t, which the '
                                             r'signatures read \(it would serve empty\)'):
    from_checkpoint.saved_model_from_checkpoint(only_w + '/variables/variables',
                                                str(tmp_path / 'out'), saved_model_dir=only_w)
  assert sorted(os.listdir(tmp_path)) == ['a', 'b']


def test_a_checkpoint_that_does_not_match_lists_every_tensor(trained, tmp_path):
  structure, _, _ = trained
  other = small_graphs.save_tf1(tmp_path / 'other', lambda: (
      {'x': tf1.placeholder(tf.float32, name='x')},
      {'y': tf1.get_variable('w', initializer=tf.constant([1.0, 2.0]))}))
  with pytest.raises(errors.UserError) as caught:
    from_checkpoint.saved_model_from_checkpoint(other + '/variables/variables',
                                                str(tmp_path / 'out'), saved_model_dir=structure)
  assert str(caught.value).startswith('checkpoint %s/variables/variables does not match %s: ' % (
      other, structure))
  for problem in ('b missing', 'emb missing', 'table-keys missing',
                  'w has shape [2] in the checkpoint, [1000] in'):
    assert problem in str(caught.value)
  with pytest.raises(errors.UserError, match='--checkpoint_object applies to TF2 structures'):
    from_checkpoint.saved_model_from_checkpoint(other, str(tmp_path / 'out'),
                                                saved_model_dir=structure, checkpoint_object='m')
  assert sorted(os.listdir(tmp_path)) == ['other']
