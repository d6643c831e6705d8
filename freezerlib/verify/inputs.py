"""Inputs for two models: generated from the signatures and the tables, or read from files.

Inputs are built per signature from its dtypes and shapes (trace.py says where each goes). Ids
that feed a hash table are drawn half from the table's own keys (read from the reference
model: trained keys, vocabulary lists and files, Keras lookup layers' vocabularies) and half
from keys it has never seen, so that a converted model which lost its table contents, or
answers unseen keys differently, is caught. Ids that index an embedding are drawn inside its
row count. Strings that feed a tf.Example parser become serialized Examples with the features
the parser asks for, each drawn the same way. A sparse input gets a SparseTensorValue of
0 to 3 values per row, a ragged one a RaggedTensorValue. Every sparse input of one signature
(and every VarLen feature of one tf.Example) has the same number of values in a row: a
weighted categorical column reads two of them, ids and weights, which must have the same
indices, and nothing in the graph says which two pair.

Read from an .npz, a string array must arrive byte for byte: numpy's fixed-width bytes
(dtype S) drop trailing NUL bytes, and a serialized tf.Example can end in one. Such an array
is taken only when none of its strings is shorter than its width (then none lost anything);
else it is refused. The lossless form is KEY.bytes (uint8, the strings concatenated) with
KEY.lengths (int64, each string's length, in the input's shape), which `save_npz` writes;
nothing is ever unpickled. A sparse input is KEY.indices, KEY.values, KEY.dense_shape; a
ragged one KEY.values, KEY.row_splits (KEY.row_splits_1, ...).
"""

import contextlib
import io

import numpy as np

from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.verify import loaders
from freezerlib.verify import trace as trace_lib


def _random_values(rng, dtype, shape, pool=None, bound=None):
  """Random values of `dtype`: ids drawn half from `pool` (known keys), half unseen; with
  `bound`, integers in [0, bound) (the rows of the embedding they index)."""
  size = int(np.prod(shape)) if shape else 1
  if dtype in (tf.string,):
    values = np.array([b'unseen_%d' % rng.randint(1 << 30) for _ in range(size)], dtype=object)
  elif dtype.is_integer:
    high = min(dtype.max, 2**62) if bound is None else min(dtype.max, bound)
    low = max(dtype.min, 0)
    values = rng.randint(low, max(high, low + 1), size=size,
                         dtype=np.int64).astype(dtype.as_numpy_dtype)
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


def _row_lengths(rng, rows):
  """0 to 3 values per row, some rows empty: what VarLen features look like."""
  return rng.randint(0, 4, size=rows)


