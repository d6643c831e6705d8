"""Run two models on the same inputs and say whether they answer the same, and how fast.

Inputs are built per signature from its dtypes and shapes. Ids that feed a hash table are drawn
half from the table's own keys (read from the reference model) and half from keys it has never
seen, so that a converted model which lost its table contents, or answers unseen keys
differently, is caught. Strings that feed a tf.Example parser become serialized Examples with the
features the parser asks for.
"""

import collections
import dataclasses
import time
from typing import Dict

import numpy as np
import tensorflow as tf

import keep_variables
import saved_model_io
import tables
import tf2_freezing
import utils

tf1 = tf.compat.v1

# Ops through which an id keeps its value on the way to a table lookup.
_KEY_PRESERVING = frozenset({
    'Identity', 'IdentityN', 'Reshape', 'ExpandDims', 'Squeeze', 'Cast', 'Unique',
    'StopGradient', 'Switch', 'Merge', 'Enter', 'Exit', 'Tile', 'GatherV2', 'Gather',
    'StringStrip', 'StringLower', 'ConcatV2', 'Pack', 'DynamicPartition'})
_LOOKUP_OPS = frozenset({'LookupTableFindV2', 'LookupTableFind'})
_PARSE_OPS = frozenset({'ParseExample', 'ParseExampleV2'})


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
    utils.UserError: the directory is not a loadable SavedModel.
  """
  proto = saved_model_io.read_saved_model_proto(export_dir)
  meta_graph = saved_model_io.select_meta_graph(proto, tags, export_dir)
  if tf2_freezing.is_object_based(meta_graph):  # tf.saved_model.save: run it as TF2 loads it
    return tf2_freezing.LoadedModel(export_dir, meta_graph, tags)
  signatures = {k: v for k, v in meta_graph.signature_def.items()
                if k != saved_model_io.INIT_OP_SIGNATURE_KEY}
  graph = tf.Graph()
  session = tf1.Session(graph=graph)
  start = time.perf_counter()
  try:
    tf1.saved_model.loader.load(session, list(tags), export_dir, clear_devices=True)
  except (tf.errors.OpError, ValueError, RuntimeError, KeyError) as e:
    session.close()
    raise utils.UserError('cannot load SavedModel %s: %s'
                          % (export_dir, utils.tf_error_message(e))) from e
  seconds = time.perf_counter() - start
  return Model(export_dir, graph, session, signatures, seconds,
               saved_model_io.directory_size(export_dir))


def load_frozen_graph(path, frozen=None):
  """Loads a GraphDef written by freezer.py or optimize_from_pb.py and fills its tables.

  A graph that keeps variables (freezer.py --keep_as_variables) is restored from the checkpoint
  beside it first, as a SavedModel loader restores variables/.

  Raises:
    utils.UserError: the file is not such a GraphDef, or its checkpoint is missing or another.
  """
  start = time.perf_counter()
  if frozen is None:
    frozen = saved_model_io.frozen_from_graph_def(saved_model_io.read_graph_def(path), path)
  if frozen is None:
    raise utils.UserError('%s has no freezer_metadata node: it was not written by freezer.py '
                          'or optimize_from_pb.py, so its signatures are unknown' % path)
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(frozen.graph_def, name='')
    except (ValueError, tf.errors.OpError) as e:
      raise utils.UserError('cannot import %s: %s' % (path, utils.tf_error_message(e))) from e
  prefix = keep_variables.checkpoint_of(frozen, path) if frozen.saver_def else None
  session = tf1.Session(graph=graph)
  if prefix:
    keep_variables.restore(session, frozen, prefix)
  if frozen.table_init_op:
    session.run(graph.get_operation_by_name(frozen.table_init_op))
  seconds = time.perf_counter() - start
  size = saved_model_io.directory_size(path)
  if prefix:
    size += saved_model_io.directory_size(utils.parent_dir(prefix))
  return Model(path, graph, session, frozen.signatures, seconds, size)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class ExampleSpec:
  """The features a tf.Example parser reads: name -> (dtype, shape or None for sparse)."""
  features: Dict[str, tuple]


def _consumers(graph_def):
  out = collections.defaultdict(list)
  for node in graph_def.node:
    for pos, name in enumerate(node.input):
      if not name.startswith('^'):
        node_name, _, index = name.partition(':')
        out[(node_name, int(index or 0))].append((node, pos))
  return out


def _const_value(nodes, name):
  node = nodes.get(saved_model_io.node_name(name))
  if node is None or node.op != 'Const':
    return None
  return tf.make_ndarray(node.attr['value'].tensor)


def _example_spec(nodes, node):
  """Reads the features a ParseExample / ParseExampleV2 node asks for."""
  dense_types = [tf.as_dtype(t) for t in node.attr['Tdense'].list.type]
  shapes = [tuple(max(d.size, 1) for d in s.dim) for s in node.attr['dense_shapes'].list.shape]
  sparse_types = [tf.as_dtype(t) for t in node.attr['sparse_types'].list.type]
  if node.op == 'ParseExample':
    ns, nd = node.attr['Nsparse'].i, node.attr['Ndense'].i
    sparse_keys = [_const_value(nodes, node.input[2 + i]) for i in range(ns)]
    dense_keys = [_const_value(nodes, node.input[2 + ns + i]) for i in range(nd)]
  else:
    sparse_keys = list(np.ravel(_const_value(nodes, node.input[2])))
    dense_keys = list(np.ravel(_const_value(nodes, node.input[3])))
  features = {}
  for key, dtype, shape in zip(dense_keys, dense_types, shapes):
    features[np.asarray(key).item().decode()] = (dtype, shape)
  for key, dtype in zip(sparse_keys, sparse_types):
    features[np.asarray(key).item().decode()] = (dtype, None)
  return ExampleSpec(features)


def trace_input(model, tensor_name):
  """Follows a signature input to the tables it is looked up in, or the parser it feeds.

  Returns:
    (list of table NodeDefs, ExampleSpec or None).
  """
  nodes = {n.name: n for n in model.graph_def.node}
  consumers = _consumers(model.graph_def)
  node_name, _, index = tensor_name.partition(':')
  frontier, seen = [(node_name, int(index or 0))], set()
  found_tables, spec = [], None
  while frontier:
    tensor = frontier.pop()
    if tensor in seen or len(seen) > 1000:
      continue
    seen.add(tensor)
    for node, pos in consumers.get(tensor, []):
      if node.op in _LOOKUP_OPS and pos == 1:
        table = nodes.get(_handle_source(nodes, node.input[0]))
        if table is not None and table.op in tables.TABLE_OPS and table not in found_tables:
          found_tables.append(table)
      elif node.op in _PARSE_OPS and pos == 0 and spec is None:
        spec = _example_spec(nodes, node)
      elif node.op in _KEY_PRESERVING:
        # Every output: DynamicPartition routes ids to one output per table shard.
        frontier.extend((node.name, i) for i in range(max(4, node.attr['num_partitions'].i)))
  return found_tables, spec


def _handle_source(nodes, name):
  name = saved_model_io.node_name(name)
  while name in nodes and nodes[name].op in ('Identity', 'Enter', 'Switch') and nodes[name].input:
    name = saved_model_io.node_name(nodes[name].input[0])
  return name


def _random_values(rng, dtype, shape, pool=None):
  """Random values of `dtype`: ids drawn half from `pool` (known keys), half unseen."""
  size = int(np.prod(shape)) if shape else 1
  if dtype in (tf.string,):
    values = np.array([b'unseen_%d' % rng.randint(1 << 30) for _ in range(size)], dtype=object)
  elif dtype.is_integer:
    high = min(dtype.max, 2**62)
    low = max(dtype.min, 0)
    values = rng.randint(low, high, size=size, dtype=np.int64).astype(dtype.as_numpy_dtype)
  elif dtype.is_bool:
    values = rng.rand(size) < 0.5
  elif dtype.is_floating:
    values = rng.normal(size=size).astype(dtype.as_numpy_dtype)
  else:
    raise utils.UserError('cannot make random inputs of dtype %s; pass --inputs' % dtype.name)
  if pool is not None and len(pool):
    known = rng.rand(size) < 0.5
    picks = np.asarray(pool)[rng.randint(0, len(pool), size=size)]
    values = np.where(known, picks.astype(values.dtype), values)
  return values.reshape(shape)


def _example_strings(rng, spec, batch):
  examples = []
  for _ in range(batch):
    row = {}
    for name, (dtype, shape) in spec.features.items():
      shape = shape if shape is not None else (rng.randint(1, 4),)
      row[name] = _random_values(rng, dtype, shape)
    examples.append(_make_example(row).SerializeToString())
  return np.array(examples, dtype=object)


def _make_example(row):
  feats = {}
  for name, value in row.items():
    value = np.ravel(value)
    if value.dtype.kind in 'iub':
      feats[name] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=value.astype(np.int64).tolist()))
    elif value.dtype.kind == 'f':
      feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))
    else:
      feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
  return tf.train.Example(features=tf.train.Features(feature=feats))


def input_spec(model, info):
  """(dtype, dims with -1 for unknown) of a signature input, from the graph where it knows.

  Signatures can be wrong (half_plus_three's declare x:0 a scalar, tf_example:0 a float); the
  graph's own tensor is the truth, the signature a fallback when the graph does not know.
  """
  tensor = model.graph.get_tensor_by_name(info.name)
  dtype = tensor.dtype.base_dtype
  if tensor.shape.rank is not None:
    return dtype, [-1 if d is None else d for d in tensor.shape.as_list()]
  if info.tensor_shape.unknown_rank or not info.tensor_shape.dim:
    return dtype, None
  return dtype, [d.size for d in info.tensor_shape.dim]


def _shape_for(dims, batch):
  if dims is None:
    return (batch,)
  return tuple(batch if (i == 0 and d < 0) else (d if d >= 0 else 1)
               for i, d in enumerate(dims))


class InputMaker:
  """Builds seeded inputs for a model's signatures, with table keys read from that model."""

  def __init__(self, model, seed):
    self._model = model
    self._seed = seed
    self._table_keys = {}

  def _keys(self, table):
    if table.name not in self._table_keys:
      self._table_keys[table.name] = tables.export_table(self._model.session, table).keys
    return self._table_keys[table.name]

  def make(self, sig_key, batch):
    """{input key: array} for `batch` examples of signature `sig_key`."""
    rng = np.random.RandomState(self._seed + batch)
    sig = self._model.signatures[sig_key]
    feeds = {}
    for key in sorted(sig.inputs):
      info = sig.inputs[key]
      dtype, dims = input_spec(self._model, info)
      shape = _shape_for(dims, batch)
      found, spec = trace_input(self._model, info.name)
      if spec is not None and dtype == tf.string:
        feeds[key] = _example_strings(rng, spec, int(np.prod(shape))).reshape(shape)
        continue
      pool = None
      if found:
        pool = np.concatenate([np.ravel(self._keys(t)) for t in found])
      feeds[key] = _random_values(rng, dtype, shape, pool)
    return feeds


def inputs_from_npz(path, signatures):
  """{sig key: {input key: array}} from an .npz holding 'input' or 'signature/input' arrays."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = dict(np.load(f, allow_pickle=False))
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise utils.UserError('cannot read inputs from %s: %s' % (path, e)) from e
  out = {}
  for sig_key, sig in signatures.items():
    feeds = {}
    for key in sig.inputs:
      value = data.get('%s/%s' % (sig_key, key), data.get(key))
      if value is None:
        raise utils.UserError('%s has no array %r (or %r) for signature %r'
                              % (path, key, '%s/%s' % (sig_key, key), sig_key))
      feeds[key] = value.astype(object) if value.dtype.kind in 'SU' else value
    out[sig_key] = feeds
  return out


def inputs_from_tfrecords(patterns, model, num_examples):
  """{sig key: {input key: array}} from TFRecord files (globs allowed) of tf.Example.

  An input that feeds a tf.Example parser gets the serialized records; any other input gets
  the feature of the same name, stacked over the examples.
  """
  files = []
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise utils.UserError('no TFRecord files match %s' % pattern)
    files.extend(matched)
  pattern = ','.join(patterns)
  try:
    records = [r.numpy() for r in tf.data.TFRecordDataset(files).take(num_examples)]
    examples = [tf.train.Example.FromString(r) for r in records]
  except (tf.errors.OpError, Exception) as e:  # pylint: disable=broad-except
    raise utils.UserError('cannot read tf.Example records from %s: %s'
                          % (pattern, utils.tf_error_message(e))) from e
  if not records:
    raise utils.UserError('%s holds no records' % pattern)
  out = {}
  for sig_key, sig in model.signatures.items():
    feeds = {}
    for key in sorted(sig.inputs):
      info = sig.inputs[key]
      dtype, dims = input_spec(model, info)
      _, spec = trace_input(model, info.name)
      if spec is not None and dtype == tf.string:
        feeds[key] = np.array(records, dtype=object)
        continue
      rows = []
      for ex in examples:
        if key not in ex.features.feature:
          raise utils.UserError('the records in %s have no feature %r (signature %r)'
                                % (pattern, key, sig_key))
        feature = ex.features.feature[key]
        kind = feature.WhichOneof('kind')
        rows.append(list(getattr(feature, kind).value))
      value = np.array(rows, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
      shape = _shape_for(dims, len(rows))
      feeds[key] = value.reshape(shape)
    out[sig_key] = feeds
  return out


# ---------------------------------------------------------------------------------------------
# Comparison


@dataclasses.dataclass
class OutputResult:
  signature: str
  output: str
  max_abs: float
  max_rel: float
  passed: bool
  detail: str = ''


def compare_arrays(reference, new, atol, rtol):
  """(max abs error, max relative error, passed, detail) for two output arrays."""
  reference, new = np.asarray(reference), np.asarray(new)
  if reference.shape != new.shape:
    return float('inf'), float('inf'), False, 'shape %s vs %s' % (reference.shape, new.shape)
  if reference.dtype.kind in 'OSU' or new.dtype.kind in 'OSU':
    equal = reference == new
    passed = bool(np.all(equal))
    return (0.0, 0.0, True, '') if passed else (float('inf'), float('inf'), False,
                                                '%d strings differ' % int(np.sum(~equal)))
  a, b = reference.astype(np.float64), new.astype(np.float64)
  both_nan = np.isnan(a) & np.isnan(b)
  diff = np.where(both_nan, 0.0, np.abs(a - b))
  diff = np.where(np.isnan(diff), np.inf, diff)
  scale = np.abs(a)
  rel = np.divide(diff, scale, out=np.where(diff > 0, np.inf, 0.0), where=scale > 0)
  max_abs = float(diff.max()) if diff.size else 0.0
  max_rel = float(rel.max()) if rel.size else 0.0
  passed = bool(np.all(diff <= atol + rtol * scale))
  return max_abs, max_rel, passed, ''


def compare(reference, new, feeds_by_signature, atol, rtol):
  """Runs both models on the same inputs; returns a list of OutputResult."""
  results = []
  for sig_key, feeds in feeds_by_signature.items():
    ref_out = run_or_explain(reference, sig_key, feeds)
    new_out = run_or_explain(new, sig_key, feeds)
    for out_key in sorted(ref_out):
      if out_key not in new_out:
        results.append(OutputResult(sig_key, out_key, float('inf'), float('inf'), False,
                                    'missing from %s' % new.name))
        continue
      max_abs, max_rel, passed, detail = compare_arrays(ref_out[out_key], new_out[out_key],
                                                        atol, rtol)
      results.append(OutputResult(sig_key, out_key, max_abs, max_rel, passed, detail))
  return results


def run_or_explain(model, sig_key, feeds):
  """model.run, with a failure on the inputs turned into a one-line UserError."""
  try:
    return model.run(sig_key, feeds)
  except (tf.errors.OpError, ValueError) as e:
    raise utils.UserError(
        '%s failed to run signature %r on the inputs (%s): %s; pass inputs of the right shape '
        'with --inputs, or leave the signature out with --signature_def' % (
            model.name, sig_key, ', '.join('%s%s' % (k, list(np.shape(v)))
                                           for k, v in sorted(feeds.items())),
            utils.tf_error_message(e))) from e


def latency(model, sig_key, feeds, runs):
  """(median, p99) seconds of `runs` calls after 3 warm-up calls."""
  for _ in range(3):
    model.run(sig_key, feeds)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    model.run(sig_key, feeds)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), float(np.percentile(times, 99))


def common_signatures(reference, new, names=None):
  """Signature keys both models have (or `names`, checked), in a stable order.

  Raises:
    utils.UserError: a requested or reference signature missing from the new model.
  """
  wanted = list(names) if names else sorted(reference.signatures)
  for key in wanted:
    for model in (reference, new):
      if key not in model.signatures:
        raise utils.UserError('%s has no signature %r; it has: %s'
                              % (model.name, key, ', '.join(sorted(model.signatures))))
  return wanted
