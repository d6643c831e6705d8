"""TensorFlow V2 checkpoints: read their index, check them, and copy tensors without holding them.

A checkpoint `PREFIX` is `PREFIX.index` (a table of tensor name -> BundleEntryProto: dtype,
shape, the data shard and byte range, or for a partitioned variable its slices) and
`PREFIX.data-0000k-of-0000n`, one data file per shard (a parameter-server cluster writes one per
PS task). The index is read here directly (its format is LevelDB's table, which TensorFlow's
`table.cc` writes), because no public API lists a partitioned variable's slices, and the slice
layout is what decides whether a serving graph reads the same rows the training graph wrote.

Copying takes each needed tensor's stored bytes (and each slice's) as they are, in bounded
pieces, into new data files (one per copying worker; a data file needed nearly whole is
hard-linked instead), and writes a new index for them: nothing is decoded, checksums
and partition layout stay the training checkpoint's own, and memory holds a piece per worker,
whatever the checkpoint's size. Each piece is checked on its way against the CRC32C the index
records for its tensor (stored_tensor), so a corrupt checkpoint is refused, naming the tensor
and the shard, before anything is served from it. The index is held with its entries
serialized, and written in the same table format (every entry a restart point, blocks
checksummed with masked CRC32C as TensorFlow's reader verifies).
"""

import collections.abc
import dataclasses
import struct
from typing import List, Mapping, Optional

from absl import logging
from google.protobuf import message as pb_message
from google.protobuf import text_format

from freezerlib.core import crc32c
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.formats import checkpoint_files
from freezerlib.formats import stored_tensor

trackable_object_graph_pb2 = lean_tf.load('tensorflow.core.protobuf.trackable_object_graph_pb2')

# The key under which a tf.train.Checkpoint stores its object graph (a TrackableObjectGraph).
OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'

tensor_bundle_pb2 = lean_tf.tensor_bundle_pb2

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
  if length > 64 * len(buf):  # a copy tag (at least 2 bytes) makes at most 64
    raise ValueError('corrupt snappy block')
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
  """Yields (key, value) of one table block (prefix-compressed, with restart array), after
  checking the block against the masked CRC32C of its trailer (as TensorFlow's reader does)
  and every entry against the block's bounds."""
  if offset + size + _BLOCK_TRAILER_SIZE > len(data):
    raise ValueError('block past the end of the file')
  stored = struct.unpack_from('<I', data, offset + size + 1)[0]
  if crc32c.masked(data[offset:offset + size + 1]) != stored:
    raise ValueError('a block at offset %d fails its checksum' % offset)
  block = data[offset:offset + size]
  compression = data[offset + size]
  if compression == 1:
    block = _snappy_uncompress(block)
  elif compression != 0:
    raise ValueError('unknown block compression %d' % compression)
  if len(block) < 4:
    raise ValueError('a block of %d bytes' % len(block))
  num_restarts = struct.unpack_from('<I', block, len(block) - 4)[0]
  limit = len(block) - 4 - 4 * num_restarts
  if limit < 0:
    raise ValueError('bad restart array')
  pos, key = 0, b''
  while pos < limit:
    shared, pos = _varint(block, pos)
    non_shared, pos = _varint(block, pos)
    value_len, pos = _varint(block, pos)
    if shared > len(key) or pos + non_shared + value_len > limit:
      raise ValueError('an entry past its block')
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


class _Entries(collections.abc.Mapping):
  """Index key -> BundleEntryProto, each parsed when looked up: the index holds its entries
  serialized (a few dozen bytes each), not as messages (several hundred bytes each in
  Python)."""

  def __init__(self, raw):
    self._raw = raw  # key -> serialized BundleEntryProto

  def __getitem__(self, key):
    return tensor_bundle_pb2.BundleEntryProto.FromString(self._raw[key])

  def __contains__(self, key):
    return key in self._raw

  def __iter__(self):
    return iter(self._raw)

  def __len__(self):
    return len(self._raw)


class _Slices(collections.abc.Mapping):
  """Tensor name -> [(index key, BundleEntryProto)] of its slices, parsed when looked up."""

  def __init__(self, raw):
    self._raw = raw  # name -> [(key, serialized BundleEntryProto)]

  def __getitem__(self, name):
    return [(key, tensor_bundle_pb2.BundleEntryProto.FromString(value))
            for key, value in self._raw[name]]

  def __contains__(self, name):
    return name in self._raw

  def __iter__(self):
    return iter(self._raw)

  def __len__(self):
    return len(self._raw)


@dataclasses.dataclass
class Checkpoint:
  """A checkpoint's index.

  Attributes:
    prefix: the checkpoint prefix.
    num_shards: number of data files.
    entries: tensor name -> BundleEntryProto (a partitioned tensor's entry lists its slices and
      holds no bytes itself); a mapping that parses an entry each time it is looked up.
    slices: tensor name -> [(index key, BundleEntryProto)] of its stored slices, each an entry
      of its own keyed by NUL + name + NUL + encoded extents (parsed when looked up).
  """
  prefix: str
  num_shards: int
  entries: Mapping[str, tensor_bundle_pb2.BundleEntryProto]
  slices: Mapping[str, list]

  def data_files(self):
    return [checkpoint_files.data_path(self.prefix, k, self.num_shards)
            for k in range(self.num_shards)]

  def records(self, name):
    """(index key, entry) of everything stored for tensor `name`: itself and its slices."""
    return [(name.encode('utf-8'), self.entries[name])] + self.slices.get(name, [])

  def nbytes(self, name):
    """Bytes of a tensor's values, summed over its slices."""
    return sum(entry.size for _, entry in self.records(name))


