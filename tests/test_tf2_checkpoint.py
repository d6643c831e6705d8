"""optimize_from_ckpt.py with a TF2 structure SavedModel and a tf.train.Checkpoint.

Each model saves its structure first, trains more, and is checkpointed with its optimizer; the
export must answer like the trained model in memory through tf.saved_model.load, the TF1
loader and the C API.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
import conftest
from conftest import REPO
from conftest import assert_one_line_error
from conftest import run_script
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.export import from_tf2_checkpoint
from freezerlib.formats import checkpoint_index
from freezerlib.verify import loaders

ATOL = 1e-6
ROWS = 50  # embedding rows; ids beyond them, and ids training never saw, are fed too


def _serve(export_dir, feeds):
  """{output: array} of serving_default through tf.saved_model.load and the TF1 loader."""
  loaded = tf.saved_model.load(export_dir)
  tf2 = loaded.signatures['serving_default'](**{k: tf.constant(v) for k, v in feeds.items()})
  with tf.compat.v1.Session(graph=tf.Graph()) as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ['serve'], export_dir)
    sig = meta_graph.signature_def['serving_default']
    tf1 = session.run({k: v.name for k, v in sig.outputs.items()},
                      {sig.inputs[k].name: v for k, v in feeds.items()})
  return {k: v.numpy() for k, v in tf2.items()}, tf1


def _assert_answers(export_dir, feeds, expected, capi=None):
  """The export answers `expected` through both Python loaders (and the C API if given)."""
  tf2, tf1 = _serve(export_dir, feeds)
  got = {'tf.saved_model.load': tf2, 'TF1 loader': tf1}
  if capi:
    import capi_runner
    got['C API'] = capi_runner.run_signatures(capi, export_dir, {'serving_default': feeds})[
        'serving_default']
  for loader, outputs in got.items():
    assert sorted(outputs) == sorted(expected), loader
    for name, value in expected.items():
      if np.asarray(value).dtype.kind in 'OSU':  # strings: equal
        np.testing.assert_array_equal(outputs[name], value, err_msg='%s %s' % (loader, name))
      else:
        np.testing.assert_allclose(outputs[name], value, atol=ATOL, rtol=0,
                                   err_msg='%s %s' % (loader, name))


def _keys(prefix):
  return set(checkpoint_index.read_index(prefix).entries)


# Ops of training, none of which serving runs: table writes, variable updates other than the
# restore's AssignVariableOp, gradients, dataset reads.
def _training_op(op):
  return (op in ('LookupTableInsertV2', 'LookupTableRemoveV2', 'AssignAddVariableOp',
                 'AssignSubVariableOp', 'StopGradient', 'BroadcastGradientArgs')
          or op.startswith(('ResourceApply', 'Iterator')) or op.endswith('Grad')
          or 'Dataset' in op)


def _training_ops(export_dir):
  """{function name: sorted training op types} of the SavedModel's library."""
  library = conftest.meta_graph_of(export_dir).graph_def.library
  found = {f.signature.name: sorted({n.op for n in f.node_def if _training_op(n.op)})
           for f in library.function}
  return {k: v for k, v in found.items() if v}


# ---------------------------------------------------------------------------------------------
# A tf.Module: embedding, dense layer, MutableHashTable, DenseHashTable, static tables


class _Dense(tf.Module):

  def __init__(self, n_in, n_out):
    super().__init__()
    self.w = tf.Variable(tf.random.stateless_normal([n_in, n_out], seed=[1, 2]), name='w')
    self.b = tf.Variable(tf.zeros([n_out]), name='b')

  def __call__(self, x):
    return tf.matmul(x, self.w) + self.b


