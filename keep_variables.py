"""--keep_as_variables: big variables and tables stay stateful, restored from a checkpoint.

A frozen GraphDef cannot pass protobuf's 2 GB. With `freezer.py --keep_as_variables=SPEC` the
variables (each partition on its own) and hash tables that SPEC picks stay variable and table
nodes in the frozen graph, and a V2 saver over exactly them (built from the SavedModel's own
saver, as optimize_from_ckpt.py builds its one) restores them from a checkpoint written beside
the graph: for `DIR/frozen.pb` it is `DIR/frozen.pb.variables/variables.{index,data-...}`, the
kept tensors' stored bytes copied as they are. A kept table is restored by LookupTableImportV2
from that checkpoint instead of being filled from constants.

The graph's `freezer_metadata` node records the saver and the checkpoint's place relative to
the graph file, with a digest of its index (which holds every tensor's CRC32C), so a graph and
a checkpoint that were not written together are told apart. optimize_from_pb.py links (or
copies) that checkpoint as the serving SavedModel's variables/.
"""

import contextlib
import dataclasses
import hashlib
import re
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from tensorflow.core.protobuf import meta_graph_pb2

import checkpoint_export
import checkpoints
import saved_model_io
import utils

SUFFIX = '.variables'  # the checkpoint directory beside `frozen.pb` is `frozen.pb.variables`
PREFIX_NAME = 'variables'

_UNITS = {'': 1, 'b': 1, 'kb': 10**3, 'kib': 2**10, 'mb': 10**6, 'mib': 2**20, 'gb': 10**9,
          'gib': 2**30}
_SIZE = re.compile(r'^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$', re.IGNORECASE)
_PART = re.compile(r'/part_\d+$')


@dataclasses.dataclass
class KeepSpec:
  """What --keep_as_variables picks: everything of at least `min_bytes`, or `names`."""
  min_bytes: Optional[int] = None
  names: List[str] = dataclasses.field(default_factory=list)

  def __str__(self):
    return (utils.human_bytes(self.min_bytes) + ' or more' if self.min_bytes is not None
            else ','.join(self.names))


def parse_spec(spec):
  """'64MiB', '1.5GB', '500000' (bytes) or 'name,name,...' -> KeepSpec; None for None/''.

  Raises:
    utils.UserError: a size with an unknown unit, a negative size, an empty name.
  """
  if spec is None or not spec.strip():
    return None
  spec = spec.strip()
  # Anything that starts like a number is a size (variable names start with a letter in
  # every model this targets; TensorFlow's own scopes do).
  if re.match(r'^[-+.\d]', spec):
    return KeepSpec(min_bytes=parse_size(spec, '--keep_as_variables', ' nor a list of '
                                                                      'variable names'))
  names = [n.strip() for n in spec.split(',')]
  if not all(names):
    raise utils.UserError('--keep_as_variables=%s holds an empty name' % spec)
  return KeepSpec(names=list(dict.fromkeys(names)))


def parse_size(text, flag, alternative=''):
  """'64MiB', '1.5GB', '500000' (bytes) -> bytes.

  Raises:
    utils.UserError: not a size (naming `flag`).
  """
  match = _SIZE.match(text)
  if not match or match.group(2).lower() not in _UNITS:
    raise utils.UserError(
        '%s=%s is not a size (e.g. 64MiB, 1.5GB, 500000 bytes; units KB, KiB, MB, MiB, GB, '
        'GiB)%s' % (flag, text.strip(), alternative))
  return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def restore_bytes(index, restore):
  """Stored bytes a Restore reads: one partition's slice, a whole tensor, or keys + values."""
  total = 0
  for name, spec, dtype in zip(restore.names, restore.specs, restore.dtypes):
    if name not in index.entries:
      continue
    if spec and dtype != tf.string:
      _, extents = checkpoints.parse_slice_spec(spec)
      total += int(np.prod([length for _, length in extents])) * dtype.size
    else:
      total += index.nbytes(name)
  return total


def aliases(restore):
  """Names a user may give for what `restore` fills: the node, the partitioned variable's base
  name (`item_embedding` for `item_embedding/part_2`), and a variable's checkpoint name."""
  names = {restore.target, _PART.sub('', restore.target)}
  if len(restore.names) == 1:
    names.add(restore.names[0])
  return names