def input_spec(model, info):
  """(dtype, dims with -1 for unknown) of a dense signature input, from the graph where it
  knows.

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
    self._tracer = trace_lib.Tracer(model.graph_def)
    self._traces = {}

  def _keys(self, table):
    if table.name not in self._table_keys:
      self._table_keys[table.name] = self._model.table_keys(table)
    return self._table_keys[table.name]

  def trace(self, tensor_name):
    """The trace_lib.Trace of one of the model's tensors (cached)."""
    if tensor_name not in self._traces:
      self._traces[tensor_name] = self._tracer.trace(tensor_name)
    return self._traces[tensor_name]

  def _pool(self, found):
    if not found.tables:
      return None
    return np.concatenate([np.ravel(self._keys(t)) for t in found.tables])

  def values(self, rng, dtype, shape, found):
    """Random values for a tensor whose Trace is `found`: known keys, vocabulary words and
    unseen ones; ids within the rows of the embedding they index."""
    return _random_values(rng, dtype, shape, self._pool(found), found.bound)

  def make(self, sig_key, batch):
    """{input key: value} for `batch` examples of signature `sig_key` (see module doc)."""
    rng = np.random.RandomState(self._seed + batch)
    sig = self._model.signatures[sig_key]
    feeds = {}
    lengths = _row_lengths(rng, batch)  # of every sparse input (see the module doc)
    for key in sorted(sig.inputs):
      info = sig.inputs[key]
      encoding = info.WhichOneof('encoding')
      if encoding == 'coo_sparse':
        feeds[key] = self._sparse(rng, info, lengths)
        continue
      if encoding == 'composite_tensor':
        feeds[key] = self._ragged(rng, info, batch)
        continue
      dtype, dims = input_spec(self._model, info)
      shape = _shape_for(dims, batch)
      found = self.trace(info.name)
      if found.features is not None and dtype == tf.string:
        feeds[key] = self.examples(rng, found.features, int(np.prod(shape))).reshape(shape)
        continue
      feeds[key] = self.values(rng, dtype, shape, found)
    return feeds

  def _sparse(self, rng, info, lengths):
    shape = info.tensor_shape
    rank = max(2, len(shape.dim)) if not shape.unknown_rank else 2
    batch = len(lengths)
    n = int(lengths.sum())
    indices = np.zeros((n, rank), np.int64)
    indices[:, 0] = np.repeat(np.arange(batch), lengths)
    indices[:, 1] = np.concatenate([np.arange(k) for k in lengths]) if n else []
    dense_shape = np.array([batch, int(lengths.max(initial=0))] + [1] * (rank - 2),
                           np.int64)
    dtype = tf.as_dtype(info.dtype).base_dtype
    values = self.values(rng, dtype, (n,), self.trace(info.coo_sparse.values_tensor_name))
    return loaders.sparse_value(indices, values, dense_shape)

  def _ragged(self, rng, info, batch):
    components = list(info.composite_tensor.components)
    if len(components) < 2:
      raise errors.UserError('cannot make random inputs for a composite input of %d '
                             'components; pass --inputs' % len(components))
    rows, splits = batch, []
    for component in components[1:]:
      lengths = _row_lengths(rng, rows)
      dtype = tf.as_dtype(component.dtype).as_numpy_dtype
      splits.append(np.concatenate([[0], np.cumsum(lengths)]).astype(dtype))
      rows = int(lengths.sum())
    dtype = tf.as_dtype(components[0].dtype).base_dtype
    values = self.values(rng, dtype, (rows,), self.trace(components[0].name))
    return loaders.ragged_value(values, *splits)

  def examples(self, rng, features, batch):
    """`batch` serialized tf.Examples with the features a parser reads (trace_lib.Feature):
    required ones always, others mostly; values as `values` draws them."""
    out = []
    for _ in range(batch):
      row = {}
      length = int(_row_lengths(rng, 1)[0])  # of every VarLen feature (see the module doc)
      for name in sorted(features):
        feature = features[name]
        if feature.kind == 'dense':
          if not (rng.rand() < 0.9 or feature.required):
            continue
          shape = tuple(max(d, 1) for d in feature.shape) or (1,)
        else:  # an absent VarLen feature is an empty one: its length says
          shape = (length,)
        found = feature.trace or trace_lib.Trace()
        row[name] = self.values(rng, feature.dtype, shape, found)
      out.append(_make_example(row).SerializeToString())
    return np.array(out, dtype=object)


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


# ---------------------------------------------------------------------------------------------
# .npz files


def _string_array(path, data, name):
  """The string array `name` of an .npz (fixed width, if lossless, or NAME.bytes and
  NAME.lengths) as an object array of bytes; None when absent.

  Raises:
    errors.UserError: a fixed-width array that may have lost trailing NUL bytes.
  """
  if name in data:
    value = data[name]
    if value.dtype.kind in 'SU':
      width = value.dtype.itemsize // (4 if value.dtype.kind == 'U' else 1)
      lengths = np.char.str_len(value) if value.size else np.zeros(0, int)
      if np.any(lengths < width):
        raise errors.UserError(
            'array %r of %s holds fixed-width strings (dtype %s), some shorter than the width: '
            'numpy drops trailing NUL bytes on read, so they may not be the strings saved (a '
            'serialized tf.Example can end in one); store it as %r (uint8, the strings '
            'concatenated) and %r (int64, each one\'s length), as '
            'freezerlib.verify.inputs.save_npz does' % (name, path, value.dtype.str.lstrip('<|'),
                                                         name + '.bytes', name + '.lengths'))
      if value.dtype.kind == 'U':
        return np.vectorize(lambda s: s.encode('utf-8'), otypes=[object])(value)
      return value.astype(object)
    return value
  if name + '.bytes' in data and name + '.lengths' in data:
    raw, lengths = data[name + '.bytes'], data[name + '.lengths']
    if raw.dtype != np.uint8 or raw.ndim != 1 or lengths.dtype.kind not in 'iu' or (
        int(lengths.sum()) != raw.size or np.any(lengths < 0)):
      raise errors.UserError('arrays %r and %r of %s do not match: give the strings\' bytes '
                             'concatenated (uint8) and their lengths (int64)'
                             % (name + '.bytes', name + '.lengths', path))
    data_bytes = raw.tobytes()
    ends = np.cumsum(np.ravel(lengths))
    starts = ends - np.ravel(lengths)
    items = np.empty(len(ends), dtype=object)
    for i, (a, b) in enumerate(zip(starts, ends)):
      items[i] = data_bytes[a:b]
    return items.reshape(lengths.shape)
  return None


