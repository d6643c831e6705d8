"""TF2 object-based SavedModels (tf.saved_model.save): frozen, re-dumped and served like TF1 ones.

Each model goes through freeze.graph_from_saved_model and
from_frozen.saved_model_from_frozen_graph; the re-dumped SavedModel
must answer as the original does under tf.saved_model.load, on keys the tables hold and on keys
they have never seen, and as the values worked out by hand below.
"""

import io
import shutil

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from conftest import all_ops
from conftest import assert_one_line_error
from conftest import run_script
from conftest import run_tf2_signatures
from conftest import tf_serving_model
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.verify import compare
from freezerlib.verify import loaders

VARIABLE_OPS = {'VarHandleOp', 'ReadVariableOp', 'ResourceGather', 'AssignVariableOp',
                'RestoreV2', 'SaveV2'}


_all_ops = all_ops
_run_original = run_tf2_signatures


def _run_redumped(export_dir, feeds_by_signature):
  """{sig: {output: array}} through the TF1 loader (restore, then the main op), as TF Serving."""
  model = loaders.load_saved_model(str(export_dir))
  try:
    return {k: model.run(k, feeds) for k, feeds in feeds_by_signature.items()}
  finally:
    model.close()


def _assert_same(got, expected, atol=1e-6):
  assert sorted(got) == sorted(expected)
  for key in expected:
    assert sorted(got[key]) == sorted(expected[key]), key
    for out in expected[key]:
      assert np.shape(got[key][out]) == np.shape(expected[key][out]), (key, out)
      np.testing.assert_allclose(got[key][out], expected[key][out], rtol=0, atol=atol,
                                 err_msg='%s/%s' % (key, out))


def _freeze_and_redump(src, out_dir, **freeze_args):
  frozen_path = str(out_dir / 'frozen.pb')
  report = freeze.graph_from_saved_model(str(src), frozen_path, **freeze_args)
  model = report.model
  serving = out_dir / 'serving'
  from_frozen.saved_model_from_frozen_graph(frozen_path, str(serving))
  return model, report, serving


def _signature_keys(export_dir):
  proto = saved_model.read_saved_model_proto(str(export_dir))
  meta_graph = saved_model.select_meta_graph(proto, ['serve'], str(export_dir))
  return {k: v.method_name for k, v in meta_graph.signature_def.items()
          if k != saved_model.INIT_OP_SIGNATURE_KEY}


def _example(x):
  feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
  return tf.train.Example(features=tf.train.Features(feature={'x': feature})).SerializeToString()


# ---------------------------------------------------------------------------------------------
# TF Serving's half_plus_two, saved by TF2


# Its signatures declare shape [1] for the float inputs, so x=1 and x=2 are two requests.
# y = 0.5 x + 2; the x2 and y2 signatures add 3 instead of 2.
HALF_PLUS_TWO_TF2_CASES = {
    'serving_default': ({'x': np.float32([1])}, {'y': np.float32([2.5])}),
    'regress_x2_to_y3': ({'inputs': np.float32([2])}, {'outputs': np.float32([4.0])}),
    'classify_x2_to_y3': ({'inputs': np.float32([4])}, {'scores': np.float32([5.0])}),
    'regress_x_to_y': ({'inputs': np.array([_example(4.0), _example(-1.0)], dtype=object)},
                       {'outputs': np.float32([[4.0], [1.5]])}),
    'regress_x_to_y2': ({'inputs': np.array([_example(4.0)], dtype=object)},
                        {'outputs': np.float32([[5.0]])}),
    'classify_x_to_y': ({'inputs': np.array([_example(2.0)], dtype=object)},
                        {'scores': np.float32([[3.0]])}),
}


def test_half_plus_two_tf2_every_signature(tmp_path):
  src = tf_serving_model('saved_model_half_plus_two_tf2_cpu')
  digest = tree_digest(src)
  proto = saved_model.read_saved_model_proto(src)
  assert saved_model.is_object_based(proto.meta_graphs[0])
  tf1_proto = saved_model.read_saved_model_proto(tf_serving_model('saved_model_half_plus_two_cpu'))
  assert not saved_model.is_object_based(tf1_proto.meta_graphs[0])

  model, report, serving = _freeze_and_redump(src, tmp_path)
  assert report.variables == ['a', 'b', 'c'] and not report.tables
  assert not _all_ops(model.graph_def) & VARIABLE_OPS
  # Inputs are Placeholders named after their keys (TF2 called them serving_default_x, ...).
  assert model.signatures['serving_default'].inputs['x'].name == 'x:0'
  assert {n.name: n.op for n in model.graph_def.node}['x'] == 'Placeholder'
  assert _signature_keys(serving) == _signature_keys(src)
  assert sorted(_signature_keys(serving)) == sorted(HALF_PLUS_TWO_TF2_CASES)

  feeds = {k: v[0] for k, v in HALF_PLUS_TWO_TF2_CASES.items()}
  expected = {k: v[1] for k, v in HALF_PLUS_TWO_TF2_CASES.items()}
  _assert_same(_run_original(src, feeds), expected, atol=0)
  _assert_same(_run_redumped(serving, feeds), expected, atol=0)
  got = _run_redumped(serving, {'serving_default': {'x': np.float32([2])}})
  np.testing.assert_array_equal(got['serving_default']['y'], [3.0])
  assert tree_digest(src) == digest


