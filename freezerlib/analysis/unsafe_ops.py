"""Untrusted models: find the ops that read or write files, run Python or reach the network.

A SavedModel or GraphDef from someone else is a program. Loading it runs its init op; serving it
runs what its signatures need. Ops in this denylist (TensorFlow's `saved_model_cli scan` starts
from ReadFile, WriteFile and PrintV2) in either place stop the run unless the user names them
with --allow_ops; elsewhere in the graph (a training reader, a summary writer) they are removed
with everything else serving does not need, and listed.

The saver's own SaveV2/RestoreV2 and a table initialiser that reads a SavedModel asset file are
how SavedModels work and are not reported. That is the one asset policy of every script: the
freeze path checks the SavedModel (`check_meta_graph`); the checkpoint path checks it the same
way, then its serving graph with the assets the output keeps (`unsafe_in`). An asset name
that escapes assets/ is refused by both. A signature that itself opens an asset file each
time it runs (`asset_reads`) needs the file at serving time: the checkpoint path keeps it,
a frozen graph cannot.
"""

import collections
import dataclasses

from absl import logging

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.formats import saved_model

UNSAFE_OPS = frozenset({
    # files
    'ReadFile', 'WriteFile', 'MatchingFiles', 'ImmutableConst', 'Save', 'SaveV2', 'SaveSlices',
    'Restore', 'RestoreV2', 'RestoreSlice', 'MergeV2Checkpoints', 'LoadAndRemapMatrix',
    'GenerateVocabRemapping', 'InitializeTableFromTextFile', 'InitializeTableFromTextFileV2',
    'WholeFileReader', 'WholeFileReaderV2', 'TextLineReader', 'TextLineReaderV2',
    'TFRecordReader', 'TFRecordReaderV2', 'FixedLengthRecordReader',
    'FixedLengthRecordReaderV2', 'LMDBReader', 'TFRecordDataset', 'TFRecordDatasetV2',
    'TextLineDataset', 'FixedLengthRecordDataset', 'FixedLengthRecordDatasetV2',
    'SnapshotDataset', 'SnapshotDatasetV2', 'SaveDataset', 'SaveDatasetV2', 'LoadDataset',
    'DatasetToTFRecord', 'ExperimentalDatasetToTFRecord', 'CreateSummaryFileWriter',
    'CreateSummaryDbWriter', 'WriteSummary', 'WriteScalarSummary', 'WriteHistogramSummary',
    'WriteImageSummary', 'WriteAudioSummary', 'WriteGraphSummary', 'WriteRawProtoSummary',
    'ImportEvent', 'FlushSummaryWriter', 'PrintV2', 'DecodeProtoV2', 'EncodeProto',
    'SqlDataset', 'ExperimentalSqlDataset', 'CSVDataset', 'CSVDatasetV2',
    'ExperimentalCSVDataset', 'ExperimentalLMDBDataset', 'LMDBDataset',
    # Python
    'PyFunc', 'PyFuncStateless', 'EagerPyFunc',
    # network and debugging taps
    'DebugIdentity', 'DebugIdentityV2', 'DebugIdentityV3', 'DebugNanCount',
    'DebugNumericSummary', 'DebugNumericSummaryV2', 'Send', 'Recv', '_Send', '_Recv',
    '_HostSend', '_HostRecv', 'CollectiveBcastSend', 'CollectiveBcastRecv',
    'CollectiveBcastSendV2', 'CollectiveBcastRecvV2', 'CollectiveReduce',
    'CollectiveReduceV2', 'CollectiveGather', 'CollectiveGatherV2', 'CollectiveAllToAllV2',
    'CollectiveAllToAllV3', 'RpcCall', 'RpcClient', 'RpcServer', 'RpcServerStart',
    'RpcServerRegister', 'Rpc', 'TryRpc', 'DataServiceDataset', 'DataServiceDatasetV2',
    'DataServiceDatasetV3', 'DataServiceDatasetV4', 'RegisterDataset', 'RegisterDatasetV2',
})
_TEXT_FILE_INIT = frozenset({'InitializeTableFromTextFile', 'InitializeTableFromTextFileV2'})


@dataclasses.dataclass(frozen=True)
class Finding:
  """One unsafe op: `location` is the node name, or `function/node` inside a library function;
  `root` the graph node that runs it (itself, or the node calling the function)."""
  location: str
  op: str
  root: str

  def __str__(self):
    return '%s (%s)' % (self.location, self.op)


def _calls(node, library):
  found = [node.op] if node.op in library else []
  for value in node.attr.values():
    if value.HasField('func'):
      found.append(value.func.name)
    found.extend(f.name for f in value.list.func)
  return [f for f in found if f in library]


