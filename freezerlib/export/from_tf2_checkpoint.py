"""The TF2 checkpoint path: structure SavedModel + tf.train.Checkpoint -> serving SavedModel.

A TF2 training checkpoint (`tf.train.Checkpoint(model=m, optimizer=opt).save(...)`, or a
CheckpointManager's) is object-based. Its root is the Checkpoint object; its
`_CHECKPOINTABLE_OBJECT_GRAPH` tensor, a serialized TrackableObjectGraph, lists every object
(children by local name, and per object its saved attributes: name, full_name and the
`checkpoint_key` its tensors are stored under). A key is the object's first path in a
breadth-first walk from the root, so it need not start with `model/`: in a Keras 3 model
trained by an optimizer the checkpoint tracks, the model's variables are stored under
`optimizer/_trainable_variables/k/...`, the optimizer's path to them being shorter than the
model's (`model/_operations/1/_embeddings`). Keys are therefore never derived from strings
here: the object graph says which key holds which object's value.

A TF2 SavedModel (`tf.saved_model.save`, Keras 3 `model.export`) keeps the same kind of
checkpoint in `variables/`, rooted at the saved object. Its object graph is what
`tf.saved_model.load` matches to the SavedModel's objects, and its keys are what the
MetaGraph's restore function (run by the TF1 and C++ loaders and TF Serving) reads.

Exporting therefore:
1. matches the structure's objects to the checkpoint's: the structure's object graph is
   walked in step with the checkpoint's from a checkpoint object (by default every object
   is tried; the one under which every variable and table of the structure is found, with
   the same dtype and shape, wins, and two such objects are ambiguous), children paired by
   local name as TensorFlow's own restore pairs them. A structure whose paths exist nowhere
   in the checkpoint (a Keras 3 export tracks its variables as `variables/k`, the model
   itself is not in it) is matched by each variable's full name instead (Keras 3: the
   variable's path, `dense/kernel`), which must then be unique. Two objects that name the
   same tensors (a tf-keras model's root and its `keras_api`, in the model's own variables/)
   are one match. State of the structure that the checkpoint lacks and that no function
   serving runs reads (a compiled tf-keras model's metric accumulators, which only its
   SavedModel tracks; a Keras 3 seed generator's state) keeps the structure's value, and the
   log names it; state a signature reads must come from the checkpoint.
2. checks every tensor before anything is written; all mismatches in one message.
3. writes `variables/` with the structure's keys: the checkpoint's stored bytes copied as they
   are (checkpoint_copy.copy_records: no decoding, no TensorFlow), slices of a sharded variable
   renamed slice by slice, and the structure's own object graph tensor (copied as stored), whose
   keys are exactly those written. Two keys of one tensor (a Keras export tracks each variable
   twice, as `variables/k` and `_all_variables/k`) share one copy of its bytes.
4. writes the structure's MetaGraph without the functions serving does not run
   (transforms/serving_functions: a saved train step, Keras training-mode traces, dataset
   readers), signatures, init op, saver and object graph otherwise its own; copies its assets
   as they are. Its fingerprint.pb is left out: it fingerprints the structure's checkpoint,
   not this one, and loaders do without it.

A `tf.distribute.ShardedVariable` (ParameterServerStrategy with a variable_partitioner) is saved
in a checkpoint as one full tensor stored in slices, one per shard: the index entry of its key
lists the slices' extents and holds no bytes, and each slice is an entry of its own (keyed by
NUL + name + encoded extents) on the data shard of the parameter server that holds it. Its
object is one node with one VARIABLE_VALUE attribute (full name "ShardedVariable"), no node
per shard. In a SavedModel, TensorFlow 2.21 saves it as ONE variable of the full shape (one
SavedObject `variable`): the serving functions gather from that variable, and the restore
function reads it whole (slice spec "11 4 0,11:0,4"), which TensorFlow's reader assembles from
whatever slices are stored; only the structure's own variables/ is laid out in its shards. So
the slices are copied as they are, and a structure with one plain variable or another number
of shards serves the same values as TensorFlow's own SavedModel of the trained model would.
"""

