"""freezer.py --keep_as_variables: big variables and tables stay state, restored from a
checkpoint beside the frozen graph, through optimize_from_pb.py to a serving SavedModel."""

import io
import os
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error
from conftest import meta_graph_of
from conftest import run_script
from conftest import run_tf2_signatures
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.export import from_frozen
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.freeze import streaming
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders

# On the tiny model: item_embedding's partitions store 320 bytes each, hidden_0/kernel 352,
# the tables category_stats 324 and user_stats 1440 (keys + values); the rest is smaller.
BY_SIZE = '0.3KiB'  # 307 bytes
KEPT_BY_SIZE = {'item_embedding/part_0', 'item_embedding/part_1', 'item_embedding/part_2',
                'hidden_0/kernel', 'category_stats', 'user_stats'}


def _frozen(path):
  return frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(path), path)


def _restored(frozen):
  """Variables and tables the frozen graph's saver restores."""
  nodes = {n.name: n for n in frozen.graph_def.node}
  restore = nodes[graphs.node_name(frozen.saver_def.restore_op_name)]
  return {nodes[i.lstrip('^')].input[0] for i in restore.input}


def _check(reference, new, examples=120, outputs=4):
  out = io.StringIO()
  passed, results = compare.check(reference, new, num_examples=examples,
                                                batch_sizes=(), out=out)
  assert passed and len(results) == outputs, out.getvalue()
  return results


@pytest.fixture(scope='module')
def reference(tiny_model):
  return loaders.load_saved_model(tiny_model['saved_model'])


@pytest.fixture(scope='module')
def by_size(tiny_model, tmp_path_factory):
  """Frozen with --keep_as_variables=0.3KiB, then re-dumped: {'frozen', 'serving'}."""
  root = tmp_path_factory.mktemp('keep_by_size')
  frozen, serving = str(root / 'frozen.pb'), str(root / 'serving')
  freeze.graph_from_saved_model(tiny_model['saved_model'], frozen, keep_as_variables=BY_SIZE)
  from_frozen.saved_model_from_frozen_graph(frozen, output_saved_model_dir=serving)
  return {'frozen': frozen, 'serving': serving, 'root': str(root)}


def test_keep_by_size_keeps_exactly_the_big_tensors(tiny_model, by_size):
  frozen = _frozen(by_size['frozen'])
  nodes = {n.name: n for n in frozen.graph_def.node}
  assert _restored(frozen) == KEPT_BY_SIZE
  assert {n.name for n in frozen.graph_def.node if n.op == 'VarHandleOp'} == \
      KEPT_BY_SIZE - {'category_stats', 'user_stats'}
  assert not any(n.device for n in frozen.graph_def.node)
  # What is not kept is a constant; every table is kept, so nothing is filled from constants.
  assert nodes['hidden_0/bias'].op == 'Const' and nodes['logit/kernel'].op == 'Const'
  assert frozen.table_init_op is None
  assert not [n for n in nodes if n.startswith('freezer/tables/')]
  assert frozen.variables_prefix == 'frozen.pb.variables/variables'
  # The checkpoint beside the graph holds exactly the kept tensors, bytes as trained.
  prefix = by_size['frozen'] + '.variables/variables'
  assert sorted(os.listdir(by_size['frozen'] + '.variables')) == [
      'variables.data-00000-of-00002', 'variables.data-00001-of-00002', 'variables.index']
  beside = tf.train.load_checkpoint(prefix)
  names = set(beside.get_variable_to_shape_map())
  assert names == {'item_embedding', 'hidden_0/kernel', 'category_stats-keys',
                   'category_stats-values', 'user_stats-keys', 'user_stats-values'}
  training = tf.train.load_checkpoint(tiny_model['saved_model'] + '/variables/variables')
  for name in names:
    np.testing.assert_array_equal(beside.get_tensor(name), training.get_tensor(name))
  assert checkpoint_index.slices_of(checkpoint_index.read_index(prefix), 'item_embedding') == \
      checkpoint_index.slices_of(checkpoint_index.read_index(tiny_model['checkpoint']),
                                 'item_embedding')
  assert frozen.variables_digest == frozen_graph.index_digest(prefix)


def test_frozen_graph_with_kept_variables_answers_as_the_training_model(reference, by_size):
  _check(reference, loaders.load_frozen_graph(by_size['frozen']))