def find_unsafe(graph_def, exempt=(), asset_tensors=()):
  """Every unsafe op of `graph_def` and of the library functions its nodes call.

  Args:
    graph_def: GraphDef.
    exempt: node names not to report (the saver's own save and restore ops).
    asset_tensors: tensor names that SavedModel loaders feed with asset paths; a text-file
      table initialiser reading one of them is how asset-backed vocabularies work.

  Returns:
    list of Finding.
  """
  library = {f.signature.name: f for f in graph_def.library.function}
  asset_tensors = _asset_derived(graph_def, asset_tensors)
  findings = []
  for node in graph_def.node:
    if node.name in exempt:
      continue
    if node.op in UNSAFE_OPS:
      if node.op in _TEXT_FILE_INIT and len(node.input) > 1 and (
          node.input[1] in asset_tensors or node.input[1] + ':0' in asset_tensors):
        continue
      findings.append(Finding(node.name, node.op, node.name))
    if not library:
      continue  # no functions to call (a TF1 graph): nothing more to walk
    stack, seen = _calls(node, library), set()
    while stack:
      name = stack.pop()
      if name in seen:
        continue
      seen.add(name)
      for inner in library[name].node_def:
        if inner.op in _TEXT_FILE_INIT and _fed_an_asset(node, asset_tensors):
          continue  # TF2: the init function reads the asset path its caller passes in
        if inner.op in UNSAFE_OPS:
          findings.append(Finding('%s/%s' % (name, inner.name), inner.op, node.name))
        stack.extend(_calls(inner, library))
  return findings


# Ops that pass an asset path on unchanged (TF2 keeps it in a variable: Assign, then Read).
_PATH_CARRIERS = frozenset({'Identity', 'ReadVariableOp', 'AssignVariableOp', 'Assign'})


def _asset_derived(graph_def, asset_tensors):
  """`asset_tensors` plus the tensors that carry those paths unchanged (no string ops)."""
  tainted = {graphs.node_name(t) for t in asset_tensors}
  changed = True
  while changed:
    changed = False
    for node in graph_def.node:
      if node.op not in _PATH_CARRIERS or node.name in tainted:
        continue
      data = [graphs.node_name(i) for i in node.input if not i.startswith('^')]
      if node.op in ('AssignVariableOp', 'Assign'):
        if len(data) > 1 and data[1] in tainted and data[0] not in tainted:
          tainted.add(data[0])  # the variable now holds the path
          changed = True
      elif data and data[0] in tainted:
        tainted.add(node.name)
        changed = True
  return {t + ':0' for t in tainted} | set(asset_tensors)


def _fed_an_asset(node, asset_tensors):
  return any(i in asset_tensors or i + ':0' in asset_tensors for i in node.input)


@dataclasses.dataclass(frozen=True)
class AssetRead:
  """A signature that reads an asset file each time it runs: `location` is the node (or
  `function/node`) whose op takes the file's path."""
  signature: str
  filename: str
  location: str
  op: str


def asset_reads(meta_graph, signatures):
  """Where the signatures themselves (not loading) take an asset file's path.

  Loading reads assets in the init op (vocabulary tables): that is how SavedModels work and a
  freezer exports what it read. A signature that opens an asset each time it runs (ReadFile of
  a `tf.saved_model.Asset` in a TF2 function) needs the file at serving time. Followed: the
  path through the ops that carry it unchanged (TF2 keeps it in a variable), then into the
  library functions a call passes it to.

  Returns:
    list of AssetRead, at most one per signature and asset.
  """
  graph_def = meta_graph.graph_def
  library = {f.signature.name: f for f in graph_def.library.function}
  nodes = {n.name: n for n in graph_def.node}
  found = []
  for asset in saved_model.asset_defs(meta_graph):
    carried = {graphs.node_name(t) for t in _asset_derived(graph_def, [asset.tensor_info.name])}
    for key in sorted(signatures):
      needed = {name for name, _ in graphs.computed_tensors(graph_def, signatures[key])}
      needed.update(graphs.node_name(o.name) for o in signatures[key].outputs.values())
      for name in sorted(needed - carried):
        node = nodes.get(name)
        if node is None:
          continue
        positions = [i for i, t in enumerate(graphs.data_inputs(node))
                     if graphs.node_name(t) in carried]
        if not positions:
          continue
        location, op = _reader_in(node, positions[0], library, depth=0)
        found.append(AssetRead(key, asset.filename, location, op))
        break
  return found


def _reader_in(node, position, library, depth):
  """(location, op) of the op that takes input `position` of `node`: the node itself, or,
  for a call of a library function, the op inside that takes the matching argument."""
  function = library.get(node.attr['f'].func.name if 'f' in node.attr else node.op)
  if function is None or depth > 10 or position >= len(function.signature.input_arg):
    return node.name, node.op
  arg = function.signature.input_arg[position].name
  carried = {arg}
  changed = True
  while changed:  # through Identity inside the function
    changed = False
    for inner in function.node_def:
      if (inner.name not in carried and inner.op in _PATH_CARRIERS and inner.input and
          inner.input[0].split(':')[0] in carried):
        carried.add(inner.name)
        changed = True
  for inner in function.node_def:
    if inner.op in _PATH_CARRIERS:
      continue
    data = [i for i in inner.input if not i.startswith('^')]
    for i, source in enumerate(data):
      if source.split(':')[0] in carried:
        location, op = _reader_in(inner, i, library, depth + 1)
        if location == inner.name:
          return '%s/%s' % (function.signature.name, inner.name), op
        return location, op
  return node.name, node.op