def resolve_prefix(path):
  """A checkpoint prefix from a prefix or a directory holding a `checkpoint` state file.

  Raises:
    errors.UserError: nothing there is a checkpoint.
  """
  # The prefix test comes first: some filesystems (ram://) call any prefix of a file a directory.
  if files.exists(path + '.index'):
    return path
  if files.isdir(path):
    try:
      state = _checkpoint_state(path)
    except (OSError, ValueError, text_format.ParseError) as e:
      raise errors.UserError('cannot read the checkpoint state file in %s: %s' % (
          path, errors.tf_error_message(e))) from e
    if state is None or not state.model_checkpoint_path:
      raise errors.UserError('%s holds no `checkpoint` state file: pass a checkpoint prefix '
                            '(e.g. %s/model.ckpt-1000) instead' % (path, path.rstrip('/')))
    prefix = state.model_checkpoint_path
    if '\x00' in prefix:
      raise errors.UserError('the checkpoint state file in %s is corrupt: its '
                             'model_checkpoint_path holds a NUL' % path)
    if not prefix.startswith('/') and '://' not in prefix:
      prefix = files.join(path, prefix)
    return prefix
  parent = files.parent_dir(path)
  if not files.exists(path) and parent and not files.exists(parent):
    raise errors.UserError('checkpoint %s does not exist' % path)
  raise errors.UserError('checkpoint %s: no %s.index (pass a prefix such as '
                        'model.ckpt-1000, or the directory holding `checkpoint`)' % (path, path))


def _checkpoint_state(directory):
  """The CheckpointState in `directory`/checkpoint (a text proto), or None when absent; what
  tf.train.get_checkpoint_state reads."""
  path = files.join(directory, 'checkpoint')
  if not files.exists(path):
    return None
  pb2 = lean_tf.load('tensorflow.python.training.checkpoint_state_pb2')
  state = pb2.CheckpointState()
  text_format.Merge(files.read(path).decode('utf-8'), state)
  return state


def read_index(prefix):
  """Parses PREFIX.index and checks every data shard is there and long enough.

  Raises:
    errors.UserError: a missing, truncated or corrupt index or data shard, named.
  """
  index_path = prefix + '.index'
  try:
    data = files.read(index_path)
  except OSError as e:
    raise errors.UserError('cannot read %s: %s' % (index_path, errors.tf_error_message(e))) from e
  entries, slices, num_shards = {}, {}, None
  partitioned = []  # tensors stored as slices
  needed = {}  # shard -> bytes its entries reach
  previous = None
  try:
    for key, value in _table_items(data):
      if previous is not None and key <= previous:
        raise ValueError('its keys are not in order (%r after %r)' % (key[:60], previous[:60]))
      previous = key
      if not key:
        num_shards = tensor_bundle_pb2.BundleHeaderProto.FromString(value).num_shards
        if num_shards < 1:
          raise ValueError('its header declares %d data shards' % num_shards)
        continue
      if num_shards is None:
        raise ValueError('it has no header before its first entry')
      entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)  # parsed once, to check it
      problem = entry_problem(entry, num_shards)
      if problem:
        raise ValueError('entry %r %s' % (key.decode('utf-8', 'replace')[:200], problem))
      if entry.size:
        needed[entry.shard_id] = max(needed.get(entry.shard_id, 0), entry.offset + entry.size)
      if key.startswith(b'\x00'):
        # One slice of a partitioned tensor: key = NUL + name + NUL + encoded extents.
        name = key[1:key.index(b'\x00', 1)].decode('utf-8')
        slices.setdefault(name, []).append((key, value))
      else:
        entries[key.decode('utf-8')] = value
        if entry.slices:
          partitioned.append(key.decode('utf-8'))
  except (ValueError, struct.error, UnicodeDecodeError, pb_message.DecodeError) as e:
    raise errors.UserError('%s is truncated or corrupt (%s)' % (index_path, e)) from e
  del data
  if num_shards is None:
    raise errors.UserError('%s has no header: truncated or not a checkpoint index' % index_path)
  _check_shard_count(prefix, num_shards)
  checkpoint = Checkpoint(prefix=prefix, num_shards=num_shards, entries=_Entries(entries),
                          slices=_Slices(slices))
  _check_slices(checkpoint, partitioned, index_path)
  _check_data_files(checkpoint, needed)
  return checkpoint


