"""read_only_tables on TF2 models: a tf.Module's and a Keras 3 model's MutableHashTables, read
inside the functions their signatures call, become read-only tables (transforms.inline_calls
puts their lookups at the top level first).

Each model goes through the README's path (freeze.graph_from_saved_model, then
from_frozen.saved_model_from_frozen_graph with its default rewrites); the output must answer
bit for bit as the original does under tf.saved_model.load, through tf.saved_model.load, the TF1
loader and the C API, on keys the tables hold, keys they do not, and the keys a dense table
reserves. The tf-keras case (real_models.tf_keras_clicks) is in test_tf2_checkpoint.py, which
builds that model already.
"""

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from conftest import all_ops
from conftest import meta_graph_of
from conftest import run_tf2_signatures
from freezerlib import freeze
from freezerlib.export import from_frozen
from freezerlib.transforms import read_only_tables
from freezerlib.verify import loaders

MUTABLE_OPS = {'MutableHashTableV2', 'MutableHashTableOfTensorsV2'}
# Tables of these many bytes and more are rewritten (and restored from variables/): the
# tables below are bigger, so the test stays small.
TABLE_BYTES = 1 << 16
I64 = np.iinfo(np.int64)
# Held keys, unseen ones, and those a dense int64 table reserves (the type's least three).
IDS = np.array([0, 7, 14, 69993, 1, -7, 10**9, I64.min, I64.min + 1, I64.min + 2, I64.max],
               np.int64)


def _freeze_and_redump(src, out_dir):
  frozen = str(out_dir / 'frozen.pb')
  freeze.graph_from_saved_model(str(src), frozen)
  serving = str(out_dir / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, serving,
                                            constants_as_variables=TABLE_BYTES)
  return serving


def _table_ops(export_dir):
  """{table op: count} of a SavedModel's serving graph, its functions included."""
  graph_def = meta_graph_of(export_dir).graph_def
  ops = [n.op for n in graph_def.node] + [n.op for f in graph_def.library.function
                                          for n in f.node_def]
  return {op: ops.count(op) for op in set(ops) if 'HashTable' in op}


def _assert_bit_for_bit(src, serving, feeds, capi):
  """`serving` answers as `src` does under tf.saved_model.load, exactly, through every
  loader."""
  want = run_tf2_signatures(src, feeds)
  model = loaders.load_saved_model(serving)
  try:
    tf1 = {k: model.run(k, f) for k, f in feeds.items()}
  finally:
    model.close()
  got = {'tf.saved_model.load': run_tf2_signatures(serving, feeds), 'TF1 loader': tf1,
         'C API': capi_runner.run_signatures(capi, serving, feeds)}
  for loader, answers in got.items():
    assert sorted(answers) == sorted(want), loader
    for key in want:
      assert sorted(answers[key]) == sorted(want[key]), (loader, key)
      for name, value in want[key].items():
        other = np.asarray(answers[key][name])
        assert other.dtype == value.dtype and other.shape == value.shape, (loader, key, name)
        np.testing.assert_array_equal(other, value, err_msg='%s %s/%s' % (loader, key, name))
  return want


# ---------------------------------------------------------------------------------------------
# A tf.Module: a table of counts read in the signature's function and in a nested one, a table
# of vectors by string read in a nested function with keys of rank 2


class CountsModule(tf.Module):

  def __init__(self):
    super().__init__()
    self.counts = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0)
    self.vectors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32,
                                                           [0.5, -0.5, 0.0])
    self.weight = tf.Variable(1.5)

  @tf.function
  def _features(self, ids, words):
    return tf.math.log1p(tf.abs(self.counts.lookup(ids))), self.vectors.lookup(words)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                tf.TensorSpec([None, 2], tf.string)])
  def score(self, ids, words):
    counts, vectors = self._features(ids, words)
    return {'score': counts * self.weight + self.counts.lookup(ids),
            'vectors': tf.reduce_sum(vectors, axis=1), 'raw': vectors}


