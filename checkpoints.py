"""TensorFlow V2 checkpoints: read their index, check them, and copy tensors without holding them.

A checkpoint `PREFIX` is `PREFIX.index` (a table of tensor name -> BundleEntryProto: dtype,
shape, the data shard and byte range, or for a partitioned variable its slices) and
`PREFIX.data-0000k-of-0000n`, one data file per shard (a parameter-server cluster writes one per
PS task). The index is read here directly (its format is LevelDB's table, which TensorFlow's
`table.cc` writes), because no public API lists a partitioned variable's slices, and the slice
layout is what decides whether a serving graph reads the same rows the training graph wrote.

Copying goes tensor by tensor, in row chunks of bounded size, with TensorFlow's own
`RestoreV2` (which can read any slice) and `SaveV2` (which can write one), then `MergeV2Checkpoints`
joins the pieces: peak memory is one chunk, whatever the checkpoint's size.
"""

import dataclasses
import struct
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from google.protobuf import message as pb_message
from tensorflow.core.protobuf import tensor_bundle_pb2

import utils

_TABLE_MAGIC = 0xdb4775248b80fb57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5


def _varint(buf, pos):
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError('truncated varint')
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7f) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def _snappy_uncompress(buf):
  """Snappy's block format (tables written by older TensorFlow releases compress their blocks)."""
  length, pos = _varint(buf, 0)
  out = bytearray()
  while pos < len(buf):
    tag = buf[pos]
    pos += 1
    kind = tag & 3
    if kind == 0:  # literal
      n = tag >> 2
      if n >= 60:
        extra = n - 59
        n = int.from_bytes(buf[pos:pos + extra], 'little')
        pos += extra
      n += 1
      out += buf[pos:pos + n]
      pos += n
      continue
    if kind == 1:
      n = 4 + ((tag >> 2) & 7)
      offset = ((tag >> 5) << 8) | buf[pos]
      pos += 1
    else:
      n = (tag >> 2) + 1
      width = 2 if kind == 2 else 4
      offset = int.from_bytes(buf[pos:pos + width], 'little')
      pos += width
    if offset == 0 or offset > len(out):
      raise ValueError('corrupt snappy block')
    for _ in range(n):  # copies may overlap their own output
      out.append(out[-offset])
  if len(out) != length:
    raise ValueError('corrupt snappy block')
  return bytes(out)


def _block_entries(data, offset, size):
  """Yields (key, value) of one table block (prefix-compressed, with restart array)."""
  if offset + size + _BLOCK_TRAILER_SIZE > len(data):
    raise ValueError('block past the end of the file')
  block = data[offset:offset + size]
  compression = data[offset + size]
  if compression == 1:
    block = _snappy_uncompress(block)
  elif compression != 0:
    raise ValueError('unknown block compression %d' % compression)
  num_restarts = struct.unpack_from('<I', block, len(block) - 4)[0]
  limit = len(block) - 4 - 4 * num_restarts
  if limit < 0:
    raise ValueError('bad restart array')
  pos, key = 0, b''
  while pos < limit:
    shared, pos = _varint(block, pos)
    non_shared, pos = _varint(block, pos)
    value_len, pos = _varint(block, pos)
    key = key[:shared] + block[pos:pos + non_shared]
    pos += non_shared
    yield key, block[pos:pos + value_len]
    pos += value_len


def _table_items(data):
  if len(data) < _FOOTER_SIZE:
    raise ValueError('too short for a table (%d bytes)' % len(data))
  footer = data[-_FOOTER_SIZE:]
  if struct.unpack('<Q', footer[-8:])[0] != _TABLE_MAGIC:
    raise ValueError('bad magic number: not a checkpoint index')
  _, pos = _varint(footer, 0)   # metaindex offset
  _, pos = _varint(footer, pos)  # metaindex size
  index_offset, pos = _varint(footer, pos)
  index_size, pos = _varint(footer, pos)
  for _, handle in _block_entries(data, index_offset, index_size):
    offset, p = _varint(handle, 0)
    size, _ = _varint(handle, p)
    yield from _block_entries(data, offset, size)