def _check_slices(checkpoint, partitioned, index_path):
  """Each slice a partitioned tensor's entry lists has an entry of its own: TensorFlow's reader
  looks a slice up through the list, so a slice listed but not stored fails every restore."""
  for name in partitioned:
    shape = [d.size for d in checkpoint.entries[name].shape.dim]
    try:
      listed = slices_of(checkpoint, name)
      stored = {slice_key_extents(key, shape) for key, _ in checkpoint.slices.get(name, ())}
    except (ValueError, IndexError) as e:
      raise errors.UserError('%s is corrupt: the slices of %s do not decode (%s)'
                             % (index_path, name, e)) from e
    missing = [extents for extents in listed if extents not in stored]
    if missing:
      raise errors.UserError('%s is corrupt: tensor %s lists slice %s, which it does not store'
                             % (index_path, name, ':'.join('%d,%d' % e for e in missing[0])))


_DTYPES = frozenset(lean_tf.types_pb2.DataType.values())
_MAX_ELEMENTS = 2**62  # past it, TensorFlow's int64 sizes overflow


def entry_problem(entry, num_shards):
  """What is wrong with a BundleEntryProto of an index declaring `num_shards` data files
  (None when nothing is): a dtype TensorFlow has; dimensions that are not negative and whose
  product does not overflow; a shard id among the shards; an offset and size that are not
  negative; and, for a tensor stored whole, as many bytes as its shape and dtype need (a
  string: at least a byte of length per element), so nothing is allocated from a declared
  size larger than the bytes that hold it. A phrase to follow 'entry NAME'."""
  if entry.dtype not in _DTYPES or entry.dtype == 0 or entry.dtype > 100:
    return 'has dtype %d, which is not a TensorFlow type' % entry.dtype
  elements = 1
  for dim in entry.shape.dim:
    if dim.size < 0:
      return 'has a negative dimension (%d)' % dim.size
    elements *= dim.size
    if elements > _MAX_ELEMENTS:
      return 'has a shape whose size overflows'
  if not 0 <= entry.shard_id < num_shards:
    return 'is in data shard %d, of %d' % (entry.shard_id, num_shards)
  if entry.offset < 0 or entry.size < 0:
    return 'has a negative offset or size (%d, %d)' % (entry.offset, entry.size)
  if entry.slices:
    return None  # a partitioned tensor: its bytes are its slices'
  item = lean_tf.ITEM_BYTES.get(entry.dtype)
  if item is not None and entry.size != elements * item:
    return 'holds %d bytes, its shape of %d %s elements needs %d' % (
        entry.size, elements, lean_tf.as_dtype(entry.dtype).name, elements * item)
  if item is None and entry.size < elements:
    return 'holds %d bytes for %d elements' % (entry.size, elements)
  return None


def _check_shard_count(prefix, num_shards):
  """A header's shard count is bounded by the files there are, before a path is made for
  each (an index declaring 10^8 shards would build 10^8 paths first)."""
  if num_shards == 1:
    return
  parent = files.parent_dir(prefix) or '.'
  try:
    present = len(files.listdir(parent))
  except OSError:
    return  # the shards' own checks name what is missing
  if num_shards > present:
    raise errors.UserError(
        '%s.index is corrupt: it declares %d data shards, but %s holds %d files'
        % (prefix, num_shards, parent, present))


