"""Inputs for two models: generated from the signatures and the tables, or read from files.

Inputs are built per signature from its dtypes and shapes. Ids that feed a hash table are drawn
half from the table's own keys (read from the reference model) and half from keys it has never
seen, so that a converted model which lost its table contents, or answers unseen keys
differently, is caught. Strings that feed a tf.Example parser become serialized Examples with the
features the parser asks for.
"""

import collections
import dataclasses
from typing import Dict

import numpy as np

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.transforms import tables

# Ops through which an id keeps its value on the way to a table lookup.
_KEY_PRESERVING = frozenset({
    'Identity', 'IdentityN', 'Reshape', 'ExpandDims', 'Squeeze', 'Cast', 'Unique',
    'StopGradient', 'Switch', 'Merge', 'Enter', 'Exit', 'Tile', 'GatherV2', 'Gather',
    'StringStrip', 'StringLower', 'ConcatV2', 'Pack', 'DynamicPartition'})
_LOOKUP_OPS = frozenset({'LookupTableFindV2', 'LookupTableFind'})
_PARSE_OPS = frozenset({'ParseExample', 'ParseExampleV2'})


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
  node = nodes.get(graphs.node_name(name))
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
  name = graphs.node_name(name)
  while name in nodes and nodes[name].op in graphs.IDENTITY_OPS and nodes[name].input:
    name = graphs.node_name(nodes[name].input[0])
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
    raise errors.UserError('cannot make random inputs of dtype %s; pass --inputs' % dtype.name)
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
    raise errors.UserError('cannot read inputs from %s: %s' % (path, e)) from e
  out = {}
  for sig_key, sig in signatures.items():
    feeds = {}
    for key in sig.inputs:
      value = data.get('%s/%s' % (sig_key, key), data.get(key))
      if value is None:
        raise errors.UserError('%s has no array %r (or %r) for signature %r'
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
      raise errors.UserError('no TFRecord files match %s' % pattern)
    files.extend(matched)
  pattern = ','.join(patterns)
  try:
    records = [r.numpy() for r in tf.data.TFRecordDataset(files).take(num_examples)]
    examples = [tf.train.Example.FromString(r) for r in records]
  except (tf.errors.OpError, Exception) as e:  # pylint: disable=broad-except
    raise errors.UserError('cannot read tf.Example records from %s: %s'
                          % (pattern, errors.tf_error_message(e))) from e
  if not records:
    raise errors.UserError('%s holds no records' % pattern)
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
          raise errors.UserError('the records in %s have no feature %r (signature %r)'
                                % (pattern, key, sig_key))
        feature = ex.features.feature[key]
        kind = feature.WhichOneof('kind')
        rows.append(list(getattr(feature, kind).value))
      value = np.array(rows, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
      shape = _shape_for(dims, len(rows))
      feeds[key] = value.reshape(shape)
    out[sig_key] = feeds
  return out
