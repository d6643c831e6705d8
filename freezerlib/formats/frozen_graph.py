"""Frozen graphs: a GraphDef file, the metadata it carries, and the checkpoint beside it.

A frozen graph written by freezer.py is a plain GraphDef that any TensorFlow tool loads. What
the next step needs (signatures, tags, the op that fills the tables) travels inside it, in one
string Const node named `freezer_metadata` that holds a serialized MetaGraphDef carrying only
that information. The node has no inputs or consumers, so it is inert for other tools and is
dropped by optimize_from_pb.py.

A graph frozen with `--keep_as_variables` keeps some variables and tables as state, restored
by a saver (recorded in the metadata) from a checkpoint beside the graph: for `DIR/frozen.pb`
it is `DIR/frozen.pb.variables/variables.{index,data-...}`. The metadata records its place
relative to the graph file and a digest of its index (which holds every tensor's CRC32C), so
a graph and a checkpoint that were not written together are told apart.
"""

import contextlib
import dataclasses
import hashlib
import time
from typing import Dict, List, Optional

from absl import logging
from google.protobuf import message as pb_message
from google.protobuf import text_format

from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import types_pb2
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import checkpoint_index
from freezerlib.formats import graph_check

METADATA_NODE = 'freezer_metadata'
TABLE_INIT_COLLECTION = 'freezer_table_init_op'
# With freezer.py --keep_as_variables: [checkpoint prefix relative to the graph's directory,
# sha256 of its index] (the saver itself travels in the metadata's saver_def).
VARIABLES_COLLECTION = 'freezer_variables'
PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf refuses to serialize or parse a bigger message

SUFFIX = '.variables'  # the checkpoint directory beside `frozen.pb` is `frozen.pb.variables`
PREFIX_NAME = 'variables'


@dataclasses.dataclass
class FrozenModel:
  """A frozen graph and what serving it needs.

  Attributes:
    graph_def: GraphDef with no variables; tables are filled by `table_init_op`.
    signatures: signature key -> SignatureDef, tensor names as in `graph_def`.
    tags: the tags of the MetaGraph it came from.
    table_init_op: name of the NoOp that fills the tables, or None when there are none.
    saver_def: with kept variables (freezer.py --keep_as_variables), the saver that restores
      them and the kept tables; else None.
    variables_prefix: the prefix of their checkpoint, relative to the graph file's directory.
    variables_digest: sha256 of that checkpoint's index, to tell it from another one.
  """
  graph_def: graph_pb2.GraphDef
  signatures: Dict[str, meta_graph_pb2.SignatureDef]
  tags: List[str]
  table_init_op: Optional[str] = None
  saver_def: Optional[object] = None  # a SaverDef
  variables_prefix: Optional[str] = None
  variables_digest: Optional[str] = None


def frozen_signatures(signatures):
  """Signature copies whose ref dtypes (a VariableV2 fetched as output) become plain dtypes."""
  out = {}
  for key, sig in signatures.items():
    copy = meta_graph_pb2.SignatureDef()
    copy.CopyFrom(sig)
    for info in list(copy.inputs.values()) + list(copy.outputs.values()):
      info.dtype = graphs.base_dtype(info.dtype)
    out[key] = copy
  return out


def check_protobuf_size(nbytes, message):
  """The one check against protobuf's 2 GB limit for a serialized message.

  Args:
    nbytes: the (estimated) size of the message.
    message: the error, with `{size}` where the size goes and `{limit}` where the limit is
      named, e.g. 'the graph for out.pb would be {size}, past {limit}'.

  Raises:
    errors.UserError: `nbytes` is past the limit.
  """
  if nbytes > PROTOBUF_LIMIT:
    raise errors.UserError(message.replace('{size}', units.human_bytes(nbytes)).replace(
        '{limit}', 'protobuf\'s 2 GB limit'))


