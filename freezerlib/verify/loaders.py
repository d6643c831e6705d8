"""Models loaded the way their servers load them, run signature by signature and timed.

A SavedModel loads as TF Serving loads it (restore, then its init op), except one written by
tf.saved_model.save, which runs as tf.saved_model.load runs it; a frozen GraphDef is imported
and its tables filled (restored first from the checkpoint beside it, if it keeps variables).
"""

import time

import numpy as np

from freezerlib.analysis import stateful
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.transforms import tables

tf1 = lean_tf.tf1


def sparse_value(indices, values, dense_shape):
  """A sparse input or output value: tf.compat.v1.SparseTensorValue of numpy arrays."""
  return tf1.SparseTensorValue(np.asarray(indices, np.int64), np.asarray(values),
                               np.asarray(dense_shape, np.int64))


def ragged_value(values, *row_splits):
  """A ragged input or output value: tf.compat.v1.ragged.RaggedTensorValue of numpy arrays,
  outermost row splits first."""
  value = np.asarray(values)
  for splits in reversed(row_splits):
    value = tf1.ragged.RaggedTensorValue(value, np.asarray(splits))
  return value


def _ragged_parts(value):
  """[flat values, outer row splits, ..., inner row splits] of a RaggedTensor(Value)."""
  if isinstance(value, tf.RaggedTensor):
    return [np.asarray(p) for p in tf.nest.flatten(value, expand_composites=True)]
  splits = []
  while isinstance(value, tf1.ragged.RaggedTensorValue):
    splits.append(np.asarray(value.row_splits))
    value = value.values
  return [np.asarray(value)] + splits


def feed_arrays(info, value):
  """[(tensor name, array)] that feed signature input `info` with `value`.

  A dense input takes an array. A coo_sparse one takes a SparseTensorValue (or
  tf.SparseTensor): its indices, values and dense shape feed the three tensors. A composite one
  (a RaggedTensor) takes a RaggedTensorValue or tf.RaggedTensor: flat values, then row
  splits, outermost first (the order TensorFlow flattens it in), each cast to the dtype the
  signature states (a reader's RaggedFeature makes int32 row splits).

  Raises:
    ValueError: a value of the wrong kind for the input.
  """
  encoding = info.WhichOneof('encoding')
  if encoding == 'name':
    if isinstance(value, (tf1.SparseTensorValue, tf.SparseTensor, tf.RaggedTensor,
                          tf1.ragged.RaggedTensorValue)):
      raise ValueError('a dense input is fed a %s' % type(value).__name__)
    return [(info.name, value)]
  if encoding == 'coo_sparse':
    if not hasattr(value, 'indices') or not hasattr(value, 'dense_shape'):
      raise ValueError('a sparse input is fed a %s, not a SparseTensorValue'
                       % type(value).__name__)
    coo = info.coo_sparse
    return [(coo.indices_tensor_name, np.asarray(value.indices, np.int64)),
            (coo.values_tensor_name, np.asarray(value.values)),
            (coo.dense_shape_tensor_name, np.asarray(value.dense_shape, np.int64))]
  components = list(info.composite_tensor.components)
  if not isinstance(value, (tf.RaggedTensor, tf1.ragged.RaggedTensorValue)):
    raise ValueError('a composite input is fed a %s, not a RaggedTensorValue'
                     % type(value).__name__)
  parts = _ragged_parts(value)
  if len(parts) != len(components):
    raise ValueError('a composite input of %d components is fed %d'
                     % (len(components), len(parts)))
  return [(c.name, p.astype(tf.as_dtype(c.dtype).as_numpy_dtype) if i else p)
          for i, (c, p) in enumerate(zip(components, parts))]


def output_value(info, arrays):
  """The value of signature output `info` from the arrays of its tensors (feed_arrays' order):
  an array, a SparseTensorValue or a RaggedTensorValue."""
  encoding = info.WhichOneof('encoding')
  if encoding == 'name':
    return arrays[0]
  if encoding == 'coo_sparse':
    return sparse_value(*arrays)
  return ragged_value(arrays[0], *arrays[1:])


def output_tensors(info):
  """The tensor names of signature output `info`, in output_value's order."""
  encoding = info.WhichOneof('encoding')
  if encoding == 'coo_sparse':
    coo = info.coo_sparse
    return [coo.indices_tensor_name, coo.values_tensor_name, coo.dense_shape_tensor_name]
  return graphs.info_tensors(info)