def save_npz(path, feeds):
  """Writes {name: value} as an .npz inputs_from_npz reads back exactly.

  String arrays are stored as NAME.bytes and NAME.lengths (no pickling, no width), sparse
  values as NAME.indices, NAME.values, NAME.dense_shape, ragged ones as NAME.values,
  NAME.row_splits (NAME.row_splits_1, ...). `name` is an input key or 'signature/key'.
  """
  arrays = {}

  def put(name, value):
    value = np.asarray(value)
    if value.dtype.kind in 'OSU':
      items = [v.encode('utf-8') if isinstance(v, str) else bytes(v) for v in value.ravel()]
      arrays[name + '.bytes'] = np.frombuffer(b''.join(items), dtype=np.uint8)
      arrays[name + '.lengths'] = np.array([len(v) for v in items],
                                           np.int64).reshape(value.shape)
    else:
      arrays[name] = value

  for name, value in feeds.items():
    if isinstance(value, tf.compat.v1.SparseTensorValue):
      put(name + '.indices', value.indices)
      put(name + '.values', value.values)
      put(name + '.dense_shape', value.dense_shape)
    elif isinstance(value, tf.compat.v1.ragged.RaggedTensorValue):
      splits = []
      while isinstance(value, tf.compat.v1.ragged.RaggedTensorValue):
        splits.append(value.row_splits)
        value = value.values
      put(name + '.values', value)
      for i, s in enumerate(splits):
        put(name + ('.row_splits' if i == 0 else '.row_splits_%d' % i), s)
    else:
      put(name, value)
  buffer = io.BytesIO()  # zip needs a seekable file; remote ones are not
  np.savez(buffer, **arrays)
  files.write(path, buffer.getvalue())


def inputs_from_npz(path, signatures):
  """{sig key: {input key: value}} from an .npz (see the module doc for its arrays).

  Raises:
    errors.UserError: unreadable file, a missing array, or a lossy string array.
  """
  try:
    data = dict(np.load(io.BytesIO(files.read(path)), allow_pickle=False))
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise errors.UserError('cannot read inputs from %s: %s' % (path, e)) from e
  out = {}
  for sig_key, sig in signatures.items():
    feeds = {}
    for key in sig.inputs:
      info = sig.inputs[key]
      base = None
      for name in ('%s/%s' % (sig_key, key), key):
        if any(n == name or n.startswith(name + '.') for n in data):
          base = name
          break
      if base is None:
        raise errors.UserError('%s has no array %r (or %r) for signature %r'
                               % (path, key, '%s/%s' % (sig_key, key), sig_key))
      feeds[key] = _npz_value(path, data, base, info)
    out[sig_key] = feeds
  return out


def _npz_value(path, data, base, info):
  def need(name):
    value = _string_array(path, data, name)
    if value is None:
      raise errors.UserError('%s has no array %r (the input %r is %s)' % (
          path, name, base, 'sparse' if info.WhichOneof('encoding') == 'coo_sparse' else
          'ragged' if info.WhichOneof('encoding') == 'composite_tensor' else 'dense'))
    return value

  encoding = info.WhichOneof('encoding')
  if encoding == 'coo_sparse':
    return loaders.sparse_value(need(base + '.indices'), need(base + '.values'),
                                need(base + '.dense_shape'))
  if encoding == 'composite_tensor':
    splits = [need(base + ('.row_splits' if i == 0 else '.row_splits_%d' % i))
              for i in range(len(info.composite_tensor.components) - 1)]
    return loaders.ragged_value(need(base + '.values'), *splits)
  return need(base)