import collections
import dataclasses
import time
from typing import Dict, FrozenSet, List

from absl import logging

from freezerlib.analysis import unsafe_ops
from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.export import ExportReport
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import checkpoint_index as checkpoints
from freezerlib.formats import object_graph
from freezerlib.formats import saved_model
from freezerlib.transforms import serving_functions

trackable_object_graph_pb2 = object_graph.trackable_object_graph_pb2
OBJECT_GRAPH_KEY = object_graph.OBJECT_GRAPH_KEY
read_object_graph = object_graph.read_object_graph
_VARIABLE_VALUE = 'VARIABLE_VALUE'
_MAX_LISTED = 40  # problems named in a mismatch message; the rest counted


def is_object_based_saved_model(saved_model_dir, tags=('serve',)):
  """Whether the SavedModel's MetaGraph tagged `tags` is TF2's (see is_object_based).

  Raises:
    errors.UserError: not a readable SavedModel, no such tags, or a corrupt graph.
  """
  return saved_model.is_object_based(saved_model.read_meta_graph(saved_model_dir, tags))


# ---------------------------------------------------------------------------------------------
# Object graphs


def _paired_by_path(structure, checkpoint_graph, root):
  """Structure node id -> checkpoint node id, walking both graphs from their roots (the
  checkpoint's from `root`) and pairing children by local name, as TensorFlow's restore does."""
  pairs = {0: root}
  queue = collections.deque([0])
  while queue:
    s_id = queue.popleft()
    children = {c.local_name: c.node_id for c in checkpoint_graph.nodes[pairs[s_id]].children}
    for child in structure.nodes[s_id].children:
      if child.node_id not in pairs and child.local_name in children:
        pairs[child.node_id] = children[child.local_name]
        queue.append(child.node_id)
  return pairs


def _paired_by_full_name(structure, checkpoint_graph, root, paths):
  """Structure node id -> checkpoint node id for objects with saved attributes, paired by
  attribute name and full name among the objects reachable from `root`; plus a problem per
  full name that names several checkpoint objects."""
  by_name = collections.defaultdict(set)
  for node_id in graphs.walk(
      [root], lambda i: [c.node_id for c in checkpoint_graph.nodes[i].children]):
    for attr in checkpoint_graph.nodes[node_id].attributes:
      if attr.full_name:
        by_name[(attr.name, attr.full_name)].add(node_id)
  pairs, problems = {}, []
  for s_id, node in enumerate(structure.nodes):
    for attr in node.attributes:
      found = by_name.get((attr.name, attr.full_name), set())
      if len(found) == 1:
        pairs[s_id] = next(iter(found))
      elif len(found) > 1:
        problems.append('full name %s names %d checkpoint objects (%s)' % (
            attr.full_name, len(found), ', '.join(sorted(paths[n] for n in found))))
  return pairs, problems


# ---------------------------------------------------------------------------------------------
# What to copy


@dataclasses.dataclass
class Rename:
  """A tensor of the structure and the checkpoint tensor that holds its value."""
  structure_key: str
  checkpoint_key: str
  path: str  # the structure object's path, for messages


@dataclasses.dataclass
class Plan:
  """The outcome of matching the structure to one checkpoint object."""
  object_path: str
  matched_by: str  # 'path' or 'full name'
  renames: List[Rename]
  problems: List[str]
  matched: int  # structure objects with saved values whose every tensor matched
  total: int    # structure objects with saved values
  kept: List[Rename] = dataclasses.field(default_factory=list)  # the structure's own values


def _volume(extents):
  count = 1
  for _, length in extents:
    count *= length
  return count


