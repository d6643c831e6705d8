"""Models loaded the way their servers load them, run signature by signature and timed.

A SavedModel loads as TF Serving loads it (restore, then its init op), except one written by
tf.saved_model.save, which runs as tf.saved_model.load runs it; a frozen GraphDef is imported
and its tables filled (restored first from the checkpoint beside it, if it keeps variables).
"""

import time


from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model

tf1 = lean_tf.tf1


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

  def _callable(self, sig_key, input_keys):
    key = (sig_key, tuple(input_keys))
    if key not in self._callables:
      sig = self.signatures[sig_key]
      out_keys = sorted(sig.outputs)
      fetches = [self.graph.get_tensor_by_name(sig.outputs[k].name) for k in out_keys]
      feeds = [self.graph.get_tensor_by_name(sig.inputs[k].name) for k in input_keys]
      self._callables[key] = (out_keys, self.session.make_callable(fetches, feeds))
    return self._callables[key]

  def run(self, sig_key, feeds):
    """Runs signature `sig_key` on {input key: array}; returns {output key: array}."""
    input_keys = sorted(feeds)
    out_keys, fn = self._callable(sig_key, input_keys)
    values = fn(*[feeds[k] for k in input_keys])
    return dict(zip(out_keys, values))

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
    tf1.saved_model.loader.load(session, list(tags), export_dir, clear_devices=True)
  except (tf.errors.OpError, ValueError, RuntimeError, KeyError) as e:
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
    frozen = frozen_graph.frozen_from_graph_def(
        frozen_graph.read_graph_def(path, lean_tf.registered_op_defs()), path)
  if frozen is None:
    raise errors.UserError('%s has no freezer_metadata node: it was not written by freezer.py '
                          'or optimize_from_pb.py, so its signatures are unknown' % path)
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(frozen.graph_def, name='')
    except (ValueError, tf.errors.OpError) as e:
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

  def run(self, sig_key, feeds):
    """Runs signature `sig_key` on {input key: array}; returns {output key: array}."""
    inputs = self.signatures[sig_key].inputs
    try:
      args = {k: tf.constant(v, dtype=tf.as_dtype(graphs.base_dtype(inputs[k].dtype)))
              for k, v in feeds.items()}
      outputs = self._loaded.signatures[sig_key](**args)
    except (TypeError, KeyError) as e:
      raise ValueError(str(e)) from e
    except tf.errors.OpError as e:
      # Eager errors carry a '<stack traces unavailable>' line where graph errors have none.
      raise ValueError('\n'.join(l for l in e.message.splitlines()
                                 if l.strip() != '<stack traces unavailable>')) from e
    return {k: v.numpy() for k, v in outputs.items()}

  def close(self):
    self._loaded = None