# ---------------------------------------------------------------------------------------------
# A tf.Module with every kind of table


class TableModule(tf.Module):
  """Tables and variables filled before saving; two signatures that write them."""

  def __init__(self):
    super().__init__()
    self.mutable = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0)
    self.of_tensors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, [0.0, 0.0])
    self.dense = tf.lookup.experimental.DenseHashTable(
        tf.int64, tf.float32, default_value=-2.0, empty_key=-1, deleted_key=-3)
    self.static = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['apple', 'kiwi']), tf.constant([10, 20], tf.int64)), -9)
    self.weight = tf.Variable(1.5)
    self.emb = tf.Variable(np.arange(20, dtype=np.float32).reshape(10, 2))
    self.calls = tf.Variable(0, dtype=tf.int64)

  @tf.function
  def _embed(self, ids):  # a nested function gathering from a variable (ResourceGather)
    return tf.nn.embedding_lookup(self.emb, tf.math.floormod(ids, 10))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                tf.TensorSpec([None], tf.string)])
  def score(self, ids, words):
    id_score = self.mutable.lookup(ids) * self.weight + self.dense.lookup(ids)
    word_score = (tf.reduce_sum(self.of_tensors.lookup(words), axis=1) +
                  tf.cast(self.static.lookup(words), tf.float32))
    return {'id_score': id_score, 'word_score': word_score, 'embedded': self._embed(ids)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def learn(self, ids):
    self.mutable.insert(ids, tf.ones_like(ids, tf.float32))
    return {'size': self.mutable.size()}

  @tf.function(input_signature=[])
  def count_calls(self):
    self.calls.assign_add(1)
    return {'calls': self.calls.read_value()}


TABLE_FEEDS = {'serving_default': {
    'ids': np.array([3, 5, 7, 11, 13, 4, 999], np.int64),
    'words': np.array([b'apple', b'banana', b'cherry', b'kiwi', b'zzz', b'', b'apple'],
                      dtype=object)}}
# mutable: 3 -> 0.5, 5 -> 1.5, 7 -> 2.5 (times 1.5); dense: 3 -> 30, 11 -> 110 (13 removed);
# of_tensors: apple -> [1, 2], cherry -> [4, 5]; static: apple -> 10, kiwi -> 20. Unseen keys:
# -1, -2, [0, 0] and -9.
TABLE_EXPECTED = {'serving_default': {
    'id_score': np.float32([0.75 + 30, 2.25 - 2, 3.75 - 2, -1.5 + 110, -1.5 - 2, -1.5 - 2,
                            -1.5 - 2]),
    'word_score': np.float32([3 + 10, -9, 9 - 9, 20, -9, -9, 3 + 10]),
    'embedded': np.float32([[6, 7], [10, 11], [14, 15], [2, 3], [6, 7], [8, 9], [18, 19]])}}


@pytest.fixture(scope='module')
def table_module(tmp_path_factory):
  """The TableModule SavedModel, frozen and re-dumped: dict of paths and the FreezeReport."""
  root = tmp_path_factory.mktemp('tf2_tables')
  module = TableModule()
  module.mutable.insert(tf.constant([3, 5, 7], tf.int64), tf.constant([0.5, 1.5, 2.5]))
  module.of_tensors.insert(tf.constant(['apple', 'cherry']),
                           tf.constant([[1.0, 2.0], [4.0, 5.0]]))
  module.dense.insert(tf.constant([3, 11, 13], tf.int64), tf.constant([30.0, 110.0, 130.0]))
  module.dense.remove(tf.constant([13], tf.int64))  # leaves a deleted bucket
  src = root / 'model'
  tf.saved_model.save(module, str(src), signatures={
      'serving_default': module.score, 'learn': module.learn,
      'count_calls': module.count_calls})
  model, report, serving = _freeze_and_redump(src, root, signature_names=['serving_default'])
  return {'src': src, 'serving': serving, 'model': model, 'report': report}


def test_table_module_keeps_every_table(table_module):
  report, model = table_module['report'], table_module['model']
  kept = {t.op: sorted(np.ravel(t.keys).tolist()) for t in report.tables}
  assert kept == {
      'MutableHashTableV2': [3, 5, 7], 'MutableHashTableOfTensorsV2': [b'apple', b'cherry'],
      'MutableDenseHashTableV2': [3, 11],  # 2 of its 131072 buckets
      'HashTableV2': [b'apple', b'kiwi']}
  assert model.table_init_op == 'freezer/init_tables'
  assert not _all_ops(model.graph_def) & VARIABLE_OPS
  assert sorted(model.signatures['serving_default'].inputs) == ['ids', 'words']
  assert {model.signatures['serving_default'].inputs[k].name for k in ('ids', 'words')} == {
      'ids:0', 'words:0'}

  _assert_same(_run_original(table_module['src'], TABLE_FEEDS), TABLE_EXPECTED)
  _assert_same(_run_redumped(table_module['serving'], TABLE_FEEDS), TABLE_EXPECTED)
  assert _signature_keys(table_module['serving']) == {
      'serving_default': 'tensorflow/serving/predict'}


def test_table_module_serves_through_the_c_api(table_module, capi):
  got = capi_runner.run_signatures(capi, str(table_module['serving']), TABLE_FEEDS)
  _assert_same(got, TABLE_EXPECTED)


def test_model_past_2gb_is_refused_before_loading_and_the_way_out_serves(table_module, tmp_path,
                                                                       monkeypatch):
  """Past protobuf's 2 GB (the limit lowered here), a TF2 SavedModel is refused from its
  variables index, before TensorFlow loads it, naming the checkpoint path; that command serves
  the model as it answers."""
  src, output = str(table_module['src']), tmp_path / 'frozen.pb'
  with monkeypatch.context() as patch:
    patch.setattr(frozen_graph, 'PROTOBUF_LIMIT', 1000)
    patch.setattr(saved_model, 'load_objects', None)  # the TF2 loader is not reached
    with pytest.raises(errors.UserError, match='past protobuf.s 2 GB limit; serve it from its '
                       'checkpoint: optimize_from_ckpt.py') as caught:
      freeze.graph_from_saved_model(src, str(output), signature_names=['serving_default'])
  assert not output.exists()
  command = str(caught.value).split('optimize_from_ckpt.py ', 1)[1].split()
  args = dict(a[2:].split('=', 1) for a in command)
  assert args['saved_model_dir'] == src and args['output_saved_model_dir'] == 'DIR'
  serving = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(checkpoint=args['checkpoint'], output_dir=serving,
                                              saved_model_dir=src)
  got = _run_redumped(serving, TABLE_FEEDS)
  _assert_same({'serving_default': got['serving_default']}, TABLE_EXPECTED)


@pytest.mark.parametrize('signature,state', [('learn', 'mutable'), ('count_calls', 'calls')])
def test_stateful_signature_is_refused(table_module, tmp_path, signature, state):
  output = tmp_path / 'frozen.pb'
  with pytest.raises(errors.UserError,
                     match=r"signature '%s' .* writes '%s'" % (signature, state)):
    freeze.graph_from_saved_model(str(table_module['src']), str(output),
                                  signature_names=[signature])
  assert not output.exists()


def test_stateful_signature_cli_error(table_module, tmp_path):
  output = tmp_path / 'frozen.pb'
  proc = run_script('freezer.py', '--saved_model_dir=%s' % table_module['src'],
                    '--output_graph=%s' % output)
  assert_one_line_error(proc, 'freezer.py', "signature 'count_calls'", "writes 'calls'",
                        'AssignAddVariableOp', '--signature_def')
  assert not output.exists()


# ---------------------------------------------------------------------------------------------
# A table initialised from an asset file


class VocabModule(tf.Module):

  def __init__(self, vocab_file):
    super().__init__()
    self.vocab = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER), -1)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def __call__(self, words):
    return {'index': self.vocab.lookup(words)}


