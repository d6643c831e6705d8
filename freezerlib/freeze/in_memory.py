"""The in-memory freezer: load the SavedModel in a session, then TensorFlow's converter.

For TF1 SavedModels the streaming freezer cannot take (variables read through control flow,
static tables whose contents only their init op makes). Variables become constants through
`convert_variables_to_constants`; every table the outputs read is exported from the session
and re-filled by constants in the op `freezer/init_tables` (transforms.tables), which
TensorFlow's converter does not do.
"""

from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.transforms import tables

_VARIABLE_OPS = ('VariableV2', 'Variable', 'VarHandleOp')


def freeze_session(session, graph_def, signatures, tags):
  """Freezes what `signatures` need from a live session holding the trained state.

  Args:
    session: Session with variables restored and tables filled.
    graph_def: the session graph's GraphDef (devices cleared).
    signatures: signature key -> SignatureDef to keep.
    tags: MetaGraph tags to record.

  Returns:
    (frozen_graph.FrozenModel, names of the variables frozen, list of tables.TableContents).

  Raises:
    errors.UserError: a variable cannot be read (uninitialised, missing from the checkpoint).
  """
  tf = lean_tf.tensorflow
  outputs = saved_model.signature_output_nodes(signatures)
  needed = graphs.reachable(graph_def, outputs)
  variables = sorted(n.name for n in graph_def.node
                     if n.name in needed and n.op in _VARIABLE_OPS)
  try:
    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(session, graph_def, outputs)
  except tf.errors.OpError as e:
    raise errors.UserError('cannot read the variables: %s' % errors.tf_error_message(e)) from e
  try:
    init_op, contents = tables.add_table_fill(frozen, session)
  except tf.errors.OpError as e:
    raise errors.UserError('cannot export a table: %s' % errors.tf_error_message(e)) from e
  model = frozen_graph.FrozenModel(
      graph_def=frozen, signatures=frozen_graph.frozen_signatures(signatures), tags=list(tags),
      table_init_op=init_op)
  return model, variables, contents


def freeze(export_dir, signatures, tags, transform=None):
  """Loads a TF1 SavedModel in a session and freezes `signatures`.

  Args:
    export_dir: SavedModel directory.
    signatures: signature key -> SignatureDef to keep (checked by the caller).
    tags: tag set of the MetaGraph to load.
    transform: None, or callable(GraphDef) -> (GraphDef, signatures) applied to the loaded
      graph before freezing (the --serving_input=examples front); its signatures replace
      `signatures`.

  Returns:
    As `freeze_session`.

  Raises:
    errors.UserError: the model does not load, or its state cannot be read.
  """
  tf = lean_tf.tensorflow
  tf1 = tf.compat.v1
  graph = tf.Graph()
  with tf1.Session(graph=graph) as session:
    try:
      # Devices are cleared: a model exported from a parameter-server graph keeps
      # /job:ps/task:k placements that do not exist on this machine.
      # TensorFlow reads only what it opens itself: a model on an object store is staged.
      with files.local_copy(export_dir) as local_dir:
        tf1.saved_model.loader.load(session, list(tags), local_dir, clear_devices=True)
    except (tf.errors.OpError, ValueError, TypeError, RuntimeError, KeyError) as e:
      raise errors.UserError('cannot load SavedModel %s: %s'
                             % (export_dir, errors.tf_error_message(e))) from e
    graph_def = graph.as_graph_def()
    if transform is not None:
      graph_def, signatures = transform(graph_def)
    return freeze_session(session, graph_def, signatures, tags)