def _check_tensor(structure_index, checkpoint_index, s_key, c_key, name, path):
  """Problems with restoring structure tensor `s_key` from checkpoint tensor `c_key`."""
  s_entry, c_entry = structure_index.entries[s_key], checkpoint_index.entries[c_key]
  s_shape = [d.size for d in s_entry.shape.dim]
  c_shape = [d.size for d in c_entry.shape.dim]
  what = path + ('' if name == _VARIABLE_VALUE else ' (%s)' % s_key.rsplit('/', 1)[-1])
  if s_entry.dtype != c_entry.dtype:
    return ['%s is %s in the checkpoint, %s in the structure' % (
        what, lean_tf.as_dtype(c_entry.dtype).name, lean_tf.as_dtype(s_entry.dtype).name)]
  if name == _VARIABLE_VALUE:
    same = s_shape == c_shape
  else:
    # A table's keys and values grow with its contents: only the value shape must agree.
    same = len(s_shape) == len(c_shape) and s_shape[1:] == c_shape[1:]
  if not same:
    return ['%s has shape %s in the checkpoint, %s in the structure' % (what, c_shape, s_shape)]
  if checkpoint_index.slices.get(c_key):
    have = checkpoints.slices_of(checkpoint_index, c_key)
    if sum(_volume(e) for e in have) != _volume([(0, n) for n in c_shape]):
      return ['%s: its %d slices in the checkpoint do not cover its shape %s' % (
          what, len(have), c_shape)]
  return []


@dataclasses.dataclass
class _Structure:
  """The structure's side of matching, computed once."""
  graph: object  # TrackableObjectGraph
  index: checkpoints.Checkpoint
  paths: Dict[int, str]
  owned: Dict[int, Dict[str, list]]
  stray: List[str]
  unread: FrozenSet[int]  # objects no serving function reads


def _structure(graph, index, unread):
  owned, stray = object_graph.keys_by_object(graph, index)
  return _Structure(graph, index, graphs.object_paths(graph), owned, stray, frozenset(unread))


def _plan(structure, checkpoint_graph, checkpoint_index, pairs, object_path, matched_by,
          extra_problems=()):
  """Matches every saved attribute of the structure through `pairs` (structure node id ->
  checkpoint node id); returns the Plan."""
  renames, kept, problems, matched = [], [], list(extra_problems), 0
  problems += ['%s in the structure\'s checkpoint belongs to no object of its object graph' % k
               for k in structure.stray]
  for s_id in sorted(structure.owned):
    path = structure.paths.get(s_id, 'node %d' % s_id)
    saver = structure.graph.nodes[s_id].registered_saver.name
    if saver:
      problems.append('%s is saved by registered saver %s, which this cannot copy'
                      % (path, saver))
      continue
    c_id = pairs.get(s_id)
    if c_id is None and s_id in structure.unread:
      # Compile-time metric accumulators, optimizer state, a Keras seed generator's state: the
      # structure tracks them, a checkpoint of the model need not, and serving never reads them.
      kept += [Rename(key, key, path) for keys in structure.owned[s_id].values()
               for key, _ in keys]
      continue
    if c_id is None:
      problems.append('%s missing' % path)
      continue
    c_node = checkpoint_graph.nodes[c_id]
    if c_node.registered_saver.name:
      problems.append('%s is saved by registered saver %s in the checkpoint, which this cannot '
                      'copy' % (path, c_node.registered_saver.name))
      continue
    c_attrs = {a.name: a.checkpoint_key for a in c_node.attributes}
    before = len(problems)
    for name, keys in sorted(structure.owned[s_id].items()):
      if name not in c_attrs:
        problems.append('%s has no saved %s in the checkpoint (it has %s)' % (
            path, name, ', '.join(sorted(c_attrs)) or 'no saved values'))
        continue
      for s_key, suffix in keys:
        c_key = c_attrs[name] + suffix
        if c_key not in checkpoint_index.entries:
          problems.append('%s: the checkpoint\'s object graph names %s, which its index lacks'
                          % (path, c_key))
          continue
        found = _check_tensor(structure.index, checkpoint_index, s_key, c_key, name, path)
        problems += found
        if not found:
          renames.append(Rename(s_key, c_key, path))
    if len(problems) == before:
      matched += 1
  return Plan(object_path=object_path, matched_by=matched_by, renames=renames,
              problems=problems, matched=matched, total=len(structure.owned), kept=kept)