def select(spec, restores, index, where):
  """The Restores `spec` keeps, among `restores` (what the signatures need).

  Raises:
    utils.UserError: a name that is no variable or table the signatures need.
  """
  if spec.min_bytes is not None:
    return [r for r in restores if restore_bytes(index, r) >= spec.min_bytes]
  known = {}
  for r in restores:
    for alias in aliases(r):
      known.setdefault(alias, []).append(r)
  unknown = [n for n in spec.names if n not in known]
  if unknown:
    choices = sorted({_PART.sub('', r.target) for r in restores})
    raise utils.UserError(
        '--keep_as_variables names %s, which is no variable or table the signatures of %s read; '
        'choose from: %s' % (', '.join(unknown), where, ', '.join(choices[:30]) +
                             (' ...' if len(choices) > 30 else '')))
  kept = {id(r): r for n in spec.names for r in known[n]}
  return [r for r in restores if id(r) in kept]


def suggest_size(sizes, limit):
  """A --keep_as_variables size that leaves less than `limit` bytes as constants, or None.

  Args:
    sizes: bytes of each variable or table (what a size threshold compares).
    limit: bytes the constants may take.
  """
  ordered = sorted(sizes, reverse=True)
  left = sum(ordered)
  for i, size in enumerate(ordered):
    if left <= limit:
      return size_spec(ordered[i - 1]) if i else None
    left -= size
  return size_spec(ordered[-1]) if ordered and left <= limit else None


def size_spec(nbytes):
  """The largest whole-MiB spec not above `nbytes` ('525MiB'), or bytes under 1 MiB."""
  return ('%dMiB' % (nbytes >> 20)) if nbytes >= 2**20 else '%d' % nbytes


def checkpoint_dir(graph_path):
  """The directory of the checkpoint beside `graph_path`."""
  return graph_path.rstrip('/') + SUFFIX


def relative_prefix(graph_path):
  """The beside checkpoint's prefix relative to the graph's directory (what the graph records)."""
  return graph_path.rstrip('/').rsplit('/', 1)[-1] + SUFFIX + '/' + PREFIX_NAME


def resolve_prefix(graph_path, relative):
  parent = utils.parent_dir(graph_path)
  return utils.join(parent, relative) if parent else relative


