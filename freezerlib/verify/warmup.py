"""TF Serving's warmup requests: assets.extra/tf_serving_warmup_requests.

TF Serving replays this file when it loads a model (at most 1000 records), so the first real
requests do not pay for lazy initialisation. It is a TFRecord file of `PredictionLog`
records, each a Predict request for one signature. The inputs come from the same generator
optimize_from_pb_test.py uses (ids from the tables' own keys, and unseen ones), or from the
user's .npz or TFRecord file.
"""

import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.verify import inputs as inputs_lib
from freezerlib.verify import loaders

MAX_REQUESTS = 1000  # TF Serving reads no more (saved_model_warmup_util's kMaxNumRecords)
FILE_NAME = 'tf_serving_warmup_requests'
BATCH_SIZES = (1, 8, 64)  # generated requests cycle through these


def requests(model, num_requests, feeds_by_signature=None, seed=0):
  """`num_requests` PredictRequests, one signature after another.

  Args:
    model: a loaded verify.loaders model.
    num_requests: how many.
    feeds_by_signature: {signature: {input: array}} to use (every request of a signature
      gets them); None: generated, batch sizes cycling through BATCH_SIZES.
    seed: seed of the generated inputs.

  Returns:
    list of predict_pb2.PredictRequest.

  Raises:
    errors.UserError: a sparse or ragged signature input, which a PredictRequest cannot carry.
  """
  keys = sorted(model.signatures)
  for key in keys:
    for name, info in sorted(model.signatures[key].inputs.items()):
      if info.WhichOneof('encoding') != 'name':
        # TF Serving's Predict feeds each input by its tensor name; a sparse or ragged one has
        # none (its components do).
        raise errors.UserError(
            'signature %r input %r is %s: a PredictRequest cannot carry it, so TF Serving '
            'cannot be warmed up (nor called through Predict) with it; serve serialized '
            'tf.Example instead (--serving_input=examples)'
            % (key, name, 'sparse' if info.WhichOneof('encoding') == 'coo_sparse'
               else 'composite'))
  maker = inputs_lib.InputMaker(model, seed)
  out = []
  for i in range(num_requests):
    key = keys[i % len(keys)]
    if feeds_by_signature is not None:
      feeds = feeds_by_signature[key]
    else:
      feeds = maker.make(key, BATCH_SIZES[(i // len(keys)) % len(BATCH_SIZES)])
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(signature_name=key))
    infos = model.signatures[key].inputs
    for name, value in feeds.items():
      dtype = tf.as_dtype(graphs.base_dtype(infos[name].dtype))
      request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    out.append(request)
  return out


def write(saved_model_dir, num_requests, input_files=None, seed=0, tags=('serve',)):
  """Writes SAVED_MODEL_DIR/assets.extra/tf_serving_warmup_requests.

  The SavedModel is loaded to generate the inputs (from its tables) and every request is run
  on it once before the file is written, so a request that cannot run is caught here, not in
  TF Serving.

  Args:
    saved_model_dir: a complete SavedModel (not yet in place, typically).
    num_requests: 1..MAX_REQUESTS.
    input_files: [an .npz file] or TFRecord files of tf.Example to take the inputs from
      (None: generated).
    seed: seed of the generated inputs.
    tags: the MetaGraph's tags.

  Returns:
    The number of records written.

  Raises:
    errors.UserError: `num_requests` out of range, unusable inputs, or a request the model
      cannot run.
  """
  if not 1 <= num_requests <= MAX_REQUESTS:
    raise errors.UserError('--warmup=%d: TF Serving reads 1 to %d warmup requests'
                           % (num_requests, MAX_REQUESTS))
  model = loaders.load_saved_model(saved_model_dir, tags)
  try:
    feeds = None
    if input_files:
      input_files = list(input_files)
      keys = sorted(model.signatures)
      if len(input_files) == 1 and input_files[0].endswith('.npz'):
        feeds = inputs_lib.inputs_from_npz(input_files[0],
                                           {k: model.signatures[k] for k in keys})
      else:
        feeds = inputs_lib.inputs_from_tfrecords(input_files, model, 64)
    built = requests(model, num_requests, feeds, seed)
    tried = set()
    for request in built:
      key = request.model_spec.signature_name
      sig = (key, tuple(sorted((k, tuple(d.size for d in v.tensor_shape.dim))
                               for k, v in request.inputs.items())))
      if sig in tried:
        continue
      tried.add(sig)
      feeds_now = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
      try:
        model.run(key, feeds_now)
      except (tf.errors.OpError, ValueError) as e:
        raise errors.UserError('warmup request for signature %r cannot run on %s: %s' % (
            key, saved_model_dir, errors.tf_error_message(e))) from e
  finally:
    model.close()
  directory = files.join(saved_model_dir, 'assets.extra')
  files.makedirs(directory)
  with tf.io.TFRecordWriter(files.join(directory, FILE_NAME)) as writer:
    for request in built:
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  return len(built)