def _resolve_object(graph, path, prefix):
  """The node id at object path `path` ('' or '/' for the root) of the checkpoint's graph."""
  node_id, walked = 0, []
  for part in [p for p in path.split('/') if p]:
    children = {c.local_name: c.node_id for c in graph.nodes[node_id].children}
    if part not in children:
      raise errors.UserError('checkpoint %s has no object %s: %s holds %s' % (
          prefix, path, '/'.join(walked) or 'its root', ', '.join(sorted(children)) or
          'no objects'))
    node_id = children[part]
    walked.append(part)
  return node_id


def _tensors_named(plan):
  """What a plan restores each structure tensor from: two objects that name the same tensors
  (a Keras model's root and its `keras_api`, which tracks the same variables) are one match."""
  return (frozenset((r.structure_key, r.checkpoint_key) for r in plan.renames),
          frozenset(r.structure_key for r in plan.kept))


def match(structure, structure_index, checkpoint_graph, checkpoint_index, checkpoint_object=None,
          where='the structure', unread=()):
  """The Plan that restores every saved value of the structure from the checkpoint.

  Args:
    structure: the structure's TrackableObjectGraph.
    structure_index: checkpoints.Checkpoint of the structure's variables/.
    checkpoint_graph: the training checkpoint's TrackableObjectGraph.
    checkpoint_index: checkpoints.Checkpoint of the training checkpoint.
    checkpoint_object: object path in the checkpoint to match ('model'), or None to find it.
    where: the structure's path, for messages.
    unread: structure node ids that no serving function reads: one the checkpoint lacks keeps
      the structure's value (Plan.kept) instead of failing the match.

  Returns:
    Plan without problems.

  Raises:
    errors.UserError: no object matches (the message lists what is missing or different for
      the closest one), or several do.
  """
  paths = graphs.object_paths(checkpoint_graph)
  structure = _structure(structure, structure_index, unread)
  if checkpoint_object is not None:
    roots = [_resolve_object(checkpoint_graph, checkpoint_object, checkpoint_index.prefix)]
  else:
    roots = sorted(paths, key=lambda n: (paths[n].count('/') if paths[n] else -1, paths[n]))
  plans = []
  for root in roots:
    pairs = _paired_by_path(structure.graph, checkpoint_graph, root)
    if checkpoint_object is None and not any(s_id in pairs for s_id in structure.owned):
      continue  # nothing of the structure under this object
    plans.append(_plan(structure, checkpoint_graph, checkpoint_index, pairs, paths[root],
                       'path'))
  complete = [p for p in plans if not p.problems]
  if not complete:
    # No object has the structure's paths: pair by full names (a Keras export's variables).
    root = roots[0] if checkpoint_object is not None else 0
    pairs, ambiguous = _paired_by_full_name(structure.graph, checkpoint_graph, root, paths)
    plan = _plan(structure, checkpoint_graph, checkpoint_index, pairs, paths[root],
                 'full name', ambiguous)
    if not plan.problems:
      complete = [plan]
    plans.append(plan)
  distinct = {}
  for plan in complete:
    distinct.setdefault(_tensors_named(plan), plan)
  if len(distinct) < len(complete):
    logging.info('checkpoint objects %s name the same tensors; using %s',
                 ', '.join(p.object_path or '(the root)' for p in complete),
                 complete[0].object_path or '(the root)')
  complete = list(distinct.values())
  if len(complete) > 1:
    raise errors.UserError(
        'checkpoint %s holds %d objects that match %s: %s; choose one with --checkpoint_object'
        % (checkpoint_index.prefix, len(complete), where,
           ', '.join(p.object_path or '(the root)' for p in complete)))
  if complete:
    return complete[0]
  best = max(plans, key=lambda p: (p.matched, p.matched_by == 'path', -len(p.problems)))
  if best.matched or checkpoint_object is not None:
    closest = 'closest: %s, by %s, %d of %d variables and tables' % (
        best.object_path or 'its root', best.matched_by, best.matched, best.total)
  else:
    closest = 'none of its objects (%s) holds any of the %d variables and tables' % (
        ', '.join(c.local_name for c in checkpoint_graph.nodes[0].children), best.total)
  shown = best.problems[:_MAX_LISTED]
  if len(best.problems) > len(shown):
    shown.append('and %d more' % (len(best.problems) - len(shown)))
  raise errors.UserError('checkpoint %s does not match %s (%s): %s' % (
      checkpoint_index.prefix, where, closest, '; '.join(shown)))