class Model:
  """A loaded model in its own graph and session, run signature by signature."""

  def __init__(self, name, graph, session, signatures, load_seconds, size_bytes):
    self.name = name
    self.graph = graph
    self.session = session
    self.signatures = signatures
    self.load_seconds = load_seconds
    self.size_bytes = size_bytes
    self.graph_def = graph.as_graph_def()
    self._callables = {}

  @property
  def nodes(self):
    return len(self.graph_def.node)

  def table_keys(self, node):
    """The keys table `node` (a NodeDef of the graph) holds once loaded."""
    return tables.export_table(self.session, node).keys

  def _callable(self, sig_key, feed_names):
    key = (sig_key, tuple(feed_names))
    if key not in self._callables:
      sig = self.signatures[sig_key]
      out_keys = sorted(sig.outputs)
      names = [output_tensors(sig.outputs[k]) for k in out_keys]
      fetches = [self.graph.get_tensor_by_name(n) for group in names for n in group]
      feeds = [self.graph.get_tensor_by_name(n) for n in feed_names]
      self._callables[key] = (out_keys, [len(g) for g in names],
                              self.session.make_callable(fetches, feeds))
    return self._callables[key]

  def run(self, sig_key, feeds):
    """Runs signature `sig_key` on {input key: value}; returns {output key: value}.

    A value is an array, or for a sparse or ragged input or output a SparseTensorValue or
    RaggedTensorValue (see feed_arrays).

    Raises:
      ValueError: an input key the signature does not have, or a value of the wrong kind.
      tf.errors.OpError: the model fails on the inputs.
    """
    sig = self.signatures[sig_key]
    pairs = []
    for key in sorted(feeds):
      if key not in sig.inputs:
        raise ValueError('signature %r has no input %r' % (sig_key, key))
      pairs.extend(feed_arrays(sig.inputs[key], feeds[key]))
    out_keys, sizes, fn = self._callable(sig_key, [n for n, _ in pairs])
    values = fn(*[v for _, v in pairs])
    out, pos = {}, 0
    for key, size in zip(out_keys, sizes):
      out[key] = output_value(sig.outputs[key], values[pos:pos + size])
      pos += size
    return out

  def close(self):
    self.session.close()


def load_saved_model(export_dir, tags=('serve',)):
  """Loads a SavedModel as TF Serving would (restore, then its init op); times it.

  Raises:
    errors.UserError: the directory is not a loadable SavedModel.
  """
  meta_graph = saved_model.read_meta_graph(export_dir, tags)
  if saved_model.is_object_based(meta_graph):  # tf.saved_model.save: run it as TF2 loads it
    return LoadedModel(export_dir, meta_graph, tags)
  signatures = {k: v for k, v in meta_graph.signature_def.items()
                if k != saved_model.INIT_OP_SIGNATURE_KEY}
  graph = tf.Graph()
  session = tf1.Session(graph=graph)
  start = time.perf_counter()
  try:
    with files.local_copy(export_dir) as local_dir:  # staged from an object store
      tf1.saved_model.loader.load(session, list(tags), local_dir, clear_devices=True)
  except (tf.errors.OpError, ValueError, TypeError, RuntimeError, KeyError) as e:
    session.close()
    raise errors.UserError('cannot load SavedModel %s: %s'
                          % (export_dir, errors.tf_error_message(e))) from e
  seconds = time.perf_counter() - start
  return Model(export_dir, graph, session, signatures, seconds,
               saved_model.directory_size(export_dir))


def load_frozen_graph(path, frozen=None):
  """Loads a GraphDef written by freezer.py or optimize_from_pb.py and fills its tables.

  A graph that keeps variables (freezer.py --keep_as_variables) is restored from the checkpoint
  beside it first, as a SavedModel loader restores variables/.

  Raises:
    errors.UserError: the file is not such a GraphDef, or its checkpoint is missing or another.
  """
  start = time.perf_counter()
  if frozen is None:
    op_defs = lean_tf.registered_op_defs()
    frozen = frozen_graph.frozen_from_graph_def(
        frozen_graph.read_graph_def(path, op_defs), path, op_defs=op_defs)
  if frozen is None:
    raise errors.UserError('%s has no freezer_metadata node: it was not written by freezer.py '
                          'or optimize_from_pb.py, so its signatures are unknown' % path)
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(frozen.graph_def, name='')
    except (ValueError, TypeError, tf.errors.OpError) as e:
      raise errors.UserError('cannot import %s: %s' % (path, errors.tf_error_message(e))) from e
  prefix = frozen_graph.checkpoint_of(frozen, path) if frozen.saver_def else None
  session = tf1.Session(graph=graph)
  if prefix:
    restore(session, frozen, prefix)
  if frozen.table_init_op:
    session.run(graph.get_operation_by_name(frozen.table_init_op))
  seconds = time.perf_counter() - start
  size = saved_model.directory_size(path)
  if prefix:
    size += saved_model.directory_size(files.parent_dir(prefix))
  return Model(path, graph, session, frozen.signatures, seconds, size)