@dataclasses.dataclass
class Checkpoint:
  """A checkpoint's index: prefix, number of data shards, name -> BundleEntryProto.

  Attributes:
    slice_bytes: for a partitioned tensor, the bytes of its slices (stored as entries of their
      own, keyed by an encoding of name and extents).
    extents: (shard, end offset) of every stored entry, slices included, to check data files.
  """
  prefix: str
  num_shards: int
  entries: Dict[str, tensor_bundle_pb2.BundleEntryProto]
  slice_bytes: Dict[str, int]
  extents: List[tuple]

  def data_files(self):
    return ['%s.data-%05d-of-%05d' % (self.prefix, k, self.num_shards)
            for k in range(self.num_shards)]

  def nbytes(self, name):
    """Bytes of a tensor's values, summed over its slices."""
    entry = self.entries[name]
    return self.slice_bytes.get(name, 0) if entry.slices else entry.size

  def tensor_names(self):
    return sorted(self.entries)


def resolve_prefix(path):
  """A checkpoint prefix from a prefix or a directory holding a `checkpoint` state file.

  Raises:
    utils.UserError: nothing there is a checkpoint.
  """
  if tf.io.gfile.isdir(path):
    try:
      state = tf.compat.v1.train.get_checkpoint_state(path)
    except (tf.errors.OpError, ValueError, pb_message.DecodeError) as e:
      raise utils.UserError('cannot read the checkpoint state file in %s: %s' % (path, e)) from e
    if state is None or not state.model_checkpoint_path:
      raise utils.UserError('%s holds no `checkpoint` state file: pass a checkpoint prefix '
                            '(e.g. %s/model.ckpt-1000) instead' % (path, path.rstrip('/')))
    prefix = state.model_checkpoint_path
    if not prefix.startswith('/') and '://' not in prefix:
      prefix = utils.join(path, prefix)
    return prefix
  if not tf.io.gfile.exists(path + '.index'):
    parent = utils.parent_dir(path)
    if not tf.io.gfile.exists(path) and parent and not tf.io.gfile.exists(parent):
      raise utils.UserError('checkpoint %s does not exist' % path)
    raise utils.UserError('checkpoint %s: no %s.index (pass a prefix such as '
                          'model.ckpt-1000, or the directory holding `checkpoint`)' % (path, path))
  return path


def read_index(prefix):
  """Parses PREFIX.index and checks every data shard is there and long enough.

  Raises:
    utils.UserError: a missing, truncated or corrupt index or data shard, named.
  """
  index_path = prefix + '.index'
  try:
    data = tf.io.gfile.GFile(index_path, 'rb').read()
  except tf.errors.OpError as e:
    raise utils.UserError('cannot read %s: %s' % (index_path, utils.tf_error_message(e))) from e
  entries, slice_bytes, extents, num_shards = {}, {}, [], None
  try:
    for key, value in _table_items(data):
      if not key:
        num_shards = tensor_bundle_pb2.BundleHeaderProto.FromString(value).num_shards
        continue
      entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
      if entry.size:
        extents.append((entry.shard_id, entry.offset + entry.size))
      if key.startswith(b'\x00'):
        # One slice of a partitioned tensor: key = NUL + name + NUL + encoded extents.
        name = key[1:key.index(b'\x00', 1)].decode('utf-8')
        slice_bytes[name] = slice_bytes.get(name, 0) + entry.size
      else:
        entries[key.decode('utf-8')] = entry
  except (ValueError, struct.error, UnicodeDecodeError, pb_message.DecodeError) as e:
    raise utils.UserError('%s is truncated or corrupt (%s)' % (index_path, e)) from e
  if num_shards is None:
    raise utils.UserError('%s has no header: truncated or not a checkpoint index' % index_path)
  checkpoint = Checkpoint(prefix=prefix, num_shards=num_shards, entries=entries,
                          slice_bytes=slice_bytes, extents=extents)
  _check_data_files(checkpoint)
  return checkpoint