def test_redumped_saved_model_restores_the_beside_checkpoint(reference, by_size):
  serving = by_size['serving']
  meta_graph = meta_graph_of(serving)
  ops = {n.op for n in meta_graph.graph_def.node}
  assert {'VarHandleOp', 'RestoreV2', 'LookupTableImportV2', 'SaveV2'} <= ops
  assert not ops & {'IteratorGetNext', 'ResourceApplyAdam'}
  assert meta_graph.saver_def.restore_op_name in {n.name for n in meta_graph.graph_def.node}
  # The embedding was not folded into a constant by Grappler.
  assert not [n for n in meta_graph.graph_def.node if n.op == 'Const' and
              [d.size for d in n.attr['value'].tensor.tensor_shape.dim] == [20, 4]]
  # variables/ is the beside checkpoint, hard-linked.
  for name in os.listdir(by_size['frozen'] + '.variables'):
    assert os.stat(os.path.join(serving, 'variables', name)).st_ino == os.stat(
        os.path.join(by_size['frozen'] + '.variables', name)).st_ino
  results = _check(reference, loaders.load_saved_model(serving))
  assert max(r.max_abs for r in results) <= 1e-6


def test_redumped_saved_model_serves_through_c_api_and_tf2(reference, by_size, capi):
  import capi_runner
  maker = inputs.InputMaker(reference, seed=4)
  feeds = {k: maker.make(k, 80) for k in reference.signatures}
  got_capi = capi_runner.run_signatures(capi, by_size['serving'], feeds)
  got_tf2 = run_tf2_signatures(by_size['serving'], feeds)
  for key, feed in feeds.items():
    expected = reference.run(key, feed)
    for name, value in expected.items():
      np.testing.assert_allclose(got_capi[key][name], value, atol=1e-6, rtol=0, err_msg=name)
      np.testing.assert_allclose(got_tf2[key][name], value, atol=1e-6, rtol=0, err_msg=name)
  stats = got_capi['embeddings']['user_stats']
  assert 10 < np.count_nonzero(stats[:, 0]) < 70  # trained and unseen ids: the table restored


def test_keep_by_name_from_the_command_line_and_moved_together(tiny_model, reference, tmp_path):
  frozen = tmp_path / 'a' / 'frozen.pb'
  proc = run_script('freezer.py', '--saved_model_dir=' + tiny_model['saved_model'],
                    '--output_graph=%s' % frozen, '--keep_as_variables=item_embedding,user_stats')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'kept 4 variables and tables' in proc.stderr
  # Moved together, graph and checkpoint still find each other.
  shutil.move(str(tmp_path / 'a'), str(tmp_path / 'b'))
  moved = str(tmp_path / 'b' / 'frozen.pb')
  model = _frozen(moved)
  assert _restored(model) == {
      'item_embedding/part_0', 'item_embedding/part_1', 'item_embedding/part_2',
      'user_stats'}
  # category_stats is frozen: filled from constants by the init op, after the restore.
  nodes = {n.name for n in model.graph_def.node}
  assert 'freezer/tables/category_stats/keys' in nodes
  assert 'freezer/tables/user_stats/keys' not in nodes
  assert model.table_init_op == 'freezer/init_tables'
  _check(reference, loaders.load_frozen_graph(moved))
  serving = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(moved, output_saved_model_dir=serving,
                            output_graph=str(tmp_path / 'optimized.pb'))
  _check(reference, loaders.load_saved_model(serving))
  # --output_graph gets its own beside checkpoint.
  _check(reference, loaders.load_frozen_graph(str(tmp_path / 'optimized.pb')))
  assert os.path.isfile(tmp_path / 'optimized.pb.variables' / 'variables.index')


def test_keeping_one_partition_copies_only_its_slice(tiny_model, reference, tmp_path):
  """The other partitions are constants in the graph: the beside checkpoint holds the kept
  one's slice only, its entry listing that slice, and the model answers the same."""
  frozen = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(tiny_model['saved_model'], frozen,
                                keep_as_variables='item_embedding/part_1')
  assert _restored(_frozen(frozen)) == {'item_embedding/part_1'}
  beside = checkpoint_index.read_index(frozen + '.variables/variables')
  training = checkpoint_index.read_index(tiny_model['checkpoint'])
  assert list(beside.entries) == ['item_embedding']
  assert checkpoint_index.slices_of(beside, 'item_embedding') == [
      checkpoint_index.slices_of(training, 'item_embedding')[1]]
  assert [len(beside.slices['item_embedding']), beside.nbytes('item_embedding')] == [
      1, training.slices['item_embedding'][1][1].size]
  _check(reference, loaders.load_frozen_graph(frozen))
  serving = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, output_saved_model_dir=serving)
  _check(reference, loaders.load_saved_model(serving))


