"""SavedModel -> frozen GraphDef: variables become constants, tables keep their contents."""

import dataclasses
import re
from typing import List

from absl import logging
import tensorflow as tf

from tensorflow.core.protobuf import meta_graph_pb2

import saved_model_io
import tables
import utils

tf1 = tf.compat.v1

# Ops that change a variable or a table. A signature that runs one of them means something
# different once frozen (a counter that no longer counts), so it is refused, not silently baked.
_WRITE_OPS = frozenset({
    'Assign', 'AssignAdd', 'AssignSub', 'AssignVariableOp', 'AssignAddVariableOp',
    'AssignSubVariableOp', 'CountUpTo', 'ResourceCountUpTo', 'LookupTableInsert',
    'LookupTableInsertV2', 'LookupTableImport', 'LookupTableImportV2', 'LookupTableRemoveV2',
    'InitializeTable', 'InitializeTableV2', 'InitializeTableFromTextFile',
    'InitializeTableFromTextFileV2', 'InitializeTableFromDataset', 'DestroyResourceOp',
})
_WRITE_OP_PATTERN = re.compile(r'^(Resource)?(Sparse)?(Apply|Scatter|StridedSliceAssign)')
# Ops a state handle may pass through on its way to the op that writes it.
_PASS_THROUGH = frozenset({'Identity', 'RefIdentity', 'Enter', 'RefEnter', 'Switch',
                           'RefSwitch'})


def is_write_op(op_type):
  return op_type in _WRITE_OPS or bool(_WRITE_OP_PATTERN.match(op_type))


@dataclasses.dataclass
class FreezeReport:
  """What freezing did, for logging and tests."""
  variables: List[str]
  tables: List[tables.TableContents]
  nodes_before: int
  nodes_after: int


def _state_behind(nodes_by_name, name):
  """Follows a handle or ref through Identity-like ops to the variable or table node."""
  seen = set()
  while name in nodes_by_name and name not in seen:
    seen.add(name)
    node = nodes_by_name[name]
    if node.op not in _PASS_THROUGH or not node.input:
      return node.name
    name = saved_model_io.node_name(node.input[0])
  return name


def check_read_only(graph_def, signatures, where):
  """Refuses signatures whose outputs need an op that writes a variable or table.

  Raises:
    utils.UserError: naming the signature, the state it writes and the op.
  """
  nodes_by_name = {n.name: n for n in graph_def.node}
  for key, sig in signatures.items():
    outputs = saved_model_io.signature_output_nodes({key: sig})
    needed = tf1.graph_util.extract_sub_graph(graph_def, outputs)
    for node in needed.node:
      if is_write_op(node.op):
        state = (_state_behind(nodes_by_name, saved_model_io.node_name(node.input[0]))
                 if node.input else node.name)
        raise utils.UserError(
            'signature %r of %s writes %r (op %s, %s): a stateful signature cannot be frozen; '
            'choose others with --signature_def' % (key, where, state, node.name, node.op))


def frozen_signatures(signatures):
  """Signature copies whose ref dtypes (a VariableV2 fetched as output) become plain dtypes."""
  out = {}
  for key, sig in signatures.items():
    copy = meta_graph_pb2.SignatureDef()
    copy.CopyFrom(sig)
    for info in list(copy.inputs.values()) + list(copy.outputs.values()):
      info.dtype = saved_model_io.base_dtype(info.dtype)
    out[key] = copy
  return out


def freeze_session(session, graph_def, signatures, tags):
  """Freezes what `signatures` need from a live session holding the trained state.

  Args:
    session: Session with variables restored and tables filled.
    graph_def: the session graph's GraphDef (devices cleared).
    signatures: signature key -> SignatureDef to keep.
    tags: MetaGraph tags to record.

  Returns:
    (saved_model_io.FrozenModel, FreezeReport).

  Raises:
    utils.UserError: a variable cannot be read (uninitialised, missing from the checkpoint).
  """
  outputs = saved_model_io.signature_output_nodes(signatures)
  needed = tf1.graph_util.extract_sub_graph(graph_def, outputs)
  variables = sorted(n.name for n in needed.node
                     if n.op in ('VariableV2', 'Variable', 'VarHandleOp'))
  try:
    frozen = tf1.graph_util.convert_variables_to_constants(session, graph_def, outputs)
  except tf.errors.OpError as e:
    raise utils.UserError('cannot read the variables: %s' % utils.tf_error_message(e)) from e
  try:
    init_op, contents = tables.add_table_fill(frozen, session)
  except tf.errors.OpError as e:
    raise utils.UserError('cannot export a table: %s' % utils.tf_error_message(e)) from e
  model = saved_model_io.FrozenModel(
      graph_def=frozen, signatures=frozen_signatures(signatures), tags=list(tags),
      table_init_op=init_op)
  report = FreezeReport(variables=variables, tables=contents,
                        nodes_before=len(graph_def.node), nodes_after=len(frozen.node))
  return model, report


def freeze_saved_model(export_dir, tags=('serve',), signature_names=None):
  """Loads a TF1 SavedModel and freezes the chosen signatures.

  Args:
    export_dir: SavedModel directory.
    tags: tag set of the MetaGraph to freeze.
    signature_names: signature keys to keep; all when empty.

  Returns:
    (saved_model_io.FrozenModel, FreezeReport).

  Raises:
    utils.UserError: for anything wrong with the input, naming the path or signature.
  """
  proto = saved_model_io.read_saved_model_proto(export_dir)
  meta_graph = saved_model_io.select_meta_graph(proto, tags, export_dir)
  import tf2_freezing  # pylint: disable=g-import-not-at-top  (it imports this module)
  if tf2_freezing.is_object_based(meta_graph):  # written by tf.saved_model.save
    return tf2_freezing.freeze_saved_model(export_dir, tags, signature_names)
  signatures = saved_model_io.select_signatures(meta_graph, signature_names, export_dir)
  saved_model_io.check_tensors_exist(meta_graph.graph_def, signatures, export_dir)
  check_read_only(meta_graph.graph_def, signatures, export_dir)
  graph = tf.Graph()
  with tf1.Session(graph=graph) as session:
    try:
      # Devices are cleared: a model exported from a parameter-server graph keeps
      # /job:ps/task:k placements that do not exist on this machine.
      tf1.saved_model.loader.load(session, list(tags), export_dir, clear_devices=True)
    except (tf.errors.OpError, ValueError, RuntimeError, KeyError) as e:
      raise utils.UserError('cannot load SavedModel %s: %s'
                            % (export_dir, utils.tf_error_message(e))) from e
    graph_def = graph.as_graph_def()
    model, report = freeze_session(session, graph_def, signatures, tags)
  logging.info('froze %d variables and %d tables (%s of table contents); %d nodes -> %d',
               len(report.variables), len(report.tables),
               utils.human_bytes(sum(t.nbytes for t in report.tables)),
               report.nodes_before, report.nodes_after)
  return model, report