def _check_data_files(checkpoint):
  needed = {}
  for shard, end in checkpoint.extents:
    needed[shard] = max(needed.get(shard, 0), end)
  for shard, path in enumerate(checkpoint.data_files()):
    if not tf.io.gfile.exists(path):
      raise utils.UserError('checkpoint data shard %s is missing' % path)
    length = tf.io.gfile.stat(path).length
    if length < needed.get(shard, 0):
      raise utils.UserError('checkpoint data shard %s is truncated (%d bytes, the index needs '
                            '%d)' % (path, length, needed[shard]))


def slices_of(checkpoint, name):
  """The slices a partitioned tensor was saved in, as sorted tuples of (start, length) per dim."""
  entry = checkpoint.entries[name]
  shape = [d.size for d in entry.shape.dim]
  out = []
  for tensor_slice in entry.slices:
    out.append(tuple((e.start, e.length if e.HasField('length') else shape[i] - e.start)
                     for i, e in enumerate(tensor_slice.extent)))
  return sorted(out)


def parse_slice_spec(spec):
  """'1000 8 0,334:0,8' -> ([1000, 8], ((0, 334), (0, 8))); '' -> (None, None)."""
  if not spec:
    return None, None
  parts = spec.split(' ')
  full_shape = [int(p) for p in parts[:-1]]
  extents = []
  for i, dim in enumerate(parts[-1].split(':')):
    if dim == '-':
      extents.append((0, full_shape[i]))
    else:
      start, length = dim.split(',')
      extents.append((int(start), int(length)))
  return full_shape, tuple(extents)


@dataclasses.dataclass
class Want:
  """A tensor a graph restores: checkpoint name, dtype, and the slice specs it reads."""
  name: str
  dtype: tf.DType
  shape: Optional[List[int]] = None   # known for whole tensors read with spec ''
  specs: List[str] = dataclasses.field(default_factory=list)


def check_restorable(checkpoint, wants, what):
  """Checks that `checkpoint` holds every wanted tensor with the same dtype, shape and slices.

  Args:
    checkpoint: Checkpoint.
    wants: list of Want.
    what: how to call the graph in messages.

  Raises:
    utils.UserError: listing every tensor that is missing or different.
  """
  problems = []
  for want in wants:
    entry = checkpoint.entries.get(want.name)
    if entry is None:
      problems.append('%s missing' % want.name)
      continue
    if entry.dtype != want.dtype.as_datatype_enum:
      problems.append('%s is %s in the checkpoint, %s in %s' % (
          want.name, tf.as_dtype(entry.dtype).name, want.dtype.name, what))
      continue
    shape = [d.size for d in entry.shape.dim]
    sliced = [s for s in want.specs if s]
    if sliced:
      full, _ = parse_slice_spec(sliced[0])
      if full != shape:
        problems.append('%s has shape %s in the checkpoint, %s in %s' % (want.name, shape, full,
                                                                        what))
        continue
      wanted_slices = sorted(parse_slice_spec(s)[1] for s in sliced)
      have = slices_of(checkpoint, want.name)
      if have and have != wanted_slices:
        problems.append('%s is split in %d partitions in the checkpoint, %d in %s (the structure '
                        'graph must keep the training graph\'s partitions)' % (
                            want.name, len(have), len(wanted_slices), what))
      elif not have and len(wanted_slices) > 1:
        problems.append('%s is one tensor in the checkpoint, %d partitions in %s' % (
            want.name, len(wanted_slices), what))
    elif want.shape is not None and list(want.shape) != shape:
      problems.append('%s has shape %s in the checkpoint, %s in %s' % (want.name, shape,
                                                                      want.shape, what))
  if problems:
    raise utils.UserError('checkpoint %s does not match %s: %s' % (
        checkpoint.prefix, what, '; '.join(problems)))


def _format_spec(shape, extents):
  return '%s %s' % (' '.join(str(d) for d in shape),
                    ':'.join('%d,%d' % e for e in extents))