def test_overwrite_replaces_graph_and_checkpoint_together(tiny_model, tmp_path):
  out = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(tiny_model['saved_model'], out, keep_as_variables='user_stats')
  with pytest.raises(errors.UserError, match='already exists; pass --overwrite'):
    freeze.graph_from_saved_model(tiny_model['saved_model'], out, keep_as_variables='user_stats')
  freeze.graph_from_saved_model(tiny_model['saved_model'], out, keep_as_variables='item_embedding',
                 overwrite=True)
  names = set(tf.train.load_checkpoint(out + '.variables/variables').get_variable_to_shape_map())
  assert names == {'item_embedding'}
  # Without kept variables the old checkpoint goes with the old graph.
  freeze.graph_from_saved_model(tiny_model['saved_model'], out, overwrite=True)
  assert _frozen(out).saver_def is None
  assert sorted(os.listdir(tmp_path)) == ['frozen.pb']


def test_a_failure_while_writing_leaves_nothing_and_the_old_output_intact(
    tiny_model, tmp_path, monkeypatch):
  out = str(tmp_path / 'frozen.pb')

  def broken(*args, **kwargs):
    raise errors.UserError('disk broke')

  monkeypatch.setattr(streaming, '_write_streamed_const', broken)
  with pytest.raises(errors.UserError, match='disk broke'):
    freeze.graph_from_saved_model(tiny_model['saved_model'], out, keep_as_variables=BY_SIZE)
  assert os.listdir(tmp_path) == []  # neither graph nor checkpoint nor temporaries
  monkeypatch.undo()
  freeze.graph_from_saved_model(tiny_model['saved_model'], out, keep_as_variables=BY_SIZE)
  before = tree_digest(tmp_path)
  monkeypatch.setattr(streaming, '_write_streamed_const', broken)
  with pytest.raises(errors.UserError, match='disk broke'):
    freeze.graph_from_saved_model(tiny_model['saved_model'], out, keep_as_variables='user_stats',
                   overwrite=True)
  assert tree_digest(tmp_path) == before


@pytest.mark.parametrize('spec,fragment', [
    ('12XB', 'not a size'), ('-5MB', 'not a size'), ('1.5.2GB', 'not a size'),
    ('item_embedding,,user_stats', 'empty name'),
    ('item_embedding,nope', 'names nope, which is no variable or table'),
    ('item_embedding/part_9', 'names item_embedding/part_9'),
])
def test_bad_spec_is_refused_before_anything_is_written(spec, fragment, tiny_model, tmp_path):
  with pytest.raises(errors.UserError, match=fragment):
    freeze.graph_from_saved_model(tiny_model['saved_model'], str(tmp_path / 'out.pb'),
                                  keep_as_variables=spec)
  assert os.listdir(tmp_path) == []


def test_bad_spec_is_one_line_from_the_command_line(tiny_model, tmp_path):
  proc = run_script('freezer.py', '--saved_model_dir=' + tiny_model['saved_model'],
                    '--output_graph=%s/out.pb' % tmp_path, '--keep_as_variables=item_embedding,x9')
  assert_one_line_error(proc, 'freezer.py', 'x9', 'choose from', 'user_stats')
  assert os.listdir(tmp_path) == []


