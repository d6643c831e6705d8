"""verify/warmup: TF Serving's warmup requests, generated or from a file, each tried first."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from freezerlib.core import errors
from freezerlib.verify import loaders
from freezerlib.verify import warmup
import small_graphs


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """small_graphs.stateful_model: signatures embeddings and serving_default, both fed ids."""
  return small_graphs.stateful_model(tmp_path_factory.mktemp('warmup') / 'm')


def test_requests_cycle_signatures_and_batch_sizes(model_dir):
  model = loaders.load_saved_model(model_dir)
  built = warmup.requests(model, 7)
  assert [r.model_spec.signature_name for r in built] == ['embeddings', 'serving_default'] * 3 + [
      'embeddings']
  assert [r.inputs['ids'].tensor_shape.dim[0].size for r in built] == [1, 1, 8, 8, 64, 64, 1]
  assert {r.inputs['ids'].dtype for r in built} == {tf.int64.as_datatype_enum}
  given = {'embeddings': {'ids': np.array([1, 2])}, 'serving_default': {'ids': np.array([3])}}
  built = warmup.requests(model, 3, given)
  assert [tf.make_ndarray(r.inputs['ids']).tolist() for r in built] == [[1, 2], [3], [1, 2]]
  model.close()


def test_write_puts_them_where_tf_serving_reads_them(model_dir, tmp_path):
  assert warmup.write(model_dir, 5) == 5
  path = os.path.join(model_dir, 'assets.extra', warmup.FILE_NAME)
  logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(path)]
  assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
      'embeddings', 'serving_default'] * 2 + ['embeddings']
  np.savez(tmp_path / 'in.npz', ids=np.array([4, 5]))
  assert warmup.write(model_dir, 2, [str(tmp_path / 'in.npz')]) == 2
  logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(path)]
  assert [tf.make_ndarray(log.predict_log.request.inputs['ids']).tolist() for log in logs] == [
      [4, 5], [4, 5]]


def test_out_of_range_or_unrunnable_requests_are_refused(model_dir, tmp_path):
  for count in (0, 1001):
    with pytest.raises(errors.UserError, match='--warmup=%d: TF Serving reads 1 to 1000 warmup '
                                               'requests' % count):
      warmup.write(model_dir, count)
  np.savez(tmp_path / 'bad.npz', ids=np.array([[4.5]]))
  with pytest.raises(errors.UserError, match="warmup request for signature 'embeddings' cannot "
                                             'run on .*/m: '):
    warmup.write(model_dir, 3, [str(tmp_path / 'bad.npz')])