# ---------------------------------------------------------------------------------------------
# Export


def _records(plan, structure_index, checkpoint_index):
  """checkpoint_copy.Record list: each renamed tensor's records (a sliced one's every slice), and
  the structure's object graph."""
  records = []
  for rename in plan.renames:
    for key, entry in checkpoint_index.records(rename.checkpoint_key):
      if key == rename.checkpoint_key.encode('utf-8'):
        new_key = rename.structure_key.encode('utf-8')
      else:
        new_key = checkpoints.renamed_slice_key(key, rename.checkpoint_key, rename.structure_key)
      records.append(checkpoint_copy.Record(checkpoint_index, key, entry, new_key))
  for rename in plan.kept:
    records += [checkpoint_copy.Record(structure_index, key, entry)
                for key, entry in structure_index.records(rename.structure_key)]
  graph_key = OBJECT_GRAPH_KEY.encode('utf-8')
  records.append(checkpoint_copy.Record(structure_index, graph_key,
                                    structure_index.entries[OBJECT_GRAPH_KEY]))
  return records


def _log_layout_changes(plan, structure_index, checkpoint_index):
  for rename in plan.renames:
    have = checkpoint_index.slices.get(rename.checkpoint_key)
    want = structure_index.slices.get(rename.structure_key)
    if bool(have) != bool(want) or (have and len(have) != len(want)):
      logging.info('%s: %s in the checkpoint, %s in the structure; restored whole from the '
                   'checkpoint\'s layout', rename.path,
                   '%d shards' % len(have) if have else 'one tensor',
                   '%d shards' % len(want) if want else 'one variable')


