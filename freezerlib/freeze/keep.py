"""--keep_as_variables: which variables and tables stay stateful, and the 2 GB estimate.

A frozen GraphDef cannot pass protobuf's 2 GB. With `freezer.py --keep_as_variables=SPEC` the
variables (each partition on its own) and hash tables that SPEC picks stay variable and table
nodes in the frozen graph, and a V2 saver over exactly them (built from the SavedModel's own
saver, as optimize_from_ckpt.py builds its one) restores them from a checkpoint written beside
the graph (formats.frozen_graph), the kept tensors' stored bytes copied as they are. A kept
table is restored by LookupTableImportV2 from that checkpoint instead of being filled from
constants. Before anything is loaded, `check_fits` estimates the frozen graph's size from the
checkpoint index and refuses a model past 2 GB, suggesting a size that fits (a TF2 model, the
checkpoint path).
"""

import dataclasses
import re
from typing import List, Optional

from absl import logging

from freezerlib.analysis import stateful
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.formats import object_graph
from freezerlib.formats import saved_model
from freezerlib.transforms import saver

_PART = re.compile(r'/part_\d+$')


@dataclasses.dataclass
class KeepSpec:
  """What --keep_as_variables picks: everything of at least `min_bytes`, or `names`."""
  min_bytes: Optional[int] = None
  names: List[str] = dataclasses.field(default_factory=list)

  def __str__(self):
    return (units.human_bytes(self.min_bytes) + ' or more' if self.min_bytes is not None
            else ','.join(self.names))


def parse_spec(spec):
  """'64MiB', '1.5GB', '500000' (bytes) or 'name,name,...' -> KeepSpec; None for None/''.

  Raises:
    errors.UserError: a size with an unknown unit, a negative size, an empty name.
  """
  if spec is None or not spec.strip():
    return None
  spec = spec.strip()
  # Anything that starts like a number is a size (variable names start with a letter in
  # every model this targets; TensorFlow's own scopes do).
  if re.match(r'^[-+.\d]', spec):
    return KeepSpec(min_bytes=units.parse_size(spec, '--keep_as_variables', ' nor a list of '
                                                                      'variable names'))
  names = [n.strip() for n in spec.split(',')]
  if not all(names):
    raise errors.UserError('--keep_as_variables=%s holds an empty name' % spec)
  return KeepSpec(names=list(dict.fromkeys(names)))