class RecModule(tf.Module):

  def __init__(self, vocab_path):
    super().__init__()
    self.emb = tf.Variable(tf.random.stateless_normal([ROWS, 4], seed=[3, 4]), name='emb')
    self.dense = _Dense(6, 1)
    self.clicks = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0)
    self.prices = tf.lookup.experimental.DenseHashTable(
        tf.int64, tf.float32, default_value=-1.0, empty_key=-1, deleted_key=-2,
        initial_num_buckets=16)  # grows while training: the checkpoint's is bigger
    # Two tables read one asset file: the export holds it once.
    init = lambda: tf.lookup.TextFileInitializer(
        vocab_path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER)
    self.words = tf.lookup.StaticHashTable(init(), -1)
    self.words_again = tf.lookup.StaticHashTable(init(), 7)

  def _features(self, ids, words):
    stats = tf.stack([self.clicks.lookup(ids), self.prices.lookup(ids)], 1)
    return tf.concat([tf.gather(self.emb, ids % ROWS), stats], 1)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                tf.TensorSpec([None], tf.string)])
  def serve(self, ids, words):
    word = tf.cast(self.words.lookup(words) * 10 + self.words_again.lookup(words), tf.float32)
    return {'score': self.dense(self._features(ids, words))[:, 0] + word,
            'clicks': self.clicks.lookup(ids), 'price': self.prices.lookup(ids)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                tf.TensorSpec([None], tf.string)])
  def learn(self, ids, words):
    """Plain SGD as a saved function: gradients, variable updates, table inserts."""
    variables = [self.emb, self.dense.w, self.dense.b]
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((self.dense(self._features(ids, words))[:, 0] - 1.0) ** 2)
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
      variable.assign_sub(0.01 * tf.convert_to_tensor(gradient))
    self.clicks.insert(ids, self.clicks.lookup(ids) + 1.0)
    return loss

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def count_clicks(self, filenames):
    """Reads one batch of ids from TFRecord files and counts them: a dataset read."""
    ids = next(iter(tf.data.TFRecordDataset(filenames).map(
        lambda r: tf.io.parse_single_example(r, {'id': tf.io.FixedLenFeature([], tf.int64)})[
            'id']).batch(8)))
    self.clicks.insert(ids, self.clicks.lookup(ids) + 1.0)
    return tf.size(ids)

  def train_step(self, ids, words, optimizer):
    variables = [self.emb, self.dense.w, self.dense.b]
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean((self.dense(self._features(ids, words))[:, 0] - 1.0) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    self.clicks.insert(ids, self.clicks.lookup(ids) + 1.0)
    self.prices.insert(ids, tf.cast(ids, tf.float32) * 0.5)


def _module_feeds():
  rng = np.random.RandomState(5)
  return {'ids': rng.randint(0, 2 * ROWS, 64).astype(np.int64),
          'words': np.array([b'ant', b'bee', b'cat', b'unseen'] * 16)}


@pytest.fixture(scope='module')
def module_case(tmp_path_factory):
  root = tmp_path_factory.mktemp('tf2_module')
  vocab = root / 'vocab.txt'
  vocab.write_text('ant\nbee\ncat\n')
  model = RecModule(str(vocab))
  tf.saved_model.save(model, str(root / 'structure'), signatures={'serving_default': model.serve})
  optimizer = tf.keras.optimizers.Adam(0.05)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                                       str(root / 'ckpt'), max_to_keep=2)
  rng = np.random.RandomState(0)
  for step in range(6):  # ids below ROWS only: the tables never see the others
    ids = tf.constant(rng.randint(0, ROWS, 32), tf.int64)
    model.train_step(ids, tf.constant([b'ant'] * 32), optimizer)
    if step in (2, 5):
      manager.save()
  feeds = _module_feeds()
  expected = {k: v.numpy() for k, v in model.serve(**feeds).items()}
  out = str(root / 'serving')
  report = from_checkpoint.saved_model_from_checkpoint(
      checkpoint=str(root / 'ckpt'), output_dir=out,
      saved_model_dir=str(root / 'structure'))
  return dict(root=root, structure=str(root / 'structure'), ckpt=manager.latest_checkpoint,
              out=out, report=report, feeds=feeds, expected=expected)


def test_module_answers_as_trained_through_every_loader(module_case, capi):
  expected = module_case['expected']
  clicks = expected['clicks']
  assert 10 < np.count_nonzero(clicks) < len(clicks)  # trained and unseen ids both fed
  assert np.count_nonzero(expected['price'] == -1.0) > 10  # DenseHashTable default, unseen
  _assert_answers(module_case['out'], module_case['feeds'], expected, capi)