# ---------------------------------------------------------------------------------------------
# TFRecord files


def _feature_values(example, key):
  if key not in example.features.feature:
    return None
  feature = example.features.feature[key]
  kind = feature.WhichOneof('kind')
  return list(getattr(feature, kind).value) if kind else []


def inputs_from_tfrecords(patterns, model, num_examples):
  """{sig key: {input key: value}} from TFRecord files (globs allowed) of tf.Example.

  An input that feeds a tf.Example parser gets the serialized records; any other input gets
  the feature of the same name: stacked over the examples for a dense input (every example
  must have it), as a SparseTensorValue or RaggedTensorValue of each example's values for a
  sparse or ragged one (what parse_example makes of a VarLen or Ragged feature).

  Raises:
    errors.UserError: no files, unreadable records, or records without a dense input's feature.
  """
  paths = []
  for pattern in patterns:
    try:
      matched = files.glob(pattern)
    except OSError as e:
      raise errors.UserError('cannot list %s: %s' % (pattern, errors.tf_error_message(e))) from e
    if not matched:
      raise errors.UserError('no TFRecord files match %s' % pattern)
    paths.extend(matched)
  pattern = ','.join(patterns)
  try:
    with contextlib.ExitStack() as staged:  # TensorFlow reads local copies of remote records
      local = [staged.enter_context(files.local_copy(p)) for p in paths]
      records = [r.numpy() for r in tf.data.TFRecordDataset(local).take(num_examples)]
    examples = [tf.train.Example.FromString(r) for r in records]
  except (tf.errors.OpError, Exception) as e:
    raise errors.UserError('cannot read tf.Example records from %s: %s'
                          % (pattern, errors.tf_error_message(e))) from e
  if not records:
    raise errors.UserError('%s holds no records' % pattern)
  tracer = trace_lib.Tracer(model.graph_def)
  out = {}
  for sig_key, sig in model.signatures.items():
    feeds = {}
    for key in sorted(sig.inputs):
      info = sig.inputs[key]
      encoding = info.WhichOneof('encoding')
      if encoding != 'name':
        rows = [_feature_values(ex, key) for ex in examples]
        if all(r is None for r in rows):
          raise errors.UserError('the records in %s have no feature %r (signature %r)'
                                 % (pattern, key, sig_key))
        rows = [r or [] for r in rows]
        if encoding == 'coo_sparse':
          dtype = tf.as_dtype(info.dtype).base_dtype
          feeds[key] = _sparse_rows(rows, dtype, max(2, len(info.tensor_shape.dim)))
        else:
          components = info.composite_tensor.components
          lengths = [len(r) for r in rows]
          splits = np.concatenate([[0], np.cumsum(lengths)]).astype(
              tf.as_dtype(components[1].dtype).as_numpy_dtype)
          feeds[key] = loaders.ragged_value(
              _flat(rows, tf.as_dtype(components[0].dtype)), splits)
        continue
      dtype, dims = input_spec(model, info)
      found = tracer.trace(info.name)
      if found.features is not None and dtype == tf.string:
        feeds[key] = np.array(records, dtype=object)
        continue
      rows = []
      for ex in examples:
        values = _feature_values(ex, key)
        if values is None:
          raise errors.UserError('the records in %s have no feature %r (signature %r)'
                                % (pattern, key, sig_key))
        rows.append(values)
      value = np.array(rows, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
      shape = _shape_for(dims, len(rows))
      feeds[key] = value.reshape(shape)
    out[sig_key] = feeds
  return out


def _flat(rows, dtype):
  values = [v for r in rows for v in r]
  return np.array(values, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)


def _sparse_rows(rows, dtype, rank):
  n = sum(len(r) for r in rows)
  indices = np.zeros((n, rank), np.int64)
  pos = 0
  for i, r in enumerate(rows):
    indices[pos:pos + len(r), 0] = i
    indices[pos:pos + len(r), 1] = np.arange(len(r))
    pos += len(r)
  dense_shape = [len(rows), max([len(r) for r in rows] + [0])] + [1] * (rank - 2)
  return loaders.sparse_value(indices, _flat(rows, dtype), dense_shape)