def export(checkpoint, output_dir, saved_model_dir, tags=('serve',), checkpoint_object=None,
           chunk_bytes=1 << 20, overwrite=False, allow_ops=(), version=None, finalize=None,
           verify_checksums=True):
  """Writes a serving SavedModel: the TF2 structure at `saved_model_dir` with the values of
  the model in TF2 training checkpoint `checkpoint`.

  Args:
    checkpoint: a checkpoint prefix, or a directory holding a `checkpoint` state file.
    output_dir: the SavedModel directory to write.
    saved_model_dir: the structure, written by tf.saved_model.save or Keras 3 model.export (its
      variable values are never read; its variables/ index and object graph are).
    tags: the structure's MetaGraph tags.
    checkpoint_object: the model's object path in the checkpoint (`model`); found when None.
    chunk_bytes: bytes read and written at a time when the kernel cannot copy.
    overwrite: replace an existing `output_dir`.
    allow_ops: op types to accept that read files, run Python or reach the network.
    version: None, or an int or 'auto': write OUTPUT_DIR/<version>, TF Serving's layout.
    finalize: callable(saved_model_dir) run on the complete SavedModel before it moves into
      place (warmup requests).
    verify_checksums: check each tensor copied against the CRC32C its index entry records.

  Returns:
    ExportReport.

  Raises:
    errors.UserError: a bad structure or checkpoint, any mismatch between them (all listed), a
      tensor that fails its checksum, or an existing output without `overwrite`. Nothing is
      written then.
  """
  start = time.perf_counter()
  atomic.check_output_free(output_dir, overwrite, version)
  meta_graph = saved_model.read_meta_graph(saved_model_dir, tags)
  if not saved_model.is_object_based(meta_graph):
    raise errors.UserError('%s is not a TF2 SavedModel (it has no object graph)'
                          % saved_model_dir)
  signatures = saved_model.select_signatures(meta_graph, None, saved_model_dir)
  cut = serving_functions.cut_to_serving(meta_graph)
  if cut.removed:
    logging.info('left out of the serving graph: %s, which serving does not run',
                 cut.summary())
  kept = unsafe_ops.check_meta_graph(cut.meta_graph, signatures, set(allow_ops),
                                     saved_model_dir)
  unsafe_ops.log_findings(kept, 'kept in the structure\'s graph (not run by loading or the '
                               'signatures)')
  variables = files.join(saved_model_dir, 'variables', 'variables')
  if not files.exists(variables + '.index'):
    raise errors.UserError(
        '%s has no variables/variables.index: keep the structure\'s variables/ (its object '
        'graph and index are read, its values never)' % saved_model_dir)
  structure_index = checkpoints.read_index(variables)
  structure = read_object_graph(structure_index)
  prefix = checkpoints.resolve_prefix(checkpoint)
  checkpoint_index = checkpoints.read_index(prefix)
  checkpoint_graph = read_object_graph(checkpoint_index)
  read = serving_functions.objects_read(meta_graph, cut.kept)
  plan = match(structure, structure_index, checkpoint_graph, checkpoint_index,
               checkpoint_object, saved_model_dir,
               unread=[n for n in range(len(structure.nodes)) if n not in read])
  logging.info('checkpoint %s: the structure is object %s (matched by %s): %d tensors of %d '
               'variables and tables, of the checkpoint\'s %d', prefix,
               plan.object_path or '(the root)', plan.matched_by, len(plan.renames), plan.total,
               len(checkpoint_index.entries))
  _log_layout_changes(plan, structure_index, checkpoint_index)
  if plan.kept:
    paths = sorted({r.path for r in plan.kept})
    logging.info('kept the structure\'s own value of %d objects the checkpoint does not hold '
                 'and no signature reads: %s', len(paths), ', '.join(paths[:_MAX_LISTED]) + (
                     ' and %d more' % (len(paths) - _MAX_LISTED) if len(paths) > _MAX_LISTED
                     else ''))
  records = _records(plan, structure_index, checkpoint_index)
  written = []

  def write_variables(variables_dir):
    written.append(checkpoint_copy.copy_records(
        records, files.join(variables_dir, 'variables'), chunk_bytes,
        progress=units.Progress('copying tensors'), verify=verify_checksums))

  # The structure's MetaGraph without the functions serving does not run (train steps,
  # training-mode traces): signatures, init op, saver and object graph otherwise its own.
  path, _ = saved_model.write_saved_model(
      output_dir, cut.meta_graph, write_variables, files.join(saved_model_dir, 'assets'),
      overwrite, version=version, finalize=finalize,
      assets_extra_dir=files.join(saved_model_dir, 'assets.extra'))
  stored = {}  # one stored tensor under two keys is needed once
  for record in records:
    stored[(id(record.checkpoint), record.entry.shard_id, record.entry.offset)] = (
        record.entry.size)
  return ExportReport(
      path=path, tensors_exported=len(plan.renames) + len(plan.kept),
      tensors_in_checkpoint=len(checkpoint_index.entries),
      bytes_exported=written[0],
      bytes_in_checkpoint=sum(checkpoint_index.nbytes(n) for n in checkpoint_index.entries),
      seconds=time.perf_counter() - start, checkpoint_object=plan.object_path,
      matched_by=plan.matched_by,
      bytes_needed=sum(stored.values()))