def index_digest(prefix):
  """sha256 of PREFIX.index: its entries hold each tensor's dtype, shape, slices and CRC32C."""
  with tf.io.gfile.GFile(prefix + '.index', 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _graph_exists(path):
  # Not tf.io.gfile.exists alone: on ram:// any prefix of a file's name (frozen.pb of
  # frozen.pb.variables/variables.index) counts as a directory that exists.
  return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


_GRAPH_TEMP = '.graph.tmp'  # inside the checkpoint's directory until the checkpoint is in place


@contextlib.contextmanager
def graph_and_checkpoint_output(graph_path, overwrite=False):
  """Yields (temporary graph path, temporary checkpoint prefix); commits the checkpoint, then
  the graph.

  Both are written completely under temporary names first (the graph inside the checkpoint's
  temporary directory); then the checkpoint directory is moved into place (utils.atomic_output),
  then the graph is renamed out of it onto `graph_path`. So a graph file never appears before
  its checkpoint is complete, and a failure while writing leaves both targets as they were. A
  checkpoint directory with no graph beside it (a run killed between the two moves leaves one,
  still holding the graph's temporary file) is replaced.

  Raises:
    utils.UserError: the graph exists (without `overwrite`), or a write fails.
  """
  ckpt_dir = checkpoint_dir(graph_path)
  existed = _graph_exists(graph_path)
  if existed and not overwrite:
    raise utils.UserError('%s already exists; pass --overwrite to replace it' % graph_path)
  if not existed and tf.io.gfile.isdir(ckpt_dir):
    logging.info('replacing %s: no graph %s beside it', ckpt_dir, graph_path)
  with utils.atomic_output(ckpt_dir, overwrite=True) as ckpt_tmp:
    tf.io.gfile.makedirs(ckpt_tmp)
    yield utils.join(ckpt_tmp, _GRAPH_TEMP), utils.join(ckpt_tmp, PREFIX_NAME)
  try:
    tf.io.gfile.rename(utils.join(ckpt_dir, _GRAPH_TEMP), graph_path, overwrite=True)
  except tf.errors.OpError as e:
    if not existed:
      tf.io.gfile.rmtree(ckpt_dir)
    raise utils.UserError('cannot write %s: %s' % (graph_path, utils.tf_error_message(e))) from e


def remove_stale_checkpoint(graph_path):
  """After a graph without kept variables replaced one with them: its old checkpoint goes."""
  ckpt_dir = checkpoint_dir(graph_path)
  if tf.io.gfile.isdir(ckpt_dir):
    tf.io.gfile.rmtree(ckpt_dir)
    logging.info('removed %s: the new %s keeps no variables', ckpt_dir, graph_path)


def checkpoint_of(frozen, graph_path):
  """The prefix of the checkpoint beside `graph_path` that `frozen` restores; checked.

  Raises:
    utils.UserError: the checkpoint is missing, truncated, or not the one written with the
      graph.
  """
  prefix = resolve_prefix(graph_path, frozen.variables_prefix)
  if not tf.io.gfile.exists(prefix + '.index'):
    raise utils.UserError(
        '%s keeps variables restored from the checkpoint %s, which is missing: move or copy '
        'the graph and its %s directory together' % (graph_path, prefix,
                                                     frozen.variables_prefix.split('/')[0]))
  if frozen.variables_digest and index_digest(prefix) != frozen.variables_digest:
    raise utils.UserError(
        'checkpoint %s is not the one written with %s (its index differs): move or copy the '
        'graph and its checkpoint directory together' % (prefix, graph_path))
  checkpoints.read_index(prefix)  # every data shard there and long enough
  return prefix


def restore(session, frozen, prefix):
  """Runs the saver of `frozen` (imported into `session`'s graph) on checkpoint `prefix`.

  Raises:
    utils.UserError: the restore fails.
  """
  try:
    session.run(frozen.saver_def.restore_op_name,
                {frozen.saver_def.filename_tensor_name: prefix})
  except tf.errors.OpError as e:
    raise utils.UserError('cannot restore %s: %s' % (prefix, utils.tf_error_message(e))) from e


def _link_checkpoint(prefix, dst_prefix):
  """Hard-links (or copies) the files of checkpoint `prefix` to `dst_prefix`."""
  index = checkpoints.read_index(prefix)
  variables_dir = utils.parent_dir(dst_prefix)
  tensors, nbytes = checkpoint_export.write_variables(index, [], variables_dir, prune=False,
                                                      chunk_bytes=8 << 20)
  logging.info('linked %s (%d tensors, %s) as %s', prefix, tensors, utils.human_bytes(nbytes),
               dst_prefix)


def write_graph(frozen, prefix, graph_path, overwrite=False):
  """Writes `frozen` with its kept variables' checkpoint (linked from `prefix`) beside it.

  Returns:
    Bytes of the graph file.
  """
  out = dataclasses.replace(frozen, variables_prefix=relative_prefix(graph_path))
  graph_def = saved_model_io.frozen_to_graph_def(out)
  size = graph_def.ByteSize()
  if size > saved_model_io.PROTOBUF_LIMIT:
    raise utils.UserError('the graph for %s would be %s, past protobuf\'s 2 GB limit'
                          % (graph_path, utils.human_bytes(size)))
  with graph_and_checkpoint_output(graph_path, overwrite) as (graph_tmp, ckpt_tmp):
    _link_checkpoint(prefix, ckpt_tmp)
    with tf.io.gfile.GFile(graph_tmp, 'wb') as f:
      f.write(graph_def.SerializeToString())
  return size


def serving_meta_graph(frozen):
  """The MetaGraphDef of a serving SavedModel for `frozen`, which has a saver (`saver_def`):
  graph, saver, signatures, and the table fill op as main op (run after the restore)."""
  meta_graph = meta_graph_pb2.MetaGraphDef()
  meta_graph.meta_info_def.tags.extend(frozen.tags or ['serve'])
  meta_graph.meta_info_def.tensorflow_version = tf.__version__
  meta_graph.meta_info_def.tensorflow_git_version = tf.__git_version__
  meta_graph.graph_def.CopyFrom(frozen.graph_def)
  meta_graph.saver_def.CopyFrom(frozen.saver_def)
  for key, sig in frozen.signatures.items():
    meta_graph.signature_def[key].CopyFrom(sig)
  if frozen.table_init_op:
    meta_graph.collection_def['saved_model_main_op'].node_list.value.append(
        frozen.table_init_op)
  return meta_graph


def write_saved_model(frozen, prefix, export_dir, overwrite=False):
  """Writes a serving SavedModel whose variables/ is checkpoint `prefix` (linked or copied).

  Its MetaGraph holds the saver that restores the kept variables and tables; the table fill
  op (for tables frozen as constants) is its main op, run after the restore.

  Returns:
    Total bytes written.
  """
  meta_graph = serving_meta_graph(frozen)
  with utils.atomic_output(export_dir, overwrite) as tmp:
    tf.io.gfile.makedirs(tmp)
    _link_checkpoint(prefix, utils.join(tmp, 'variables', 'variables'))
    saved_model_io.write_saved_model_proto(meta_graph, tmp)
    size = saved_model_io.directory_size(tmp)
  return size