def _check_data_files(checkpoint, needed):
  for shard, path in enumerate(checkpoint.data_files()):
    if not files.exists(path):
      raise errors.UserError('checkpoint data shard %s is missing' % path)
    length = files.size(path)
    if length < needed.get(shard, 0):
      raise errors.UserError('checkpoint data shard %s is truncated (%d bytes, the index needs '
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


def _ordered_num(key, pos):
  """TensorFlow's OrderedCode NumIncreasing: a length byte, then that many big-endian bytes."""
  n = key[pos]
  return int.from_bytes(key[pos + 1:pos + 1 + n], 'big'), pos + 1 + n


def _ordered_signed(key, pos):
  """OrderedCode SignedNumIncreasing for |values| < 2**55: as many leading 1 bits as bytes
  (inverted for negatives), then the value's bits."""
  first = key[pos]
  negative = not first & 0x80
  raw = bytes((~b) & 0xff for b in key[pos:pos + 8]) if negative else key[pos:pos + 8]
  length = 0
  while length < 8 and raw[0] & (0x80 >> length):
    length += 1
  value = int.from_bytes(raw[:length], 'big') & ((1 << (8 * length - length - 1)) - 1)
  return (-value - 1 if negative else value), pos + length


def slice_key_extents(key, full_shape):
  """Extents ((start, length) per dim) of the slice stored under index key `key` (TensorFlow's
  EncodeTensorNameSlice: NUL, name, NUL 0x01, dims, then start and length of each dim; a
  length of -1 means the whole dim)."""
  pos = key.index(b'\x00\x01', 1) + 2
  dims, pos = _ordered_num(key, pos)
  extents = []
  for d in range(dims):
    start, pos = _ordered_signed(key, pos)
    length, pos = _ordered_signed(key, pos)
    extents.append((start, full_shape[d] - start if length < 0 else length))
  return tuple(extents)


def _escape_ordered_string(name):
  # OrderedCode's WriteString: NUL -> NUL 0xff, 0xff -> 0xff NUL, then the terminator NUL 0x01.
  return name.replace(b'\x00', b'\x00\xff').replace(b'\xff', b'\xff\x00') + b'\x00\x01'


def renamed_slice_key(key, name, new_name):
  """The index key of the same slice of tensor `new_name` as `key` is of tensor `name`.

  A slice is stored under NUL + the tensor name (OrderedCode-escaped) + its encoded extents,
  so renaming a partitioned tensor renames every one of its slice keys.
  """
  head = b'\x00' + _escape_ordered_string(name.encode('utf-8'))
  if not key.startswith(head):
    raise ValueError('%r is not a slice key of %s' % (key, name))
  return b'\x00' + _escape_ordered_string(new_name.encode('utf-8')) + key[len(head):]


def decode_string_tensor(data, num_elements, masked_crc=None):
  """The strings of a DT_STRING tensor as a checkpoint stores them (tensor_bundle.cc's
  WriteStringTensor): a varint64 length per element, a masked CRC32C of those lengths (each
  taken as a little-endian uint32, or uint64 past 4 GiB), then the bytes of every element.

  Args:
    data: the stored bytes (BundleEntryProto.offset/size of the data file).
    num_elements: elements of the tensor (1 for a scalar).
    masked_crc: the entry's crc32c, checked over the whole of `data` when given.

  Raises:
    ValueError: the bytes do not hold such a tensor, or fail a checksum.
  """
  lengths, pos = [], 0
  for _ in range(num_elements):
    length, pos = _varint(data, pos)
    lengths.append(length)
  if pos + 4 > len(data):
    raise ValueError('string tensor truncated in its lengths')
  packed = b''.join(struct.pack('<I' if n <= 0xffffffff else '<Q', n) for n in lengths)
  if struct.unpack_from('<I', data, pos)[0] != crc32c.masked(packed):
    raise ValueError('string tensor lengths fail their checksum')
  pos += 4
  if pos + sum(lengths) != len(data):
    raise ValueError('string tensor holds %d bytes, its lengths say %d'
                     % (len(data) - pos, sum(lengths)))
  # The entry's checksum covers the lengths as those uint32s (not as the stored varints), then
  # the length checksum and the strings.
  if (masked_crc is not None and
      crc32c.mask(crc32c.extend(crc32c.value(packed), data[pos - 4:])) != masked_crc):
    raise ValueError('string tensor fails its checksum')
  values = []
  for length in lengths:
    values.append(bytes(data[pos:pos + length]))
    pos += length
  return values


def read_string_tensor(checkpoint, name):
  """The values of DT_STRING tensor `name` of `checkpoint` (read whole: for small tensors such
  as the object graph of an object-based checkpoint).

  Raises:
    errors.UserError: the tensor is missing, not a whole string tensor, or corrupt.
  """
  entry = checkpoint.entries.get(name)
  if entry is None:
    raise errors.UserError('checkpoint %s holds no tensor %s' % (checkpoint.prefix, name))
  if entry.dtype != lean_tf.types_pb2.DT_STRING or checkpoint.slices.get(name):
    raise errors.UserError('checkpoint %s: %s is not a string tensor' % (checkpoint.prefix, name))
  count = 1
  for dim in entry.shape.dim:
    count *= dim.size
  path = checkpoint.data_files()[entry.shard_id]
  try:
    with files.open_file(path, 'rb') as f:
      f.seek(entry.offset)
      data = f.read(entry.size)
  except OSError as e:
    raise errors.UserError('cannot read %s: %s' % (path, errors.tf_error_message(e))) from e
  if len(data) != entry.size:
    raise corrupt_tensor(checkpoint, name.encode('utf-8'), entry, 'ends early')
  problem = stored_tensor.check(entry, data)
  if problem:
    raise corrupt_tensor(checkpoint, name.encode('utf-8'), entry, problem)
  try:
    return decode_string_tensor(data, count)
  except (ValueError, struct.error) as e:
    raise errors.UserError('checkpoint %s: tensor %s is corrupt (%s)'
                          % (checkpoint.prefix, name, e)) from e


# ---------------------------------------------------------------------------------------------
# Object-based checkpoints (tf.train.Checkpoint, TF2 SavedModels' variables/)


def read_object_graph(checkpoint):
  """The TrackableObjectGraph of an object-based checkpoint (checkpoints.Checkpoint).

  Raises:
    errors.UserError: the checkpoint has none (a tf.compat.v1 Saver wrote it), or it is corrupt.
  """
  if OBJECT_GRAPH_KEY not in checkpoint.entries:
    raise errors.UserError(
        'checkpoint %s is name-based (written by a tf.compat.v1 Saver: it has no %s); a TF2 '
        'structure needs a checkpoint written by tf.train.Checkpoint'
        % (checkpoint.prefix, OBJECT_GRAPH_KEY))
  values = read_string_tensor(checkpoint, OBJECT_GRAPH_KEY)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  try:
    if len(values) != 1:
      raise ValueError('%d values, not one' % len(values))
    graph.ParseFromString(values[0])
  except (ValueError, pb_message.DecodeError) as e:
    raise errors.UserError('checkpoint %s: %s is not an object graph (%s)'
                          % (checkpoint.prefix, OBJECT_GRAPH_KEY, e)) from e
  if not graph.nodes:
    raise errors.UserError('checkpoint %s: its object graph is empty' % checkpoint.prefix)
  return graph


def keys_by_object(structure, index):
  """(object graph node id -> {attribute name: [(key, suffix)]}, keys owned by no attribute)
  of an object-based checkpoint's `index`, `structure` being its object graph.

  A key of the structure's index belongs to the attribute whose checkpoint_key is its longest
  prefix: a variable's value is stored under the key itself, a table's under key + '-keys' and
  key + '-values' (the suffix, kept when the key is renamed).
  """
  by_key = {}
  for node_id, node in enumerate(structure.nodes):
    for attr in node.attributes:
      by_key[attr.checkpoint_key] = (node_id, attr.name)
  owned = collections.defaultdict(lambda: collections.defaultdict(list))
  stray = []
  for key in sorted(index.entries):
    if key == OBJECT_GRAPH_KEY:
      continue
    end = key.rfind('/.ATTRIBUTES/')
    for cut in range(len(key), max(end, 0), -1):
      if key[:cut] in by_key:
        node_id, name = by_key[key[:cut]]
        owned[node_id][name].append((key, key[cut:]))
        break
    else:
      stray.append(key)
  return owned, stray


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
  dtype: object  # tf.DType or lean_tf.DType
  shape: Optional[List[int]] = None   # known for whole tensors read with spec ''
  specs: List[str] = dataclasses.field(default_factory=list)


def check_restorable(checkpoint, wants, what):
  """Checks that `checkpoint` holds every wanted tensor with the same dtype, shape and slices.

  Args:
    checkpoint: Checkpoint.
    wants: list of Want.
    what: how to call the graph in messages.

  Raises:
    errors.UserError: listing every tensor that is missing or different.
  """
  problems = []
  for want in wants:
    entry = checkpoint.entries.get(want.name)
    if entry is None:
      problems.append('%s missing' % want.name)
      continue
    if entry.dtype != want.dtype.as_datatype_enum:
      problems.append('%s is %s in the checkpoint, %s in %s' % (
          want.name, lean_tf.as_dtype(entry.dtype).name, want.dtype.name, what))
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
    raise errors.UserError('checkpoint %s does not match %s: %s' % (
        checkpoint.prefix, what, '; '.join(problems)))


def encode_varint(value):
  """Protobuf's (and LevelDB's) base-128 varint encoding of a non-negative int."""
  out = bytearray()
  while True:
    byte = value & 0x7f
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _block(items):
  """A table block: every entry a restart point (no key sharing), then the restart array."""
  body, restarts = bytearray(), []
  for key, value in items:
    restarts.append(len(body))
    body += encode_varint(0) + encode_varint(len(key)) + encode_varint(len(value)) + key + value
  if not restarts:
    restarts = [0]
  body += b''.join(struct.pack('<I', r) for r in restarts) + struct.pack('<I', len(restarts))
  return bytes(body)


def write_index(path, records, num_shards=1, block_bytes=256 << 10):
  """Writes a checkpoint index (LevelDB table of key -> BundleEntryProto, with the header).

  Args:
    path: the .index file to write.
    records: list of (key bytes, BundleEntryProto); sorted here.
    num_shards: data files the entries point into.
    block_bytes: target size of a data block.
  """
  header = tensor_bundle_pb2.BundleHeaderProto(
      num_shards=num_shards, endianness=tensor_bundle_pb2.BundleHeaderProto.LITTLE)
  header.version.producer = 1
  items = [(b'', header.SerializeToString())]
  items += sorted((key, entry.SerializeToString()) for key, entry in records)
  out = bytearray()

  def put_block(contents):
    offset = len(out)
    out.extend(contents)
    out.extend(b'\x00' + struct.pack('<I', crc32c.masked(contents + b'\x00')))
    return encode_varint(offset) + encode_varint(len(contents))

  index, current, size = [], [], 0
  for key, value in items:
    current.append((key, value))
    size += len(key) + len(value)
    if size >= block_bytes:
      index.append((current[-1][0], put_block(_block(current))))
      current, size = [], 0
  if current:
    index.append((current[-1][0], put_block(_block(current))))
  metaindex = put_block(_block([]))
  index_handle = put_block(_block(index))
  footer = (metaindex + index_handle).ljust(40, b'\x00') + struct.pack('<Q', _TABLE_MAGIC)
  out.extend(footer)
  with files.open_file(path, 'wb') as f:
    f.write(bytes(out))


def record_name(checkpoint, key):
  """A record of `checkpoint` as a person names it: the tensor, and for a slice its extents
  in a saver's slice-spec syntax ('item_embedding (slice 0,250:0,64)')."""
  if not key.startswith(b'\x00'):
    return key.decode('utf-8', 'replace')
  name = key[1:key.index(b'\x00', 1)].decode('utf-8', 'replace')
  try:
    shape = [d.size for d in checkpoint.entries[name].shape.dim]
    extents = slice_key_extents(key, shape)
  except (KeyError, ValueError, IndexError):
    return name + ' (a slice)'
  return '%s (slice %s)' % (name, ':'.join('%d,%d' % e for e in extents))


def corrupt_tensor(checkpoint, key, entry, problem):
  """The UserError for a stored tensor whose bytes are not what the index records."""
  return errors.UserError('checkpoint %s is corrupt: tensor %s in data shard %s %s' % (
      checkpoint.prefix, record_name(checkpoint, key), checkpoint.data_files()[entry.shard_id],
      problem))


def slice_records(checkpoint, name, specs):
  """The Records that restoring tensor `name` with each of `specs` reads: every record of the
  tensor when a spec is '' (the whole) or the tensor is not partitioned; else the tensor's own
  entry, listing only those slices, and the slices' records. Copied, they make a checkpoint
  that restores those partitions and holds none of the others (TensorFlow's reader looks a
  slice up through the slices its tensor's entry lists)."""
  if '' in specs or name not in checkpoint.slices:
    return [Record(checkpoint, key, entry) for key, entry in checkpoint.records(name)]
  entry = checkpoint.entries[name]
  shape = [d.size for d in entry.shape.dim]
  wanted = {parse_slice_spec(spec)[1] for spec in specs}
  listed = tensor_bundle_pb2.BundleEntryProto()
  listed.CopyFrom(entry)
  del listed.slices[:]
  for tensor_slice in entry.slices:
    extents = tuple((e.start, e.length if e.HasField('length') else shape[i] - e.start)
                    for i, e in enumerate(tensor_slice.extent))
    if extents in wanted:
      listed.slices.add().CopyFrom(tensor_slice)
  return [Record(checkpoint, name.encode('utf-8'), listed)] + [
      Record(checkpoint, key, slice_entry) for key, slice_entry in checkpoint.slices[name]
      if slice_key_extents(key, shape) in wanted]


def copy_tensors(checkpoint, names, dst_prefix, chunk_bytes=1 << 20, progress=None, verify=True):
  """Writes the tensors `names` of `checkpoint` as a new checkpoint at `dst_prefix` (copy_records).

  The stored bytes of each tensor (and of each slice of a partitioned one) are copied as they
  are, in pieces of at most `chunk_bytes`: checksums, slice layout and dtype encoding stay the
  training checkpoint's own, nothing is decoded, and memory holds one piece at a time.

  Args:
    checkpoint: source Checkpoint.
    names: tensor names to copy.
    dst_prefix: prefix of the checkpoint to write (its directory must exist).
    chunk_bytes: bytes read and written at a time.
    progress: optional callable(bytes_done, bytes_total).
    verify: check each tensor's bytes against the checksum its index entry records.

  Returns:
    Bytes of tensor data copied.

  Raises:
    errors.UserError: a data shard that cannot be read, or a tensor that fails its checksum.
  """
  records = [Record(checkpoint, key, entry) for name in names
             for key, entry in checkpoint.records(name)]
  return copy_records(records, dst_prefix, chunk_bytes, progress, verify)


@dataclasses.dataclass
class Record:
  """One index record to copy: `entry` of `checkpoint` (stored under `key` there), written
  under `new_key` (default: the same key)."""
  checkpoint: Checkpoint
  key: bytes
  entry: tensor_bundle_pb2.BundleEntryProto
  new_key: Optional[bytes] = None


class _Shards:
  """The data shards records are read from, each opened once (read front to back)."""

  def __init__(self):
    self._open = {}  # (checkpoint id, shard) -> open file

  def get(self, record):
    handle = (id(record.checkpoint), record.entry.shard_id)
    if handle not in self._open:
      path = record.checkpoint.data_files()[record.entry.shard_id]
      self._open[handle] = files.open_file(path, 'rb')
    return self._open[handle]

  def close(self):
    for f in self._open.values():
      f.close()


def _transfer(records, write, chunk_bytes, progress, verify):
  """Reads the stored bytes of each record, in order, checking each when `verify`.

  Args:
    records: Records with bytes (entry.size > 0), sorted as they are to be read.
    write: callable(open source file, record, inspect or None, buffer) that moves one record's
      bytes, or None to read them only (to check them).
    chunk_bytes: the size of a piece read through memory.
    progress: callable(bytes) after each piece.
    verify: check each record against its entry's checksum.

  Raises:
    errors.UserError: an unreadable or short shard, or a record that fails its checksum.
  """
  shards = _Shards()
  buffer = bytearray(max(1, min(chunk_bytes, max((r.entry.size for r in records), default=1))))
  current = None
  try:
    for record in records:
      entry, checkpoint = record.entry, record.checkpoint
      current = checkpoint.data_files()[entry.shard_id]
      source = shards.get(record)
      checksum = stored_tensor.Checksum(entry) if verify else None
      try:
        if write is None:
          def consume(piece):
            checksum.update(piece)  # noqa: B023  # consume runs within this iteration only
            progress(len(piece))
          files.read_range(source, entry.offset, entry.size, consume, chunk_bytes, buffer)
        else:
          write(source, record, checksum.update if checksum else None, buffer)
      except EOFError as e:
        raise errors.UserError('checkpoint data shard %s ends early' % current) from e
      if checksum:
        problem = checksum.problem()
        if problem:
          raise corrupt_tensor(checkpoint, record.key, entry, problem)
  except OSError as e:
    raise errors.UserError('cannot copy from checkpoint data shard %s: %s'
                          % (current, errors.tf_error_message(e))) from e
  finally:
    shards.close()


_WORKERS = 2  # copy_ranges' workers between local files, each writing a data shard of its own


def copy_records(records, dst_prefix, chunk_bytes=1 << 20, progress=None, verify=True):
  """Writes a checkpoint at `dst_prefix` holding `records`, bytes copied as stored.

  Records may come from several checkpoints. Records that point at the same stored bytes (the
  same checkpoint, shard, offset and size: one tensor written under two keys) share one copy.

  With `verify`, each record's bytes are checked while copied against the checksum its index
  entry records (what TensorFlow's reader checks when it restores them): each piece is read
  into a buffer, checked there and written from it. Without, between local files the kernel
  copies them (copy_file_range). Between local files two workers copy (files.copy_ranges),
  each into a data shard of its own (records dealt by bytes, the largest first): the kernel
  serializes writes into one file. A local data file needed all but 1% is hard-linked (copied
  where the filesystem refuses) instead, its records keeping their offsets, after they are
  checked: a checkpoint without optimizer slots is served from its own files. Elsewhere (a
  path with a scheme) one data shard is written.

  Args:
    records: list of Record.
    dst_prefix: prefix of the checkpoint to write (its directory must exist).
    chunk_bytes: bytes read and written at a time through memory.
    progress: optional callable(bytes_done, bytes_total).
    verify: check each record's bytes against its entry's checksum.

  Returns:
    Bytes of tensor data written.

  Raises:
    errors.UserError: a data shard that cannot be read, or a record that fails its checksum
      (naming the tensor and the shard).
  """
  def source(record):
    entry = record.entry
    return (id(record.checkpoint), entry.shard_id, entry.offset, entry.size)

  unique = {}
  for record in records:
    if record.entry.size:
      unique.setdefault(source(record), record)
  # Sorted by source file and offset, each source file is read front to back.
  ordered = sorted(unique.values(), key=lambda r: (r.checkpoint.prefix,) + source(r)[1:])
  total = sum(r.entry.size for r in ordered)
  written = {}  # source -> (data shard, offset in it)
  done = 0

  def advance(n):
    nonlocal done
    done += n
    if progress:
      progress(done, total)

  # Positional reads and writes: into a local file, from local files or object stores (ranged
  # reads, several in flight: files.copy_ranges). Else (ram://) one data shard, in order.
  local = not files.is_remote(dst_prefix) and all(_positional(r) for r in ordered)
  # Local data files needed (nearly) whole are linked, their records keeping their offsets.
  linked = _needed_whole(ordered) if local else {}
  order = {handle: k for k, handle in enumerate(linked)}  # linked data file -> output shard
  in_place = [r for r in ordered if _data_file(r) in order]
  rest = [r for r in ordered if _data_file(r) not in order]
  shards = (_deal(rest, _WORKERS) if rest or not linked else []) if local else [ordered]
  count = len(linked) + len(shards)
  paths = [checkpoint_files.data_path(dst_prefix, k, count) for k in range(count)]
  for handle, src in linked.items():
    files.link_or_copy(src, paths[order[handle]])
  for record in in_place:
    written[source(record)] = (order[_data_file(record)], record.entry.offset)
  if in_place:
    if verify:  # read and checked in place, two workers
      _copy_local(_deal(in_place, _WORKERS), None, {}, chunk_bytes, advance, True)
    else:
      advance(sum(r.entry.size for r in in_place))
  if local:
    _copy_local(shards, paths[len(linked):], written, chunk_bytes, advance, verify,
                first=len(linked))
  else:
    with files.open_file(paths[0], 'wb') as out:

      def write(src, record, inspect, buffer):
        written[source(record)] = (0, done)
        files.copy_range(src, record.entry.offset, out, record.entry.size, chunk_bytes,
                         advance, inspect, buffer)

      _transfer(ordered, write, chunk_bytes, advance, verify)
  out_records = []
  for record in records:
    copy = tensor_bundle_pb2.BundleEntryProto()
    copy.CopyFrom(record.entry)
    copy.shard_id, copy.offset = written[source(record)] if record.entry.size else (0, 0)
    out_records.append((record.new_key or record.key, copy))
  write_index(dst_prefix + '.index', out_records, num_shards=count)
  if progress and not total:
    progress(0, 0)
  return done


# A data file of which at most this share is not needed is linked, not copied: a checkpoint
# without optimizer slots holds little but its global step besides what serving restores.
_LINK_SLACK = 0.01


def _positional(record):
  """Whether the record's checkpoint is read by files.copy_ranges: local or an object store."""
  prefix = record.checkpoint.prefix
  return not files.is_remote(prefix) or files.is_object_store(prefix)


def _data_file(record):
  """The data file a record's bytes are in, as (id(checkpoint), shard)."""
  return (id(record.checkpoint), record.entry.shard_id)


def _needed_whole(ordered):
  """{_data_file: path} of the local data files `ordered` needs nearly whole (all but
  _LINK_SLACK of their bytes), in `ordered`'s order."""
  needed = collections.defaultdict(int)
  for record in ordered:
    needed[_data_file(record)] += record.entry.size
  out = {}
  for record in ordered:
    handle = _data_file(record)
    if handle in out or handle not in needed:
      continue
    path = record.checkpoint.data_files()[record.entry.shard_id]
    if files.is_remote(path):
      continue  # linking is for one local file system
    try:
      size = files.size(path)
    except OSError:
      continue  # the copy names it
    if size - needed.pop(handle) <= _LINK_SLACK * size:
      out[handle] = path
  return out


def _deal(ordered, count):
  """`ordered` in at most `count` groups of about equal bytes (the largest record first, each
  to the lightest group), each group in `ordered`'s order; never an empty group but the one
  of an empty list."""
  groups = [[] for _ in range(max(1, min(count, len(ordered))))]
  loads = [0] * len(groups)
  for index in sorted(range(len(ordered)), key=lambda i: -ordered[i].entry.size):
    lightest = loads.index(min(loads))
    groups[lightest].append(index)
    loads[lightest] += ordered[index].entry.size
  return [[ordered[i] for i in sorted(group)] for group in groups]


def _copy_local(shards, paths, written, chunk_bytes, progress, verify, first=0):
  """Copies each of `shards` (lists of records) into its data file of `paths`, a worker each
  (files.copy_ranges), checking each record when `verify`; fills `written` (record source ->
  (first + shard, offset)). With `paths` None the records are read and checked only."""
  checked, shares = [], []
  try:
    for k, (shard, path) in enumerate(zip(shards, paths or [None] * len(shards))):
      jobs, offset = [], 0
      for record in shard:
        entry = record.entry
        written[(id(record.checkpoint), entry.shard_id, entry.offset, entry.size)] = (
            first + k, offset)
        checksum = stored_tensor.Checksum(entry) if verify else None
        checked.append((record, checksum))
        jobs.append((record.checkpoint.data_files()[entry.shard_id], entry.offset, entry.size,
                     offset, checksum.update if checksum else None))
        offset += entry.size
      shares.append((files.open_file(path, 'wb') if path else None, jobs))
    files.copy_ranges(shares, chunk_bytes, progress)
  except EOFError as e:
    raise errors.UserError('checkpoint data shard %s (it ends early)' % e) from e
  except OSError as e:
    raise errors.UserError('cannot copy checkpoint tensors: %s' % errors.tf_error_message(e)) from e
  finally:
    for out, _ in shares:
      if out is not None:
        out.close()
  for record, checksum in checked:
    problem = checksum and checksum.problem()
    if problem:
      raise corrupt_tensor(record.checkpoint, record.key, record.entry, problem)


def verify_records(records, chunk_bytes=1 << 20, progress=None):
  """Reads the stored bytes of `records` and checks each against its entry's checksum.

  Raises:
    errors.UserError: an unreadable shard, or a record that fails its checksum.
  """
  ordered = sorted((r for r in records if r.entry.size),
                   key=lambda r: (r.checkpoint.prefix, r.entry.shard_id, r.entry.offset))
  total, done = sum(r.entry.size for r in ordered), 0

  def advance(n):
    nonlocal done
    done += n
    if progress:
      progress(done, total)

  if not all(_positional(r) for r in ordered):
    _transfer(ordered, None, chunk_bytes, advance, True)
  else:  # read and checked by two workers (files.copy_ranges, reading only)
    _copy_local(_deal(ordered, _WORKERS), None, {}, chunk_bytes, advance, True)


def link_files(checkpoint, dst_prefix, verify=False):
  """Makes DST_PREFIX.{index,data-*} the files of `checkpoint`, hard-linked where the
  filesystem allows, else copied.

  Args:
    checkpoint: the Checkpoint.
    dst_prefix: the prefix to link it as.
    verify: first read every stored tensor and check it against its entry's checksum.

  Returns:
    (tensors, bytes of tensor data) the checkpoint holds.

  Raises:
    errors.UserError: with `verify`, a tensor that fails its checksum (nothing linked then).
  """
  if verify:
    verify_records([Record(checkpoint, key, entry) for name in checkpoint.entries
                    for key, entry in checkpoint.records(name)],
                   progress=units.Progress('checking checkpoint checksums'))
  pairs = [(checkpoint.prefix + '.index', dst_prefix + '.index')]
  pairs += [(src, checkpoint_files.data_path(dst_prefix, k, checkpoint.num_shards))
            for k, src in enumerate(checkpoint.data_files())]
  sizes = [files.size(src) for src, _ in pairs]
  progress, done = units.Progress('linking checkpoint files'), 0
  for (src, dst), size in zip(pairs, sizes):
    files.link_or_copy(src, dst)
    done += size
    progress(done, sum(sizes))
  return len(checkpoint.entries), sum(checkpoint.nbytes(n) for n in checkpoint.entries)


def link_checkpoint(prefix, dst_prefix):
  """Hard-links (or copies) the files of checkpoint `prefix` to `dst_prefix`, after checking
  its index and shards."""
  tensors, nbytes = link_files(read_index(prefix), dst_prefix)
  logging.info('linked %s (%d tensors, %s) as %s', prefix, tensors, units.human_bytes(nbytes),
               dst_prefix)
