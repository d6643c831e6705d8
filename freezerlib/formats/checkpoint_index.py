"""TensorFlow V2 checkpoints' index: read it, validate it, check what a saver would restore, write
a new one.

A checkpoint `PREFIX` is `PREFIX.index` (a table of tensor name -> BundleEntryProto: dtype,
shape, the data shard and byte range, or for a partitioned variable its slices) and
`PREFIX.data-0000k-of-0000n`, one data file per shard (a parameter-server cluster writes one per
PS task). The index is read here directly (its format is LevelDB's table: leveldb_table),
because no public API lists a partitioned variable's slices, and the slice layout is what
decides whether a serving graph reads the same rows the training graph wrote. Every header and
entry is validated before it is trusted (dtype, shape, shard, offset and size against the data
files). The index is held with its entries serialized. Copying tensors is checkpoint_copy's;
object graphs are object_graph's.
"""

import collections.abc
import dataclasses
import struct
from typing import List, Mapping, Optional

from google.protobuf import message as pb_message
from google.protobuf import text_format

from freezerlib.core import crc32c
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import lean_tf
from freezerlib.formats import checkpoint_files
from freezerlib.formats import graph_check
from freezerlib.formats import leveldb_table
from freezerlib.formats import stored_tensor

tensor_bundle_pb2 = lean_tf.tensor_bundle_pb2


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
    for key, value in leveldb_table.table_items(data):
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




def entry_problem(entry, num_shards):
  """What is wrong with a BundleEntryProto of an index declaring `num_shards` data files
  (None when nothing is): a dtype TensorFlow has; dimensions that are not negative and whose
  product does not overflow; a shard id among the shards; an offset and size that are not
  negative; and, for a tensor stored whole, as many bytes as its shape and dtype need (a
  string: at least a byte of length per element), so nothing is allocated from a declared
  size larger than the bytes that hold it. A phrase to follow 'entry NAME'."""
  problem, elements = graph_check.dtype_and_size(entry.dtype, (d.size for d in entry.shape.dim))
  if problem:
    return problem
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
    length, pos = leveldb_table.read_varint(data, pos)
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
  data = leveldb_table.encode_table(items, block_bytes)
  with files.open_file(path, 'wb') as f:
    f.write(data)