def chunk_specs(shape, itemsize, chunk_bytes, regions=()):
  """Slice specs that read a tensor in pieces of at most ~chunk_bytes, split along dim 0.

  Args:
    shape: the full shape.
    itemsize: bytes per element.
    chunk_bytes: budget per piece.
    regions: extents ((start, length) per dim) of the partitions the serving graph reads;
      pieces never cross them, so a copy keeps the training graph's partition layout whenever a
      partition fits in the budget. Empty for a whole tensor.

  Returns:
    List of slice specs; [''] for a whole tensor read at once.
  """
  if not regions:
    if not shape or itemsize * int(np.prod(shape)) <= chunk_bytes or shape[0] <= 1:
      return ['']
    regions = [tuple([(0, shape[0])] + [(0, d) for d in shape[1:]])]
  specs = []
  for extents in regions:
    row_bytes = max(1, itemsize * int(np.prod([length for _, length in extents[1:]])))
    rows = max(1, chunk_bytes // row_bytes)
    start, length = extents[0]
    for first in range(start, start + length, rows):
      piece = ((first, min(rows, start + length - first)),) + tuple(extents[1:])
      specs.append(_format_spec(shape, piece))
  return specs


def copy_tensors(checkpoint, wants, dst_prefix, chunk_bytes=64 << 20, progress=None):
  """Writes the tensors `wants` of `checkpoint` into a new checkpoint at `dst_prefix`.

  Each tensor is read and written in row chunks of at most ~chunk_bytes (strings whole), small
  tensors grouped into one write: peak memory is about one chunk.

  Args:
    checkpoint: source Checkpoint.
    wants: list of Want (names, and the slices the serving graph reads).
    dst_prefix: prefix of the checkpoint to write (its directory must exist).
    chunk_bytes: memory budget per read/write.
    progress: optional callable(bytes_done, bytes_total).

  Returns:
    Bytes of tensor data copied.

  Raises:
    utils.UserError: a data shard that cannot be read (corrupt bytes fail the checksum).
  """
  total = sum(checkpoint.nbytes(w.name) for w in wants)
  done = 0
  parts = []
  group = ([], [], [])  # names, specs, tensors
  group_bytes = 0

  def flush():
    nonlocal group, group_bytes
    if not group[0]:
      return
    part = '%s_temp_part-%05d' % (dst_prefix, len(parts))
    tf.raw_ops.SaveV2(prefix=part, tensor_names=group[0], shape_and_slices=group[1],
                      tensors=group[2])
    parts.append(part)
    group, group_bytes = ([], [], []), 0

  try:
    for want in wants:
      name = want.name
      entry = checkpoint.entries[name]
      dtype = tf.as_dtype(entry.dtype)
      shape = [d.size for d in entry.shape.dim]
      memcpyable = dtype not in (tf.string, tf.variant, tf.resource)
      regions = sorted(parse_slice_spec(s)[1] for s in want.specs if s)
      specs = chunk_specs(shape, dtype.size, chunk_bytes, regions) if memcpyable else ['']
      for spec in specs:
        value = tf.raw_ops.RestoreV2(prefix=checkpoint.prefix, tensor_names=[name],
                                     shape_and_slices=[spec], dtypes=[dtype])[0]
        size = value.numpy().nbytes if memcpyable else entry.size // max(1, len(specs))
        group[0].append(name)
        group[1].append(spec)
        group[2].append(value)
        group_bytes += size
        if group_bytes >= chunk_bytes:
          flush()
        done += size
        if progress:
          progress(done, total)
    flush()
    if not parts:  # a graph that restores nothing still gets a valid, empty checkpoint
      tf.raw_ops.SaveV2(prefix=dst_prefix + '_temp_part-00000', tensor_names=[],
                        shape_and_slices=[], tensors=[])
      parts.append(dst_prefix + '_temp_part-00000')
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=dst_prefix,
                                  delete_old_dirs=False)
  except tf.errors.OpError as e:
    raise utils.UserError('cannot copy from checkpoint %s: %s'
                          % (checkpoint.prefix, utils.tf_error_message(e))) from e
  return done