def test_module_variables_hold_the_model_under_the_structures_keys(module_case):
  out, report = module_case['out'], module_case['report']
  written = _keys(out + '/variables/variables')
  assert written == _keys(module_case['structure'] + '/variables/variables')
  assert 'emb/.ATTRIBUTES/VARIABLE_VALUE' in written
  assert 'prices/.ATTRIBUTES/table-keys' in written
  source = checkpoint_index.read_index(module_case['ckpt'])
  assert {n for n in source.entries if n.startswith(('optimizer/', 'save_counter/'))}
  assert report.checkpoint_object == 'model' and report.matched_by == 'path'
  assert report.tensors_exported == len(written) - 1  # all but the object graph
  assert report.bytes_exported == report.bytes_needed < report.bytes_in_checkpoint
  # The trained (grown) tables, not the structure's empty ones.
  trained = tf.train.load_checkpoint(module_case['ckpt'])
  copy = tf.train.load_checkpoint(out + '/variables/variables')
  np.testing.assert_array_equal(copy.get_tensor('prices/.ATTRIBUTES/table-keys'),
                                trained.get_tensor('model/prices/.ATTRIBUTES/table-keys'))
  assert copy.get_tensor('clicks/.ATTRIBUTES/table-keys').shape[0] > 10
  # The object graph is the structure's own, byte for byte.
  structure = tf.train.load_checkpoint(module_case['structure'] + '/variables/variables')
  graph_key = from_tf2_checkpoint.OBJECT_GRAPH_KEY
  assert copy.get_tensor(graph_key) == structure.get_tensor(graph_key)
  files = sorted(str(p.relative_to(out)) for p in pathlib.Path(out).rglob('*') if p.is_file())
  assert files == ['assets/vocab.txt', 'saved_model.pb', 'variables/variables.data-00000-of-00002',
                   'variables/variables.data-00001-of-00002', 'variables/variables.index']
  # The structure's MetaGraph without the functions serving does not run.
  structure_graph = conftest.meta_graph_of(module_case['structure'])
  out_graph = conftest.meta_graph_of(out)
  assert out_graph.signature_def == structure_graph.signature_def
  assert out_graph.graph_def.node == structure_graph.graph_def.node
  assert len(out_graph.object_graph_def.nodes) == len(structure_graph.object_graph_def.nodes)


def test_module_output_keeps_no_training_function(module_case, capi):
  structure = _training_ops(module_case['structure'])
  assert any('learn' in f for f in structure) and any('count_clicks' in f for f in structure)
  assert {op for ops in structure.values() for op in ops} >= {
      'LookupTableInsertV2', 'AssignSubVariableOp', 'StridedSliceGrad', 'IteratorGetNext',
      'TFRecordDataset'}
  assert _training_ops(module_case['out']) == {}
  out_graph = conftest.meta_graph_of(module_case['out'])
  assert not [f for f in out_graph.graph_def.library.function
              if 'learn' in f.signature.name or 'count_clicks' in f.signature.name]
  assert not {o.name for o in out_graph.meta_info_def.stripped_op_list.op
              if _training_op(o.name)}
  # tf.saved_model.load still rebuilds the objects: the trained functions are empty, the
  # serving function answers.
  loaded = tf.saved_model.load(module_case['out'])
  with pytest.raises((ValueError, TypeError)):
    loaded.learn(tf.constant([1], tf.int64), tf.constant(['ant']))
  feeds = module_case['feeds']
  np.testing.assert_allclose(loaded.serve(**feeds)['score'].numpy(),
                             module_case['expected']['score'], atol=ATOL, rtol=0)
  _assert_answers(module_case['out'], feeds, module_case['expected'], capi)


def test_runs_without_tensorflow(module_case, tmp_path):
  code = ('import sys; from freezerlib.export import from_checkpoint; '
          'r = from_checkpoint.saved_model_from_checkpoint(checkpoint=sys.argv[1], '
          'output_dir=sys.argv[2], '
          'saved_model_dir=sys.argv[3], checkpoint_object="model"); '
          'assert "tensorflow.python.framework.ops" not in sys.modules, "TensorFlow imported"; '
          'print(r.tensors_exported)')
  proc = subprocess.run([sys.executable, '-c', code, module_case['ckpt'], str(tmp_path / 'o'),
                         module_case['structure']], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(module_case['report'].tensors_exported)]
  assert tree_digest(tmp_path / 'o') == tree_digest(module_case['out'])