def test_asset_backed_table_needs_no_asset_once_frozen(tmp_path):
  vocab = tmp_path / 'vocab.txt'
  vocab.write_text('apple\nbanana\ncherry\n')
  src = tmp_path / 'model'
  module = VocabModule(str(vocab))
  tf.saved_model.save(module, str(src), signatures={'serving_default': module.__call__})
  assert (src / 'assets' / 'vocab.txt').exists()
  feeds = {'serving_default': {'words': np.array([b'cherry', b'apple', b'kiwi', b''],
                                                 dtype=object)}}
  expected = {'serving_default': {'index': np.int64([2, 0, -1, -1])}}
  _assert_same(_run_original(src, feeds), expected, atol=0)
  # The text-file initialiser runs inside TF2's init function on the asset path its caller
  # passes in: how asset vocabularies work, so op_safety does not stop it.
  _, report, serving = _freeze_and_redump(src, tmp_path)
  assert [sorted(t.keys) for t in report.tables] == [[b'apple', b'banana', b'cherry']]
  shutil.rmtree(src)
  vocab.unlink()
  _assert_same(_run_redumped(serving, feeds), expected, atol=0)


# ---------------------------------------------------------------------------------------------
# A Keras model with StringLookup and IntegerLookup layers


@pytest.fixture(scope='module')
def keras_model(tmp_path_factory):
  """A Keras 3 model saved with tf.saved_model.save: dict of paths."""
  import keras  # slow to import: only these tests need it

  keras.utils.set_random_seed(7)
  word = keras.Input(shape=(1,), dtype='string', name='word')
  item = keras.Input(shape=(1,), dtype='int64', name='item')
  words = keras.layers.StringLookup(name='word_lookup')
  words.adapt(tf.constant([['apple'], ['banana'], ['apple'], ['cherry']]))
  items = keras.layers.IntegerLookup(vocabulary=[10, 20, 30], name='item_lookup')
  embedded = keras.layers.Concatenate()([
      keras.layers.Flatten()(keras.layers.Embedding(words.vocabulary_size(), 3)(words(word))),
      keras.layers.Flatten()(keras.layers.Embedding(items.vocabulary_size(), 3)(items(item)))])
  score = keras.layers.Dense(1, name='score')(embedded)
  model = keras.Model({'word': word, 'item': item}, score)

  @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.string, name='word'),
                                tf.TensorSpec([None, 1], tf.int64, name='item')])
  def serve(word, item):
    return {'score': model({'word': word, 'item': item})}

  root = tmp_path_factory.mktemp('tf2_keras')
  src = root / 'model'
  tf.saved_model.save(model, str(src), signatures={'serving_default': serve})
  frozen, report, serving = _freeze_and_redump(src, root)
  return {'src': src, 'serving': serving, 'frozen': frozen, 'report': report,
          'vocabulary': words.get_vocabulary()}