def _metadata_node(frozen):
  meta = meta_graph_pb2.MetaGraphDef()
  meta.meta_info_def.tags.extend(frozen.tags)
  for key, sig in frozen.signatures.items():
    meta.signature_def[key].CopyFrom(sig)
  if frozen.table_init_op:
    meta.collection_def[TABLE_INIT_COLLECTION].node_list.value.append(frozen.table_init_op)
  if frozen.saver_def is not None:
    meta.saver_def.CopyFrom(frozen.saver_def)
    meta.collection_def[VARIABLES_COLLECTION].bytes_list.value.extend(
        [frozen.variables_prefix.encode('utf-8'), (frozen.variables_digest or '').encode()])
  node = lean_tf.NodeDef(name=METADATA_NODE, op='Const')
  node.attr['dtype'].type = types_pb2.DT_STRING
  value = lean_tf.tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
  value.tensor_shape.SetInParent()
  value.string_val.append(meta.SerializeToString(deterministic=True))
  node.attr['value'].tensor.CopyFrom(value)
  return node


def frozen_to_graph_def(frozen):
  """The GraphDef to write: `frozen.graph_def` plus its metadata node."""
  graph_def = graph_pb2.GraphDef()
  graph_def.CopyFrom(frozen.graph_def)
  graph_def.node.append(_metadata_node(frozen))
  return graph_def


def metadata_record(frozen):
  """The serialized NodeDef of `frozen`'s metadata node (for writers that stream nodes)."""
  return _metadata_node(frozen).SerializeToString(deterministic=True)


def write_graph_def(graph_def, path, overwrite=False):
  """Writes a binary GraphDef atomically; returns its size in bytes.

  Raises:
    errors.UserError: the graph is past protobuf's 2 GB limit, or `path` cannot be written.
  """
  size = graph_def.ByteSize()
  check_protobuf_size(size, 'the graph for %s would be {size}, past {limit} for one GraphDef; '
                      'use optimize_from_ckpt.py, which keeps the values in a checkpoint' % path)
  start = time.perf_counter()
  with atomic.atomic_output(path, overwrite) as tmp:
    with files.open_file(tmp, 'wb') as f:
      f.write(graph_def.SerializeToString(deterministic=True))
  seconds = time.perf_counter() - start
  logging.info('wrote %s: %s in %.1f s (%s/s)', path, units.human_bytes(size), seconds,
               units.human_bytes(size / max(seconds, 1e-9)))
  return size