def test_from_and_into_s3_equals_the_local_export(module_case, tmp_path, monkeypatch):
  """The TF2 structure and its tf.train.Checkpoint on s3:// (moto's server), the output on
  s3://: the same files as the local export."""
  import storage_servers

  from freezerlib.core import files
  from freezerlib.core import object_store
  server = storage_servers.start_moto(['tf2'])
  try:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **server.env)
    for name, value in server.env.items():
      monkeypatch.setenv(name, value)
    object_store.reset()
    files.copy_tree(module_case['structure'], 's3://tf2/structure')
    files.copy_tree(os.path.dirname(module_case['ckpt']), 's3://tf2/ckpt')
    proc = subprocess.run([sys.executable, 'optimize_from_ckpt.py',
                           '--saved_model_dir=s3://tf2/structure', '--checkpoint=s3://tf2/ckpt',
                           '--output_saved_model_dir=s3://tf2/serving'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files.copy_tree('s3://tf2/serving', str(tmp_path / 'serving'))
    assert tree_digest(tmp_path / 'serving') == tree_digest(module_case['out'])
  finally:
    object_store.reset()
    server.stop()


# ---------------------------------------------------------------------------------------------
# Keras 3: model.export, then fit


@pytest.fixture(scope='module')
def keras_case(tmp_path_factory):
  import keras
  root = tmp_path_factory.mktemp('tf2_keras')
  keras.utils.set_random_seed(1)
  ids = keras.Input((1,), dtype='int64', name='ids')
  x = keras.Input((3,), name='x')
  embedded = keras.layers.Flatten()(keras.layers.Embedding(30, 4, name='item_emb')(ids))
  hidden = keras.layers.Dense(8, activation='relu', name='hidden')(
      keras.layers.Concatenate()([embedded, x]))
  hidden = keras.layers.BatchNormalization(name='bn')(hidden)
  hidden = keras.layers.Dropout(0.2, name='drop')(hidden)
  model = keras.Model([ids, x], keras.layers.Dense(1, name='logit')(hidden))
  model.export(str(root / 'structure'), verbose=False)
  optimizer = keras.optimizers.Adam(0.05)
  model.compile(optimizer=optimizer, loss='mse')
  rng = np.random.RandomState(2)
  train = [rng.randint(0, 30, (128, 1)).astype(np.int64), rng.randn(128, 3).astype(np.float32)]
  model.fit(train, rng.randn(128, 1).astype(np.float32), epochs=3, batch_size=32, verbose=0)
  prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(root / 'ckpt' / 'ck'))
  feeds = {'ids': np.arange(30, dtype=np.int64)[:, None],
           'x': rng.randn(30, 3).astype(np.float32)}
  expected = {'output_0': model(feeds, training=False).numpy()}
  out = str(root / 'serving')
  report = from_checkpoint.saved_model_from_checkpoint(checkpoint=prefix, output_dir=out,
                                    saved_model_dir=str(root / 'structure'))
  return dict(root=root, structure=str(root / 'structure'), ckpt=prefix, out=out,
              report=report, feeds=feeds, expected=expected)


def test_keras_export_answers_as_trained_through_every_loader(keras_case, capi):
  _assert_answers(keras_case['out'], keras_case['feeds'], keras_case['expected'], capi)


def test_keras_variables_are_found_by_full_name_and_stored_once(keras_case):
  report = keras_case['report']
  # Keras 3 checkpoints key the model's trainable variables by the optimizer's path to them
  # (shorter than the model's), the others by the model's.
  source = _keys(keras_case['ckpt'])
  assert 'optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE' in source
  assert sorted(k.rsplit('/', 3)[-3] for k in source if k.startswith('model/')) == [
      'moving_mean', 'moving_variance']
  structure_keys = _keys(keras_case['structure'] + '/variables/variables')
  assert report.matched_by == 'full name'
  assert report.tensors_exported == len(structure_keys) - 1 == 19
  index = checkpoint_index.read_index(keras_case['out'] + '/variables/variables')
  assert set(index.entries) == structure_keys
  # variables/k and _all_variables/k are one tensor twice: one copy of its bytes. 10 tensors:
  # embedding, 2 dense layers, 4 batch norm, and Dropout's seed generator state (not in the
  # checkpoint: the structure's own, which inference does not read).
  places = {(e.offset, e.size) for n, e in index.entries.items()
            if n != from_tf2_checkpoint.OBJECT_GRAPH_KEY}
  assert len(places) == 10
  assert report.bytes_exported == report.bytes_needed == sum(size for _, size in places) + (
      index.nbytes(from_tf2_checkpoint.OBJECT_GRAPH_KEY))


# ---------------------------------------------------------------------------------------------
# tf-keras (Keras 2): model.save, then fit and checkpoint


@pytest.fixture(scope='module')
def tf_keras_case(tmp_path_factory):
  import real_models
  return real_models.tf_keras_clicks(str(tmp_path_factory.mktemp('tf_keras')))


@pytest.mark.parametrize('written_by', ['checkpoint', 'weights'])
def test_tf_keras_checkpoint_answers_as_trained(tf_keras_case, written_by, tmp_path, capi):
  """tf.train.Checkpoint(model=, optimizer=) and save_weights both lack the compiled metrics'
  accumulators (only the SavedModel tracks them; no signature reads them): they keep the
  structure's values, the model's own are the checkpoint's."""
  out = str(tmp_path / 'serving')
  report = from_checkpoint.saved_model_from_checkpoint(
      checkpoint=tf_keras_case[written_by], output_dir=out,
      saved_model_dir=tf_keras_case['structure'])
  assert report.checkpoint_object == ('model' if written_by == 'checkpoint' else '')
  expected = tf_keras_case['expected']
  assert len(np.unique(np.round(expected, 4))) > 20
  _assert_answers(out, tf_keras_case['feeds'], {'ctr': expected},
                  capi if written_by == 'checkpoint' else None)
  structure = tf.train.load_checkpoint(tf_keras_case['structure'] + '/variables/variables')
  copy = tf.train.load_checkpoint(out + '/variables/variables')
  metrics = [k for k in copy.get_variable_to_shape_map() if k.startswith('keras_api/metrics/')]
  assert len(metrics) == 8  # accuracy's total, count; loss's total, count; AUC's four
  for key in metrics:
    np.testing.assert_array_equal(copy.get_tensor(key), structure.get_tensor(key))
  trained = tf.train.load_checkpoint(tf_keras_case[written_by])
  counts = 'layer-5/counts/.ATTRIBUTES/table-values'  # ItemCounts' table
  assert not [k for k in trained.get_variable_to_shape_map() if 'metrics' in k]
  assert copy.get_tensor(counts).sum() > structure.get_tensor(counts).sum() > 0


def test_tf_keras_output_keeps_no_training_function(tf_keras_case, tmp_path):
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(
      checkpoint=tf_keras_case['checkpoint'], output_dir=out,
      saved_model_dir=tf_keras_case['structure'])
  # Keras saves its layers' training-mode traces: the counting layer's inserts, batch norm's
  # moving statistics.
  structure = _training_ops(tf_keras_case['structure'])
  assert {op for ops in structure.values() for op in ops} >= {'LookupTableInsertV2',
                                                              'StopGradient'}
  assert _training_ops(out) == {}
  loaded = tf.saved_model.load(out)
  got = loaded.signatures['serving_default'](
      **{k: tf.constant(v) for k, v in tf_keras_case['feeds'].items()})['ctr']
  np.testing.assert_allclose(got.numpy(), tf_keras_case['expected'], atol=ATOL, rtol=0)


def test_tf_keras_saved_model_table_becomes_read_only_on_the_freeze_path(tf_keras_case, tmp_path,
                                                                       capi):
  """The freeze path on the same model's SavedModel (here, where the model is built already):
  ItemCounts' MutableHashTable, read inside the layer's function, becomes a dense table
  (read_only_tables, which inlines the calls first); every answer is bit for bit the SavedModel's
  under tf.saved_model.load, through both loaders and the C API, unseen items and users and the
  keys the dense table reserves included."""
  frozen, out = str(tmp_path / 'frozen.pb'), str(tmp_path / 'serving')
  freeze.graph_from_saved_model(tf_keras_case['structure'], frozen)
  # The table holds 40 keys (480 bytes): rewritten from 256 bytes of contents on.
  from_frozen.saved_model_from_frozen_graph(frozen, out, constants_as_variables=256)
  graph_def = conftest.meta_graph_of(out).graph_def
  ops = [n.op for n in graph_def.node] + [n.op for f in graph_def.library.function
                                          for n in f.node_def]
  assert 'MutableDenseHashTableV2' in ops and 'MutableHashTableV2' not in ops
  feeds = {k: np.array(v) for k, v in tf_keras_case['feeds'].items()}
  least = np.iinfo(np.int64).min
  feeds['item'][:3, 0] = [least, least + 1, least + 2]
  feeds = {'serving_default': feeds}
  want = conftest.run_tf2_signatures(tf_keras_case['structure'], feeds)['serving_default']
  model = loaders.load_saved_model(out)
  try:
    tf1 = model.run('serving_default', feeds['serving_default'])
  finally:
    model.close()
  got = {'tf.saved_model.load': conftest.run_tf2_signatures(out, feeds)['serving_default'],
         'TF1 loader': tf1,
         'C API': capi_runner.run_signatures(capi, out, feeds)['serving_default']}
  for loader, answers in got.items():
    assert sorted(answers) == ['ctr'], loader
    assert answers['ctr'].dtype == want['ctr'].dtype, loader
    np.testing.assert_array_equal(answers['ctr'], want['ctr'], err_msg=loader)
  assert len(np.unique(want['ctr'])) > 20


def test_tf_keras_model_with_its_own_variables_is_not_ambiguous(tmp_path, capi):
  """A Keras model's root and its keras_api both track its variables under the same names:
  the model's own variables/ (TF Recommenders' BruteForce recipe) is one match."""
  import real_models
  case = real_models.tf_keras_top_k(str(tmp_path))
  out = str(tmp_path / 'serving')
  report = from_checkpoint.saved_model_from_checkpoint(
      checkpoint=case['structure'] + '/variables/variables', output_dir=out,
      saved_model_dir=case['structure'])
  assert report.checkpoint_object == ''
  _assert_answers(out, case['feeds'], case['expected'], capi)


# ---------------------------------------------------------------------------------------------
# Mismatches


def test_checkpoint_of_another_model_is_one_line_and_writes_nothing(module_case, keras_case,
                                                                   tmp_path):
  out = tmp_path / 'out'
  digest = tree_digest(keras_case['root'] / 'ckpt')
  with pytest.raises(errors.UserError) as error:
    from_checkpoint.saved_model_from_checkpoint(checkpoint=keras_case['ckpt'], output_dir=str(out),
                             saved_model_dir=module_case['structure'])
  message = str(error.value)
  assert '\n' not in message
  for fragment in ('does not match', 'emb missing', 'dense/w missing', 'clicks missing',
                   'prices missing'):
    assert fragment in message, message
  assert not out.exists() and not list(tmp_path.iterdir())
  assert tree_digest(keras_case['root'] / 'ckpt') == digest
  proc = run_script('optimize_from_ckpt.py', '--saved_model_dir=%s' % module_case['structure'],
                    '--checkpoint=%s' % keras_case['ckpt'], '--output_saved_model_dir=%s' % out)
  assert_one_line_error(proc, 'optimize_from_ckpt.py', 'does not match', 'emb missing')
  assert not out.exists()


class _Bigger(tf.Module):

  def __init__(self):
    super().__init__()
    self.emb = tf.Variable(tf.zeros([ROWS + 1, 4]), name='emb')
    self.dense = _Dense(6, 1)
    self.dense.w = tf.Variable(tf.zeros([6, 1], tf.float64), name='w')
    self.extra = tf.Variable(1.0, name='extra')

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def serve(self, ids):
    return {'x': tf.gather(self.emb, ids)[:, 0] + self.extra}


def test_every_difference_is_listed(module_case, tmp_path):
  model = _Bigger()
  structure = str(tmp_path / 'bigger')
  tf.saved_model.save(model, structure, signatures={'serving_default': model.serve})
  with pytest.raises(errors.UserError) as error:
    from_checkpoint.saved_model_from_checkpoint(
        checkpoint=module_case['ckpt'], output_dir=str(tmp_path / 'out'),
        saved_model_dir=structure)
  message = str(error.value)
  assert 'closest: model, by path, 1 of 4' in message, message  # dense/b matches
  assert 'emb has shape [50, 4] in the checkpoint, [51, 4] in the structure' in message
  assert 'dense/w is float32 in the checkpoint, float64 in the structure' in message
  assert 'extra missing' in message
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('path,fragment', [
    ('optimizer', 'closest: optimizer'),
    ('model/nope', 'has no object model/nope: model holds clicks, dense, emb'),
])
def test_checkpoint_object_is_obeyed(module_case, tmp_path, path, fragment):
  with pytest.raises(errors.UserError, match=fragment):
    from_checkpoint.saved_model_from_checkpoint(
        checkpoint=module_case['ckpt'], output_dir=str(tmp_path / 'o'),
        saved_model_dir=module_case['structure'], checkpoint_object=path)
  assert not (tmp_path / 'o').exists()


def test_two_matching_objects_are_ambiguous(module_case, tmp_path):
  vocab = str(module_case['root'] / 'vocab.txt')
  prefix = tf.train.Checkpoint(model=RecModule(vocab), ema=RecModule(vocab)).write(
      str(tmp_path / 'ck'))
  with pytest.raises(errors.UserError, match='2 objects that match .*: ema, model; choose one '
                     'with --checkpoint_object'):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=prefix, output_dir=str(tmp_path / 'o'),
                             saved_model_dir=module_case['structure'])
  report = from_checkpoint.saved_model_from_checkpoint(
      checkpoint=prefix, output_dir=str(tmp_path / 'o'),
      saved_model_dir=module_case['structure'],
      checkpoint_object='ema')
  assert report.checkpoint_object == 'ema'


