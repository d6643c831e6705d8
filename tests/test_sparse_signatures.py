"""Sparse signature tensors: a SparseTensor input whose components are already placeholders,
and a SparseTensor output, through every path and every loader."""

import io

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import saved_model
from freezerlib.verify import compare
from freezerlib.verify import loaders
from freezerlib.verify import warmup
import real_models


@pytest.fixture(scope='module')
def sparse_model(tmp_path_factory):
  return real_models.sparse_weights(str(tmp_path_factory.mktemp('sparse_weights')))


@pytest.fixture(scope='module')
def words():
  return loaders.sparse_value([[0, 0], [0, 1], [2, 0]], np.array([b'a', b'b', b'zz'], object),
                              [3, 2])


def _signature(export_dir):
  meta_graph = saved_model.select_meta_graph(saved_model.read_saved_model_proto(export_dir),
                                             ['serve'], export_dir)
  return meta_graph.signature_def['serving_default']


@pytest.mark.parametrize('path', ['freeze', 'checkpoint'])
def test_sparse_output_and_placeholder_input(path, sparse_model, words, tmp_path, capi):
  out = str(tmp_path / 'serving')
  if path == 'freeze':
    frozen = str(tmp_path / 'frozen.pb')
    assert freeze.graph_from_saved_model(sparse_model['saved_model'], frozen).freezer == (
        'streaming')
    from_frozen.saved_model_from_frozen_graph(frozen, out)
  else:
    from_checkpoint.saved_model_from_checkpoint(sparse_model['checkpoint'], out,
                                                saved_model_dir=sparse_model['saved_model'])
  sig = _signature(out)
  assert sig.inputs['words'].coo_sparse.values_tensor_name == 'words/values:0'
  assert sig.outputs['weights'].WhichOneof('encoding') == 'coo_sparse'
  reference = loaders.load_saved_model(sparse_model['saved_model'])
  expected = reference.run('serving_default', {'words': words})
  assert isinstance(expected['weights'], tf.compat.v1.SparseTensorValue)
  np.testing.assert_array_equal(expected['weights'].indices, words.indices)
  for got in (loaders.load_saved_model(out).run('serving_default', {'words': words}),
              capi_runner.run_signatures(capi, out, {'serving_default': {'words': words}})[
                  'serving_default']):
    for key in ('weights', 'total'):
      max_abs, _, passed, detail = compare.compare_arrays(expected[key], got[key], 0, 0)
      assert passed, (key, max_abs, detail)
  # tf.saved_model.load takes the sparse input as words_indices, words_values and
  # words_dense_shape, and returns the sparse output as a SparseTensor.
  tf2 = tf.saved_model.load(out).signatures['serving_default'](
      words_indices=tf.constant(words.indices), words_values=tf.constant(words.values),
      words_dense_shape=tf.constant(words.dense_shape))
  assert isinstance(tf2['weights'], tf.SparseTensor)
  np.testing.assert_array_equal(tf2['weights'].values.numpy(), expected['weights'].values)
  passed, results = compare.check(reference, loaders.load_saved_model(out), batch_sizes=(),
                                  out=io.StringIO())
  assert passed and len(results) == 2, results
  # TF Serving's Predict feeds an input by its TensorInfo's name, which a sparse one lacks.
  with pytest.raises(errors.UserError, match="input 'words' is sparse"):
    warmup.write(out, 2)