def test_control_flow_over_a_kept_variable_is_fine_static_tables_are_refused(tmp_path):
  """The streaming freezer turns plain reads into reads of constants; a kept variable is read
  by whatever reads it, control flow included. Static tables need the in-memory freezer,
  which keeps nothing: refused with the reason."""
  tf1 = tf.compat.v1
  from conftest import save_predict_model
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    v = tf1.get_variable('v', [3], initializer=tf1.random_normal_initializer(seed=1))
    y = tf.cond(tf.reduce_sum(x) > 0, lambda: v.read_value() * 2.0, lambda: v.read_value())
    y = tf.identity(y * tf.reduce_sum(x), name='y')
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      save_predict_model(session, tmp_path / 'cond', {'x': x}, {'y': y})
  out = str(tmp_path / 'cond.pb')
  freeze.graph_from_saved_model(str(tmp_path / 'cond'), out, keep_as_variables='v')
  assert _restored(_frozen(out)) == {'v'}
  reference = loaders.load_saved_model(str(tmp_path / 'cond'))
  new = loaders.load_frozen_graph(out)
  for feed in ([1.0, 2.0], [-1.0, -2.0]):
    np.testing.assert_array_equal(new.run('serving_default', {'x': np.float32(feed)})['y'],
                                  reference.run('serving_default', {'x': np.float32(feed)})['y'])

  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.string, [None], name='ids')
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['a', 'b']), tf.constant([1.0, 2.0])), default_value=0.0)
    w = tf1.get_variable('w', [], initializer=tf1.ones_initializer())
    z = tf.identity(table.lookup(ids) * w, name='z')
    with tf1.Session(graph=graph) as session:
      session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      builder = tf1.saved_model.Builder(str(tmp_path / 'static'))
      builder.add_meta_graph_and_variables(session, ['serve'], signature_def_map={
          'serving_default': tf1.saved_model.predict_signature_def({'ids': ids}, {'z': z})},
          main_op=tf1.tables_initializer())
      builder.save()
  with pytest.raises(errors.UserError, match=r'--keep_as_variables needs the streaming freezer, '
                     r'which cannot freeze this model \(static tables'):
    freeze.graph_from_saved_model(str(tmp_path / 'static'), str(tmp_path / 'static.pb'),
                                  keep_as_variables='w')
  assert not os.path.exists(tmp_path / 'static.pb')
  # With no variable reaching the size, nothing needs keeping and the in-memory path runs.
  freeze.graph_from_saved_model(str(tmp_path / 'static'), str(tmp_path / 'static.pb'),
                                keep_as_variables='1GiB')
  assert _frozen(str(tmp_path / 'static.pb')).saver_def is None


def _benchmark_module():
  import importlib.util

  from conftest import REPO
  spec = importlib.util.spec_from_file_location('benchmark', REPO / 'benchmarks' / 'benchmark.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_model_past_2gb_freezes_with_kept_variables_and_serves_the_same(tmp_path):
  """2080 MiB of embedding (4 partitions of 520 MiB) and a 1000-key table, built by the
  benchmark's code without optimizer or checkpoint path (17-19 s on 2 cores, 4 GiB of disk
  and 5 GiB of memory at the peak; removed afterwards)."""
  try:
    _benchmark_module().build(str(tmp_path), embedding_mb=2080, dim=64, partitions=4, shards=1,
                              table_keys=1000, train_step=False, checkpoint_path=False)
    saved_model = str(tmp_path / 'saved_model')
    index = checkpoint_index.read_index(saved_model + '/variables/variables')
    assert sum(index.nbytes(n) for n in index.entries) > frozen_graph.PROTOBUF_LIMIT
    frozen = str(tmp_path / 'frozen.pb')
    start = time.perf_counter()
    with pytest.raises(errors.UserError, match=r'past protobuf\'s 2 GB limit; keep the largest '
                       r'variables and tables .*--keep_as_variables=520MiB; or .*'
                       r'optimize_from_ckpt.py') as refusal:
      freeze.graph_from_saved_model(saved_model, frozen)
    assert time.perf_counter() - start < 5, 'the refusal comes before anything is loaded'
    assert '2.0 GiB of variables' in str(refusal.value) and not os.path.exists(frozen)
    freeze.graph_from_saved_model(saved_model, frozen, keep_as_variables='256MiB')
    assert os.path.getsize(frozen) < 1 << 20  # only the small variables became constants
    assert _restored(_frozen(frozen)) == {'item_embedding/part_%d' % k for k in range(4)}
    serving = str(tmp_path / 'serving')
    from_frozen.saved_model_from_frozen_graph(frozen, output_saved_model_dir=serving)
    for name in os.listdir(frozen + '.variables'):  # hard-linked
      assert os.stat(serving + '/variables/' + name).st_ino == os.stat(
          frozen + '.variables/' + name).st_ino
    reference = loaders.load_saved_model(saved_model)
    new = loaders.load_saved_model(serving)
    try:
      results = _check(reference, new, examples=64, outputs=1)
      assert [r.output for r in results] == ['probability']
      assert max(r.max_abs for r in results) <= 1e-6
      # The ids compared are half trained table keys, half unseen ones.
      feeds = inputs.InputMaker(reference, seed=0).make('serving_default', 64)
      keys = tf.train.load_checkpoint(saved_model + '/variables/variables').get_tensor(
          'user_stats-keys')
      assert 10 < np.isin(feeds['user_id'], keys).sum() < 54
    finally:
      reference.close()
      new.close()
  finally:
    shutil.rmtree(tmp_path, ignore_errors=True)