# apple, cherry, banana and 10, 20, 30 are in the vocabularies; kiwi, '' and 99, -1 are not.
KERAS_FEEDS = {'serving_default': {
    'word': np.array([[b'apple'], [b'cherry'], [b'kiwi'], [b''], [b'banana'], [b'apple']],
                     dtype=object),
    'item': np.int64([[10], [30], [10], [10], [99], [-1]])}}


def test_keras_lookup_layers_keep_their_vocabularies(keras_model):
  tables = {t.op: t for t in keras_model['report'].tables}
  assert sorted(tables) == ['HashTableV2']  # Keras builds both lookups as static tables
  keys = sorted(k for t in keras_model['report'].tables for k in np.ravel(t.keys).tolist()
                if isinstance(k, bytes))
  assert keys == sorted(w.encode() for w in keras_model['vocabulary'][1:])
  assert not _all_ops(keras_model['frozen'].graph_def) & VARIABLE_OPS

  expected = _run_original(keras_model['src'], KERAS_FEEDS)
  score = expected['serving_default']['score'][:, 0]
  # Unseen words share the out-of-vocabulary row; known ones have rows of their own.
  assert score[2] == score[3] != score[0]
  assert score[0] != score[1]
  got = _run_redumped(keras_model['serving'], KERAS_FEEDS)
  _assert_same(got, expected)


def test_keras_model_serves_through_the_c_api(keras_model, capi):
  # (The original does not serve this way with Keras 3.15: the variables its signature reads are
  # not the ones its MetaGraph's saver restores, so the C++ loader leaves them uninitialised.)
  got = capi_runner.run_signatures(capi, str(keras_model['serving']), KERAS_FEEDS)
  _assert_same(got, _run_original(keras_model['src'], KERAS_FEEDS))


def test_optimize_from_pb_test_checks_against_the_tf2_original(keras_model):
  reference = loaders.load_saved_model(str(keras_model['src']))
  new = loaders.load_saved_model(str(keras_model['serving']))
  assert isinstance(reference, loaders.LoadedModel)
  out = io.StringIO()
  passed, results = compare.check(reference, new, batch_sizes=(), out=out)
  assert passed and [(r.signature, r.output) for r in results] == [('serving_default', 'score')]
  assert results[0].max_abs <= 1e-6
  assert out.getvalue().splitlines()[-1].startswith('PASSED | 1 outputs of 1 signatures match')