def read_graph_def(path, op_defs=None):
  """Parses a binary (or, for .pbtxt, text) GraphDef and checks it (graph_check).

  Args:
    path: the file.
    op_defs: {op name: OpDef} to check attribute types with (lean_tf.registered_op_defs()
      where TensorFlow is loaded anyway), or None.

  Raises:
    errors.UserError: missing, empty, or not a GraphDef;
      graph_check.CorruptGraphError: a graph TensorFlow would refuse, naming the node.
  """
  if not files.exists(path):
    raise errors.UserError('graph file %s does not exist' % path)
  if files.isdir(path):
    raise errors.UserError('%s is a directory, not a GraphDef file' % path)
  data = files.read(path)
  if not data:
    raise errors.UserError('graph file %s is empty' % path)
  graph_def = graph_pb2.GraphDef()
  try:
    if path.endswith('.pbtxt'):
      text_format.Parse(data.decode('utf-8'), graph_def)
    else:
      graph_def.ParseFromString(data)
  except (pb_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
    raise errors.UserError('%s is not a GraphDef (truncated or corrupt: %s)' % (path, e)) from e
  if not graph_def.node:
    raise errors.UserError('%s is not a GraphDef: it parses but holds no nodes' % path)
  graph_check.check_graph_def(graph_def, path, op_defs)
  return graph_def


def frozen_from_graph_def(graph_def, where, in_place=False, op_defs=None):
  """Splits a GraphDef written by freezer.py into a FrozenModel; None when it has no metadata.

  With `in_place`, `graph_def` itself loses its metadata node and becomes the model's graph
  (no copy of what may be 2 GB of nodes). The metadata is checked against the graph: its
  signatures name outputs the graph's nodes have (counted with `op_defs`, {op name: OpDef},
  when given), its table init op and its saver's ops are nodes of the graph.

  Raises:
    errors.UserError: the metadata node is corrupt, or names what the graph does not have.
  """
  meta_nodes = [n for n in graph_def.node if n.name == METADATA_NODE]
  if not meta_nodes:
    return None
  meta = meta_graph_pb2.MetaGraphDef()
  tensor = meta_nodes[0].attr['value'].tensor
  try:
    if tensor.dtype != types_pb2.DT_STRING or len(tensor.string_val) != 1:
      raise ValueError('not one string')
    meta.ParseFromString(tensor.string_val[0])
  except (pb_message.DecodeError, ValueError) as e:
    raise errors.UserError('%s: its %s node is corrupt (%s)' % (where, METADATA_NODE, e)) from e
  if in_place:
    plain = graph_def
    for i in reversed([i for i, n in enumerate(graph_def.node) if n.name == METADATA_NODE]):
      del plain.node[i]
  else:
    plain = graph_pb2.GraphDef()  # one copy of the nodes, not two: graphs reach 2 GB
    plain.versions.CopyFrom(graph_def.versions)
    plain.library.CopyFrom(graph_def.library)
    plain.node.extend(n for n in graph_def.node if n.name != METADATA_NODE)
  init = (meta.collection_def[TABLE_INIT_COLLECTION].node_list.value
          if TABLE_INIT_COLLECTION in meta.collection_def else [])
  frozen = FrozenModel(graph_def=plain, signatures=dict(meta.signature_def),
                       tags=list(meta.meta_info_def.tags), table_init_op=init[0] if init else None)
  if meta.HasField('saver_def'):
    stored = (meta.collection_def[VARIABLES_COLLECTION].bytes_list.value
              if VARIABLES_COLLECTION in meta.collection_def else [])
    variables = [v.decode('utf-8') for v in stored] + ['', '']
    if not variables[0]:
      raise errors.UserError('%s: its %s node has a saver but no checkpoint location'
                             % (where, METADATA_NODE))
    if '\x00' in variables[0]:
      raise errors.UserError('%s: its %s node is corrupt (a NUL in its checkpoint location)'
                             % (where, METADATA_NODE))
    frozen.saver_def, frozen.variables_prefix = meta.saver_def, variables[0]
    frozen.variables_digest = variables[1] or None
  scope = '%s (its %s node)' % (where, METADATA_NODE)
  graph_check.check_signature_tensors(plain, frozen.signatures, scope, op_defs)
  if frozen.table_init_op is not None:
    graph_check.check_node_names(plain, [frozen.table_init_op], scope, 'the table init op')
    graph_check.check_runs_unfed(plain, [frozen.table_init_op], scope, 'the table init op')
  if frozen.saver_def is not None:
    graph_check.check_node_names(plain, [n for n in (
        frozen.saver_def.restore_op_name, frozen.saver_def.filename_tensor_name) if n] or [''],
                                 scope, 'the saver\'s op or tensor', tensors=True)
  return frozen


# ---------------------------------------------------------------------------------------------
# The checkpoint beside a graph that keeps variables


def checkpoint_dir(graph_path):
  """The directory of the checkpoint beside `graph_path`."""
  return graph_path.rstrip('/') + SUFFIX


def relative_prefix(graph_path):
  """The beside checkpoint's prefix relative to the graph's directory (what the graph records)."""
  return files.basename(graph_path) + SUFFIX + '/' + PREFIX_NAME


def resolve_prefix(graph_path, relative):
  """The beside checkpoint's prefix, from the graph's path and what the graph records."""
  parent = files.parent_dir(graph_path)
  return files.join(parent, relative) if parent else relative


def index_digest(prefix):
  """sha256 of PREFIX.index: its entries hold each tensor's dtype, shape, slices and CRC32C."""
  return hashlib.sha256(files.read(prefix + '.index')).hexdigest()


def _graph_exists(path):
  # Not exists alone: on ram:// any prefix of a file's name (frozen.pb of
  # frozen.pb.variables/variables.index) counts as a directory that exists.
  return files.exists(path) and not files.isdir(path)


_GRAPH_TEMP = '.graph.tmp'  # inside the checkpoint's directory until the checkpoint is in place


@contextlib.contextmanager
def graph_and_checkpoint_output(graph_path, overwrite=False):
  """Yields (temporary graph path, temporary checkpoint prefix); commits the checkpoint, then
  the graph.

  Both are written completely under temporary names first (the graph inside the checkpoint's
  temporary directory); then the checkpoint directory is moved into place
  (atomic.atomic_output), then the graph is renamed out of it onto `graph_path`. So a graph
  file never appears before its checkpoint is complete, and a failure while writing leaves
  both targets as they were. A checkpoint directory with no graph beside it (a run killed
  between the two moves leaves one, still holding the graph's temporary file) is replaced.

  Raises:
    errors.UserError: the graph exists (without `overwrite`), or a write fails.
  """
  ckpt_dir = checkpoint_dir(graph_path)
  existed = _graph_exists(graph_path)
  if existed and not overwrite:
    raise errors.exists_error(graph_path)
  if not existed and files.isdir(ckpt_dir):
    logging.info('replacing %s: no graph %s beside it', ckpt_dir, graph_path)
  with atomic.atomic_output(ckpt_dir, overwrite=True) as ckpt_tmp:
    files.makedirs(ckpt_tmp)
    yield files.join(ckpt_tmp, _GRAPH_TEMP), files.join(ckpt_tmp, PREFIX_NAME)
  try:
    files.rename(files.join(ckpt_dir, _GRAPH_TEMP), graph_path, overwrite=True)
  except OSError as e:
    if not existed:
      files.rmtree(ckpt_dir)
    raise errors.UserError('cannot write %s: %s' % (graph_path, errors.tf_error_message(e))) from e


def remove_stale_checkpoint(graph_path):
  """After a graph without kept variables replaced one with them: its old checkpoint goes."""
  ckpt_dir = checkpoint_dir(graph_path)
  if files.isdir(ckpt_dir):
    files.rmtree(ckpt_dir)
    logging.info('removed %s: the new %s keeps no variables', ckpt_dir, graph_path)


def checkpoint_of(frozen, graph_path):
  """The prefix of the checkpoint beside `graph_path` that `frozen` restores; checked.

  Raises:
    errors.UserError: the checkpoint is missing, truncated, or not the one written with the
      graph.
  """
  prefix = resolve_prefix(graph_path, frozen.variables_prefix)
  if not files.exists(prefix + '.index'):
    raise errors.UserError(
        '%s keeps variables restored from the checkpoint %s, which is missing: move or copy '
        'the graph and its %s directory together' % (graph_path, prefix,
                                                     frozen.variables_prefix.split('/')[0]))
  if frozen.variables_digest and index_digest(prefix) != frozen.variables_digest:
    raise errors.UserError(
        'checkpoint %s is not the one written with %s (its index differs): move or copy the '
        'graph and its checkpoint directory together' % (prefix, graph_path))
  checkpoint_index.read_index(prefix)  # every data shard there and long enough
  return prefix


def write_graph(frozen, prefix, graph_path, overwrite=False):
  """Writes `frozen` with its kept variables' checkpoint (linked from `prefix`) beside it.

  Returns:
    Bytes of the graph file.

  Raises:
    errors.UserError: the graph would pass 2 GB, or an output cannot be written.
  """
  out = dataclasses.replace(frozen, variables_prefix=relative_prefix(graph_path))
  graph_def = frozen_to_graph_def(out)
  size = graph_def.ByteSize()
  check_protobuf_size(size, 'the graph for %s would be {size}, past {limit}' % graph_path)
  with graph_and_checkpoint_output(graph_path, overwrite) as (graph_tmp, ckpt_tmp):
    checkpoint_copy.link_checkpoint(prefix, ckpt_tmp)
    with files.open_file(graph_tmp, 'wb') as f:
      f.write(graph_def.SerializeToString(deterministic=True))
  return size