def restore_bytes(index, restore):
  """Stored bytes a Restore reads: one partition's slice, a whole tensor, or keys + values."""
  total = 0
  for name, spec, dtype in zip(restore.names, restore.specs, restore.dtypes):
    if name not in index.entries:
      continue
    if spec and dtype.as_datatype_enum != lean_tf.types_pb2.DT_STRING:
      _, extents = checkpoint_index.parse_slice_spec(spec)
      count = 1
      for _, length in extents:
        count *= length
      total += count * lean_tf.dtype_size(dtype.as_datatype_enum)
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
    errors.UserError: a name that is no variable or table the signatures need.
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
    raise errors.UserError(
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
      return units.size_spec(ordered[i - 1]) if i else None
    left -= size
  return units.size_spec(ordered[-1]) if ordered and left <= limit else None


def tf2_captured_bytes(saved_model_dir, meta_graph, signatures):
  """Bytes of the checkpoint tensors behind the variables and tables a TF2 SavedModel's
  `signatures` capture (read from the variables index, no values loaded): what freezing puts
  into the graph.

  Each signature's function lists its captures (`bound_inputs`, ids in the SavedModel's object
  graph, which the variables/ checkpoint's object graph shares); each captured object owns the
  keys its attributes name. Objects found by neither (a Keras 3 model's variables, which its
  signatures capture apart from the objects the checkpoint saves) count nothing: the graph is
  then measured when it is written.
  """
  prefix = files.join(saved_model_dir, 'variables', 'variables')
  if not files.exists(prefix + '.index'):
    return 0
  index = checkpoint_index.read_index(prefix)
  if object_graph.OBJECT_GRAPH_KEY not in index.entries:
    return 0
  graph = object_graph.read_object_graph(index)
  owned, _ = object_graph.keys_by_object(graph, index)
  # By path, not by id alone: ids are shared, paths say so.
  ids = {path: node_id for node_id, path in graphs.object_paths(graph).items()}
  paths = graphs.object_paths(meta_graph.object_graph_def)
  functions = stateful.signature_functions(meta_graph)
  captured = set()
  for key in signatures:
    function = meta_graph.object_graph_def.concrete_functions.get(functions.get(key, ''))
    if function is not None:
      captured.update(ids[paths[i]] for i in function.bound_inputs if paths.get(i) in ids)
  return sum(index.nbytes(k) for node_id in captured
             for keys in owned.get(node_id, {}).values() for k, _ in keys)


def check_fits(saved_model_dir, meta_graph, signatures, keep=None):
  """Refuses, before loading anything, a model whose frozen graph would pass 2 GB.

  The size is the bytes of the checkpoint tensors restored into the variables and tables the
  signatures need (read from the variables index, no values loaded), less those `keep` leaves
  stateful; for a TF2 SavedModel those its signatures capture (tf2_captured_bytes), where the
  way out is the checkpoint path (TF2 models take no --keep_as_variables).

  Args:
    saved_model_dir: the SavedModel.
    meta_graph: its chosen MetaGraphDef.
    signatures: the signatures to freeze.
    keep: KeepSpec of --keep_as_variables, or None.

  Returns:
    Names of the variable and table nodes to keep stateful (empty without `keep`).

  Raises:
    errors.UserError: with the estimate and the ways out (--keep_as_variables with a size that
      fits, optimize_from_ckpt.py); or a name in `keep` the signatures do not read.
  """
  prefix = files.join(saved_model_dir, 'variables', 'variables')
  if saved_model.is_object_based(meta_graph):
    frozen_graph.check_protobuf_size(
        tf2_captured_bytes(saved_model_dir, meta_graph, signatures),
        'freezing %s would put {size} of variables and tables into one GraphDef, past {limit}; '
        'serve it from its checkpoint: optimize_from_ckpt.py --saved_model_dir=%s '
        '--checkpoint=%s --output_saved_model_dir=DIR' % (saved_model_dir, saved_model_dir,
                                                          prefix))
    return set()
  if not meta_graph.saver_def.restore_op_name or not files.exists(prefix + '.index'):
    if keep is not None and keep.names:
      raise errors.UserError('--keep_as_variables names %s, but %s has no variables/ checkpoint '
                             'to keep them from' % (', '.join(keep.names), saved_model_dir))
    return set()
  index = checkpoint_index.read_index(prefix)
  outputs = saved_model.signature_output_nodes(signatures)
  needed = graphs.reachable(meta_graph.graph_def, list(dict.fromkeys(outputs)))
  restores = [r for r in saver.restores_of_saver(
      meta_graph.graph_def, meta_graph.saver_def, saved_model_dir) if r.target in needed]
  kept = select(keep, restores, index, saved_model_dir) if keep else []
  kept_targets = {r.target for r in kept}
  sizes = [restore_bytes(index, r) for r in restores]
  # Each partition counts its own slice: some of a variable's may be kept, others not.
  size = sum(n for r, n in zip(restores, sizes) if r.target not in kept_targets)
  limit = frozen_graph.PROTOBUF_LIMIT
  if size > limit:
    # Leave room for the graph itself beside the constants.
    suggestion = suggest_size(sizes, limit - min(64 << 20, limit // 16))
    keep_hint = ('keep the largest variables and tables as variables, restored from a '
                 'checkpoint beside the graph: --keep_as_variables=%s' % suggestion
                 if suggestion else 'no --keep_as_variables size fits')
    frozen_graph.check_protobuf_size(
        size, 'freezing %s would put {size} of variables and tables into one GraphDef%s, '
        'past {limit}; %s; or serve it from its checkpoint: optimize_from_ckpt.py '
        '--saved_model_dir=%s --checkpoint=%s --output_saved_model_dir=DIR' % (
            saved_model_dir, ' (with --keep_as_variables: %s)' % keep if keep else '',
            keep_hint, saved_model_dir, prefix))
  if keep:
    logging.info('--keep_as_variables (%s) keeps %d of %d variables and tables (%s) as state; '
                 '%s become constants', keep, len(kept), len(restores),
                 ', '.join(sorted(kept_targets)) or 'none', units.human_bytes(size))
  return kept_targets