@pytest.fixture(scope='module')
def module_case(tmp_path_factory):
  root = tmp_path_factory.mktemp('tf2_tables_module')
  module = CountsModule()
  keys = np.arange(10000, dtype=np.int64) * 7  # 117 KiB of keys and values
  module.counts.insert(tf.constant(keys), tf.constant(np.sqrt(keys).astype(np.float32)))
  words = np.array([b'w%d' % i for i in range(6000)], object)
  rng = np.random.RandomState(1)
  module.vectors.insert(tf.constant(words), tf.constant(rng.rand(6000, 3).astype(np.float32)))
  src = root / 'model'
  tf.saved_model.save(module, str(src), signatures={'serving_default': module.score})
  return {'src': str(src), 'serving': _freeze_and_redump(src, root)}


def test_module_tables_become_read_only_and_answer_bit_for_bit(module_case, capi):
  ops = _table_ops(module_case['serving'])
  # int64 keys: dense, string keys: static (read_only_tables' auto); nothing left mutable.
  assert ops == {read_only_tables.DENSE_OP: 1, read_only_tables.STATIC_OP: 1}, ops
  assert not all_ops(meta_graph_of(module_case['serving']).graph_def) & MUTABLE_OPS
  words = np.array([[b'w0', b'w5999'], [b'', b'\x00freezer:0'], [b'w17', b'unseen']] * 4,
                   object)[:len(IDS)]
  want = _assert_bit_for_bit(module_case['src'], module_case['serving'],
                             {'serving_default': {'ids': IDS, 'words': words}}, capi)
  score = want['serving_default']['score']
  np.testing.assert_allclose(score[4:], np.log1p(1.0) * 1.5 - 1.0, rtol=1e-6)  # unseen: -1
  assert len(set(score[:4].tolist())) == 4  # held keys answer their own values
  raw = want['serving_default']['raw']
  default = [0.5, -0.5, 0.0]  # unseen words (and those a dense table would reserve)
  assert (raw[1] == default).all() and (raw[2, 1] == default).all()
  assert not (raw[0] == default).all(axis=-1).any() and raw[0, 0, 0] != raw[0, 1, 0]


# ---------------------------------------------------------------------------------------------
# Keras 3: a layer holding a MutableHashTable, exported with model.export


@pytest.fixture(scope='module')
def keras_case(tmp_path_factory):
  import keras  # Keras 3 (TensorFlow's default), imported where used

  class ItemCounts(keras.layers.Layer):
    """Impressions per item, looked up when serving (0 for an unseen item)."""

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.counts = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0)

    def compute_output_shape(self, shape):
      return shape

    def call(self, items):
      return tf.math.log1p(self.counts.lookup(items))

  root = tmp_path_factory.mktemp('tf2_tables_keras')
  keras.utils.set_random_seed(3)
  item = keras.Input((1,), dtype='int64', name='item')
  x = keras.Input((3,), name='x')
  counts = ItemCounts(name='item_counts')
  hidden = keras.layers.Dense(4, activation='relu', name='hidden')(
      keras.layers.Concatenate()([counts(item), x]))
  model = keras.Model({'item': item, 'x': x}, keras.layers.Dense(1, name='ctr')(hidden))
  keys = np.arange(8000, dtype=np.int64) * 7
  counts.counts.insert(tf.constant(keys), tf.constant((keys % 13).astype(np.float32)))
  src = root / 'exported'
  model.export(str(src), verbose=False)
  return {'src': str(src), 'serving': _freeze_and_redump(src, root)}


def test_keras3_layer_table_becomes_read_only_and_answers_bit_for_bit(keras_case, capi):
  ops = _table_ops(keras_case['serving'])
  assert ops == {read_only_tables.DENSE_OP: 1}, ops
  rng = np.random.RandomState(4)
  feeds = {'item': IDS[:, None], 'x': rng.randn(len(IDS), 3).astype(np.float32)}
  want = _assert_bit_for_bit(keras_case['src'], keras_case['serving'],
                             {'serve': feeds, 'serving_default': feeds}, capi)
  assert len(set(np.ravel(want['serve']['output_0']).tolist())) > 5
