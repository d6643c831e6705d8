"""verify: inputs that drive models with no flags, strings that arrive byte for byte, and a
reference that cannot run told from models that differ."""

import io

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_main
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.export import from_frozen
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders

# The script, whose exit code for a reference that cannot run is checked in-process.
import optimize_from_pb_test

tf1 = tf.compat.v1


def _check(reference, new, **kwargs):
  out = io.StringIO()
  passed, results = compare.check(reference, new, batch_sizes=(), out=out, **kwargs)
  return passed, results, out.getvalue()


def _redumped(src, tmp_path):
  frozen = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(src, frozen)
  serving = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, serving)
  return serving


# ---------------------------------------------------------------------------------------------
# Ids that index an embedding


@pytest.fixture(scope='module')
def embedding_model(tmp_path_factory):
  """DeepCTR's pattern in Keras 3: an int id straight into Embedding(100), model.export."""
  import keras
  keras.utils.set_random_seed(1)
  item = keras.Input(shape=(1,), dtype='int64', name='item_id')
  price = keras.Input(shape=(1,), dtype='float32', name='price')
  vector = keras.layers.Flatten()(keras.layers.Embedding(100, 4, name='item_emb')(item))
  out = keras.layers.Dense(1, name='score')(keras.layers.Concatenate()([vector, price]))
  model = keras.Model({'item_id': item, 'price': price}, out)
  path = str(tmp_path_factory.mktemp('embedding') / 'exported')
  model.export(path, verbose=False)
  return path


def test_keras_embedding_is_fed_ids_inside_its_rows(embedding_model, tmp_path):
  reference = loaders.load_saved_model(embedding_model)
  maker = inputs.InputMaker(reference, seed=0)
  assert maker.trace('serving_default_item_id:0').bound == 100
  feeds = maker.make('serving_default', 256)
  ids = feeds['item_id']
  assert ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 50
  new = loaders.load_saved_model(_redumped(embedding_model, tmp_path))
  passed, results, report = _check(reference, new)
  assert passed and len(results) == 2, report  # serve and serving_default


def test_tf2_sparse_signature_values_are_bounded(tmp_path):
  """A TF2 SparseTensorSpec argument is flattened into three dense inputs; its values index a
  variable of 3 rows inside the signature's functions."""

  class Module(tf.Module):

    def __init__(self):
      super().__init__()
      self.weights = tf.Variable([1.0, 2.0, 4.0])

    @tf.function(input_signature=[tf.SparseTensorSpec([None, None], tf.int64)])
    def serve(self, ids):
      weighted = tf.sparse.map_values(lambda v: tf.gather(self.weights, v), ids)
      return {'total': tf.sparse.reduce_sum(weighted, axis=1)}

  module = Module()
  src = str(tmp_path / 'module')
  tf.saved_model.save(module, src, signatures={'serving_default': module.serve})
  reference = loaders.load_saved_model(src)
  maker = inputs.InputMaker(reference, seed=0)
  assert maker.trace('serving_default_ids_1:0').bound == 3
  new = loaders.load_saved_model(_redumped(src, tmp_path))
  # The flattened inputs are not one sparse tensor to the generator: an npz holds them.
  npz = str(tmp_path / 'ids.npz')
  inputs.save_npz(npz, {'ids': np.array([[0, 0], [0, 1], [2, 0]], np.int64),
                        'ids_1': np.array([2, 1, 0], np.int64),
                        'ids_2': np.array([3, 2], np.int64)})
  passed, results, report = _check(reference, new, inputs=npz)
  assert passed, report
  got = new.run('serving_default', inputs.inputs_from_npz(npz, new.signatures)['serving_default'])
  np.testing.assert_array_equal(got['total'], [6.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------
# Strings byte for byte; a reference that cannot run


@pytest.fixture(scope='module')
def echo_model(tmp_path_factory):
  """A TF1 SavedModel whose `length` output is each string's length in bytes."""
  path = str(tmp_path_factory.mktemp('echo') / 'model')
  graph = tf.Graph()
  with graph.as_default():
    text = tf1.placeholder(tf.string, [None], name='text')
    length = tf.strings.length(text, name='length')
    with tf1.Session() as sess:
      builder = tf1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': tf1.saved_model.predict_signature_def({'text': text},
                                                                   {'length': length})})
      builder.save()
  return path


def test_npz_strings_arrive_byte_for_byte(echo_model, tmp_path):
  example = tf.train.Example(features=tf.train.Features(feature={
      'x': tf.train.Feature(float_list=tf.train.FloatList(value=[0.0]))})).SerializeToString()
  assert example.endswith(b'\x00')  # a float 0.0 last: what fixed-width bytes lose
  strings = np.array([example, b'ab', b'\x00\x00'], dtype=object)
  model = loaders.load_saved_model(echo_model)

  lossy = str(tmp_path / 'lossy.npz')
  np.savez(lossy, text=strings.astype('S'))
  with pytest.raises(errors.UserError) as e:
    inputs.inputs_from_npz(lossy, model.signatures)
  message = str(e.value)
  assert "array 'text' of %s" % lossy in message and 'text.bytes' in message
  assert '\n' not in message

  lossless = str(tmp_path / 'lossless.npz')
  inputs.save_npz(lossless, {'text': strings})
  feeds = inputs.inputs_from_npz(lossless, model.signatures)['serving_default']
  assert feeds['text'].tolist() == strings.tolist()
  np.testing.assert_array_equal(model.run('serving_default', feeds)['length'],
                                [len(example), 2, 2])
  # Fixed-width bytes all as wide as the array are complete: taken as they are.
  even = str(tmp_path / 'even.npz')
  np.savez(even, text=np.array([b'abc', b'xyz']))
  assert inputs.inputs_from_npz(even, model.signatures)['serving_default']['text'].tolist() == [
      b'abc', b'xyz']


def test_reference_that_cannot_run_exits_3(embedding_model, tmp_path, capsys):
  """Ids past the embedding's 100 rows: the reference itself fails, which says nothing of the
  new model: exit 3 with one line, not 1 ("models differ")."""
  reference = loaders.load_saved_model(embedding_model)
  npz = str(tmp_path / 'bad.npz')
  np.savez(npz, item_id=np.array([[5], [100000]], np.int64),
           price=np.ones((2, 1), np.float32))
  with pytest.raises(errors.ReferenceFailed) as e:
    _check(reference, reference, inputs=npz)
  assert embedding_model in str(e.value) and 'item_id[2, 1]' in str(e.value)
  code, stderr = run_main(optimize_from_pb_test, [
      '--saved_model_dir=%s' % embedding_model, '--inputs=%s' % npz, '--batch_sizes=0',
      '--reference_saved_model_dir=%s' % embedding_model], capsys)
  lines = [l for l in stderr.splitlines() if not (l[:1] == 'I' and l[1:5].isdigit())]
  assert code == 3, stderr
  assert len(lines) == 1 and lines[0].startswith('optimize_from_pb_test.py: error: '), lines