def needed_nodes(graph_def, signatures, init_ops=()):
  """Nodes the signatures run when fed at their inputs, plus everything `init_ops` run."""
  names = {n.name for n in graph_def.node}
  needed = set()
  for sig in signatures.values():
    needed.update(graphs.node_name(t) for t in graphs.signature_tensors(sig, 'outputs'))
    needed.update(key[0] for key in graphs.computed_tensors(graph_def, sig))
  roots = [graphs.node_name(o) for o in init_ops if graphs.node_name(o) in names]
  if roots:
    needed.update(graphs.reachable(graph_def, roots))
  return needed & names


def asset_tensors(meta_graph):
  """Names of the tensors SavedModel loaders feed with asset file paths."""
  return {a.tensor_info.name for a in saved_model.asset_defs(meta_graph)}


def check_asset_names(meta_graph, where):
  """Refuses asset file names that escape the assets directory.

  Raises:
    errors.UserError: naming the asset.
  """
  for asset in saved_model.asset_defs(meta_graph):
    name = asset.filename
    parts = name.replace('\\', '/').split('/')
    if not name or name.startswith('/') or '://' in name or '..' in parts or ':' in parts[0]:
      raise errors.UserError('%s: asset file name %r escapes the assets directory; refusing an '
                            'untrusted model' % (where, name))


def check_meta_graph(meta_graph, signatures, allowed, where):
  """The whole check for a MetaGraph about to be loaded or converted.

  Returns:
    Findings outside what loading and the signatures run.

  Raises:
    errors.UserError: an escaping asset name, or unsafe ops that would run.
  """
  check_asset_names(meta_graph, where)
  graph_def = meta_graph.graph_def
  findings = find_unsafe(graph_def, exempt=saved_model.saver_nodes(graph_def, meta_graph.saver_def),
                         asset_tensors=asset_tensors(meta_graph))
  needed = needed_nodes(graph_def, signatures, saved_model.init_ops_of(meta_graph))
  return enforce(findings, needed, allowed, where)


def enforce(findings, needed, allowed, where):
  """Stops on unsafe ops the model runs (unless allowed); logs and returns the others.

  Args:
    findings: list of Finding.
    needed: node names that loading or serving runs.
    allowed: op types the user allowed with --allow_ops.
    where: the model's path, for messages.

  Returns:
    The findings outside `needed` (which the conversion leaves out).

  Raises:
    errors.UserError: listing the unsafe ops that would run.
  """
  blocking = [f for f in findings if f.root in needed and f.op not in allowed]
  if blocking:
    ops = sorted({f.op for f in blocking})
    raise errors.UserError(
        '%s runs ops that touch files, run Python or reach the network: %s; if you trust this '
        'model, pass --allow_ops=%s' % (where, ', '.join(str(f) for f in blocking[:10]) +
                                        (' and %d more' % (len(blocking) - 10)
                                         if len(blocking) > 10 else ''), ','.join(ops)))
  return [f for f in findings if f.root not in needed]


def log_findings(findings, what):
  """One INFO line counting unsafe ops by type (`what` says what happens to them); each at -v 1."""
  if findings:
    counts = collections.Counter(f.op for f in findings)
    logging.info('%s: %s', what, ', '.join('%d %s' % (n, op) for op, n in sorted(counts.items())))
    for f in findings:
      logging.vlog(1, '%s: %s', what, f)


def unsafe_in(graph_def, allowed, where, exempt=(), asset_tensors=()):
  """For a graph about to be written: unsafe ops still in it that are not allowed.

  Args:
    graph_def: the graph to be written.
    allowed: op types the user allowed with --allow_ops.
    where: the model's path, for messages.
    exempt: node names not to report (the serving saver's own ops).
    asset_tensors: the asset tensors the written SavedModel declares (its loaders feed them):
      text-file table initialisers reading them are trusted, as `check_meta_graph` trusts them.

  Raises:
    errors.UserError: listing them.
  """
  remaining = [f for f in find_unsafe(graph_def, exempt, asset_tensors) if f.op not in allowed]
  if remaining:
    raise errors.UserError(
        'the serving graph of %s would keep ops that touch files, run Python or reach the '
        'network: %s; if you trust this model, pass --allow_ops=%s' % (
            where, ', '.join(str(f) for f in remaining[:10]),
            ','.join(sorted({f.op for f in remaining}))))