def restore(session, frozen, prefix):
  """Runs the saver of `frozen` (imported into `session`'s graph) on checkpoint `prefix`.

  Raises:
    errors.UserError: the restore fails.
  """
  try:
    if files.is_object_store(prefix):  # TensorFlow cannot open it: a local copy of its dir
      with files.local_copy(files.parent_dir(prefix)) as local_dir:
        session.run(frozen.saver_def.restore_op_name,
                    {frozen.saver_def.filename_tensor_name:
                     files.join(local_dir, files.basename(prefix))})
    else:
      session.run(frozen.saver_def.restore_op_name,
                  {frozen.saver_def.filename_tensor_name: prefix})
  except tf.errors.OpError as e:
    raise errors.UserError('cannot restore %s: %s' % (prefix, errors.tf_error_message(e))) from e


class LoadedModel:
  """A TF2 SavedModel as tf.saved_model.load restores it, with comparison.Model's interface.

  The reference for a TF2 SavedModel is what tf.saved_model.load computes, not a TF1 session
  over its MetaGraph: for a Keras 3 model saved with tf.saved_model.save the two differ (the
  session's variables are never restored). `graph` and `graph_def` are the MetaGraph's, for
  input dtypes and shapes; nothing runs in them.
  """

  session = None

  def __init__(self, export_dir, meta_graph, tags=('serve',)):
    start = time.perf_counter()
    self._loaded = saved_model.load_objects(export_dir, tags)
    self.load_seconds = time.perf_counter() - start
    self.name = export_dir
    self._meta_graph = meta_graph
    self._captured = None
    self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                       if k != saved_model.INIT_OP_SIGNATURE_KEY}
    self.graph_def = meta_graph.graph_def
    self.graph = tf.Graph()
    with self.graph.as_default():
      try:
        tf.graph_util.import_graph_def(self.graph_def, name='')
      except (ValueError, tf.errors.OpError) as e:
        raise errors.UserError('cannot import the graph of %s: %s'
                               % (export_dir, errors.tf_error_message(e))) from e
    self.size_bytes = saved_model.directory_size(export_dir)

  @property
  def nodes(self):
    return len(self.graph_def.node)

  def table_keys(self, node):
    """The keys table `node` (a top-level NodeDef of the MetaGraph) holds as loaded: its
    resource is found among the captures of a signature's function, which the call node in
    the graph passes as its last inputs, in the same order."""
    handle = self._handles().get(node.name)
    if handle is None:
      return np.zeros(0, tf.as_dtype(node.attr['key_dtype'].type).as_numpy_dtype)
    keys, _ = tf.raw_ops.LookupTableExportV2(
        table_handle=handle, Tkeys=tf.as_dtype(node.attr['key_dtype'].type),
        Tvalues=tf.as_dtype(node.attr['value_dtype'].type))
    return keys.numpy()

  def _handles(self):
    if self._captured is None:
      self._captured = {}
      functions = stateful.signature_functions(self._meta_graph)
      for key in self.signatures:
        try:
          captured = list(self._loaded.signatures[key].captured_inputs)
        except KeyError:
          continue
        for node in self.graph_def.node:
          if node.op in stateful.CALL_OPS and node.attr['f'].func.name == functions.get(key):
            inputs = graphs.data_inputs(node)
            if len(captured) <= len(inputs):
              for name, value in zip(inputs[len(inputs) - len(captured):], captured):
                self._captured.setdefault(graphs.node_name(name), value)
    return self._captured

  def run(self, sig_key, feeds):
    """Runs signature `sig_key` on {input key: value}; returns {output key: array}.

    tf.saved_model.load takes a sparse input KEY as KEY_indices, KEY_values and
    KEY_dense_shape, a composite one as KEY_component_0, KEY_component_1, ...
    """
    inputs = self.signatures[sig_key].inputs
    try:
      args = {}
      for key, value in feeds.items():
        info = inputs[key]
        arrays = [a for _, a in feed_arrays(info, value)]
        encoding = info.WhichOneof('encoding')
        if encoding == 'name':
          args[key] = tf.constant(arrays[0],
                                  dtype=tf.as_dtype(graphs.base_dtype(info.dtype)))
        elif encoding == 'coo_sparse':
          for suffix, array in zip(('indices', 'values', 'dense_shape'), arrays):
            args['%s_%s' % (key, suffix)] = tf.constant(array)
        else:
          for i, array in enumerate(arrays):
            args['%s_component_%d' % (key, i)] = tf.constant(array)
      outputs = self._loaded.signatures[sig_key](**args)
    except (TypeError, KeyError) as e:
      raise ValueError(str(e)) from e
    except tf.errors.OpError as e:
      # Eager errors carry a '<stack traces unavailable>' line where graph errors have none.
      raise ValueError('\n'.join(l for l in e.message.splitlines()
                                 if l.strip() != '<stack traces unavailable>')) from e
    return {k: (sparse_value(v.indices, v.values, v.dense_shape)
                if isinstance(v, tf.SparseTensor) else v.numpy()) for k, v in outputs.items()}

  def close(self):
    self._loaded = None