@pytest.mark.parametrize('args,fragment', [
    (dict(signature_names=['serving_default']), '--signature_def does not apply'),
    (dict(prune_tensors=False), '--noprune does not apply'),
])
def test_tf1_only_options_are_refused(module_case, tmp_path, args, fragment):
  with pytest.raises(errors.UserError, match=fragment):
    from_checkpoint.saved_model_from_checkpoint(
        checkpoint=module_case['ckpt'], output_dir=str(tmp_path / 'o'),
        saved_model_dir=module_case['structure'], **args)


def test_name_based_checkpoint_is_refused(module_case, tmp_path):
  with tf.Graph().as_default():
    tf.compat.v1.get_variable('emb', [ROWS, 4])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = tf.compat.v1.train.Saver().save(session, str(tmp_path / 'model.ckpt'))
  with pytest.raises(errors.UserError, match='name-based .* needs a checkpoint written by '
                     'tf.train.Checkpoint'):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=prefix, output_dir=str(tmp_path / 'o'),
                             saved_model_dir=module_case['structure'])


# ---------------------------------------------------------------------------------------------
# Sharded variables: a ParameterServerStrategy's ShardedVariable


class ShardedModule(tf.Module):
  """An embedding of 11 rows, sharded in `shards` (None: one plain variable)."""

  def __init__(self, shards=None):
    super().__init__()
    if shards:
      rows = [11 // shards + (1 if i < 11 % shards else 0) for i in range(shards)]
      self.emb = tf.__internal__.distribute.ShardedVariable(
          [tf.Variable(tf.zeros([r, 4]), name='emb/part_%d' % i) for i, r in enumerate(rows)])
    else:
      self.emb = tf.Variable(tf.zeros([11, 4]), name='emb')
    self.w = tf.Variable(tf.ones([4, 1]), name='w')

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def serve(self, ids):
    return {'score': tf.matmul(tf.nn.embedding_lookup(self.emb, ids), self.w)[:, 0]}


_PS_TRAINING = '''
import socket, sys
import numpy as np, tensorflow as tf
sys.path.insert(0, sys.argv[2])
from test_tf2_checkpoint import ShardedModule
def port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]
spec = {'chief': ['localhost:%d' % port()], 'worker': ['localhost:%d' % port()],
        'ps': ['localhost:%d' % port(), 'localhost:%d' % port()]}
cluster = tf.train.ClusterSpec(spec)
servers = [tf.distribute.Server(cluster, job_name=job, task_index=i, start=True)
           for job in ('worker', 'ps') for i in range(len(spec[job]))]
strategy = tf.distribute.experimental.ParameterServerStrategy(
    tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer='grpc',
                                                         task_type='chief', task_id=0),
    variable_partitioner=lambda shape, dtype: [3, 1] if shape[0] == 11 else [1] * len(shape))
with strategy.scope():
  model = ShardedModule()
  optimizer = tf.keras.optimizers.Adam(0.1)
assert isinstance(model.emb, tf.__internal__.distribute.ShardedVariable)
assert len(model.emb.variables) == 3, model.emb.variables
tf.saved_model.save(model, sys.argv[1] + '/structure_3',
                    signatures={'serving_default': model.serve})
model.emb.assign(tf.reshape(tf.range(44, dtype=tf.float32), [11, 4]))
variables = list(model.emb.variables) + [model.w]
with strategy.scope():
  optimizer.build(variables)

@tf.function
def step():
  def replica_step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model.serve(tf.constant([1, 5, 9], tf.int64))['score'] ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  strategy.run(replica_step)

coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
for _ in range(3):  # on the worker, variables on the parameter servers
  coordinator.schedule(step)
coordinator.join()
tf.train.Checkpoint(model=model, optimizer=optimizer).save(sys.argv[1] + '/ckpt/ck')
np.save(sys.argv[1] + '/expected.npy', model.serve(tf.range(11, dtype=tf.int64))['score'].numpy())
'''


@pytest.fixture(scope='module')
def sharded_case(tmp_path_factory):
  """A real ParameterServerStrategy (2 PS on loopback, in a child process: it connects the
  eager context to the cluster for good) trains a 3-shard embedding and checkpoints it."""
  root = tmp_path_factory.mktemp('tf2_sharded')
  proc = subprocess.run([sys.executable, '-c', _PS_TRAINING, str(root), str(REPO / 'tests')],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  for shards in (None, 2):
    model = ShardedModule(shards)
    tf.saved_model.save(model, str(root / ('structure_%s' % (shards or 1))),
                        signatures={'serving_default': model.serve})
  return dict(root=root, ckpt=str(root / 'ckpt'), expected=np.load(root / 'expected.npy'))


def test_sharded_variable_is_saved_as_slices_of_one_tensor(sharded_case):
  index = checkpoint_index.read_index(checkpoint_index.resolve_prefix(sharded_case['ckpt']))
  assert checkpoint_index.slices_of(index, 'model/emb/.ATTRIBUTES/VARIABLE_VALUE') == [
      ((0, 4), (0, 4)), ((4, 4), (0, 4)), ((8, 3), (0, 4))]
  assert index.num_shards == 3  # one data file per parameter server, one for the coordinator
  assert len([n for n in index.entries if n.startswith('optimizer/_variables/')]) == 8
  # The structure saved from the strategy's model has the same slices in its variables/, but
  # its MetaGraph serves one variable of the full shape: the shard count is only a layout.
  structure = str(sharded_case['root'] / 'structure_3')
  assert len(checkpoint_index.read_index(structure + '/variables/variables').slices[
      'emb/.ATTRIBUTES/VARIABLE_VALUE']) == 3
  objects = conftest.meta_graph_of(structure).object_graph_def.nodes
  assert [[d.size for d in o.variable.shape.dim] for o in objects
          if o.WhichOneof('kind') == 'variable'] == [[11, 4], [4, 1]]
  untrained = np.arange(44, dtype=np.float32).reshape(11, 4).sum(1)
  assert np.abs(sharded_case['expected'] - untrained).min() > 0.01  # the worker trained it


@pytest.mark.parametrize('shards', [3, 2, 1])
def test_sharded_checkpoint_serves_any_shard_count(sharded_case, shards, tmp_path, capi):
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(checkpoint=sharded_case['ckpt'], output_dir=out,
                           saved_model_dir=str(sharded_case['root'] / ('structure_%d' % shards)))
  index = checkpoint_index.read_index(out + '/variables/variables')
  assert len(index.slices['emb/.ATTRIBUTES/VARIABLE_VALUE']) == 3  # the checkpoint's slices
  _assert_answers(out, {'ids': np.arange(11, dtype=np.int64)},
                  {'score': sharded_case['expected']}, capi if shards == 2 else None)
