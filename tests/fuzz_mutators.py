"""Structure-aware mutations of the files a model is made of, for tests/test_fuzz.py.

Every mutation takes its decisions from a `Choices` (tests/test_fuzz.py draws them with
Hypothesis, so a failing case is reproducible and shrinks to simpler decisions) and returns a
line saying what it did, for the failure message.

- `mutate_message`: a protobuf message's fields, reached by a random walk down its structure
  (each set field of a message equally likely, then an element of a repeated field, a key of
  a map): numbers set to boundary values (0, -1, 2^31-1, 2^62, an enum past its last value),
  strings given an output index or a control mark (`x` -> `x:9`, `^x`), or replaced with
  another string of the same message (another node's name), bytes truncated, extended or
  flipped (a tensor's content, an `Any`'s payload, a serialized message inside), repeated
  elements deleted, duplicated or swapped, messages cleared, map keys renamed or deleted.
- `mutate_bytes`: byte flips, truncations, insertions of the serialized file.
- checkpoint index (`IndexTable`): entries decoded from the LevelDB table, their fields and
  the header mutated as messages, entries deleted, duplicated or renamed, then re-encoded with
  valid block checksums (so the reader's checks, not the checksum, are what is tested), block
  handles in the index block re-pointed (with valid checksums too), or raw bytes flipped.
- data files: truncated, extended, bytes flipped, a shard deleted or an extra one added.
"""

import abc
import os
import struct

from google.protobuf import descriptor

from freezerlib.core import crc32c
from freezerlib.formats import checkpoint_index
from freezerlib.formats import leveldb_table

FD = descriptor.FieldDescriptor
_INT_TYPES = {FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1),
              FD.TYPE_SFIXED32: (-2**31, 2**31 - 1), FD.TYPE_UINT32: (0, 2**32 - 1),
              FD.TYPE_FIXED32: (0, 2**32 - 1), FD.TYPE_INT64: (-2**63, 2**63 - 1),
              FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
              FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
              FD.TYPE_ENUM: (-2**31, 2**31 - 1)}
# Values past every bound a reader might assume: a dimension of 2^62 (a size that overflows
# int64 once multiplied), 10^8 shards, an enum value no release has.
_INTERESTING = [0, 1, -1, 2, 3, 9, -7, 100, 127, 128, 255, 1 << 16, 10**8, 2**31 - 1, -2**31,
                2**32 - 1, 2**40, 2**62, 2**63 - 1, -2**63, 2**64 - 1]
_FLOATS = [0.0, -0.0, 1.0, -1.0, float('nan'), float('inf'), -float('inf'), 1e38, 1e-45]


class Choices(abc.ABC):
  """Where the mutators' decisions come from: `draw_index(n)` in [0, n), `draw_int(lo, hi)`.
  test_fuzz's subclass draws them from Hypothesis."""

  @abc.abstractmethod
  def draw_index(self, n):
    """An int in [0, n)."""

  @abc.abstractmethod
  def draw_int(self, lo, hi):
    """An int in [lo, hi]."""

  def pick(self, seq):
    seq = list(seq)
    return seq[self.draw_index(len(seq))]

  def chance(self, n):
    """True one time in `n`."""
    return self.draw_index(n) == 0


class RandomChoices(Choices):
  """Choices from a random.Random (for runs outside Hypothesis)."""

  def __init__(self, rnd):
    self._rnd = rnd

  def draw_index(self, n):
    return self._rnd.randrange(n)

  def draw_int(self, lo, hi):
    return self._rnd.randint(lo, hi)


# ---------------------------------------------------------------------------------------------
# Protobuf messages


def _set_fields(message):
  return [(f, v) for f, v in message.ListFields()]


def _is_map(field):
  return (field.type == FD.TYPE_MESSAGE and
          field.message_type.GetOptions().map_entry)


def _strings_of(message, limit=2000):
  """String values found in `message` (node names, tensor names, keys), up to `limit`."""
  out = []
  stack = [message]
  while stack and len(out) < limit:
    m = stack.pop()
    for field, value in m.ListFields():
      if _is_map(field):
        out.extend(k for k in value.keys() if isinstance(k, str))
        if field.message_type.fields_by_name['value'].type == FD.TYPE_MESSAGE:
          stack.extend(value.values())
        continue
      if field.type == FD.TYPE_STRING:
        if field.is_repeated:
          out.extend(value[:20])
        else:
          out.append(value)
      elif field.type == FD.TYPE_MESSAGE:
        if field.is_repeated:
          stack.extend(value)
        else:
          stack.append(value)
  return out


def _new_int(choices, field, old):
  lo, hi = _INT_TYPES[field.type]
  kind = choices.draw_index(5)
  if kind == 0:
    value = old + choices.pick([-1, 1])
  elif kind == 1 and field.type == FD.TYPE_ENUM:
    values = [v.number for v in field.enum_type.values]
    value = choices.pick([max(values) + 1, -1, -7, 0, 100] + values)
  elif kind == 2:
    value = choices.draw_int(-1000, 1000)
  else:
    value = choices.pick(_INTERESTING)
  return min(max(value, lo), hi)


def _new_string(choices, old, pool):
  kind = choices.draw_index(9)
  if kind == 0:
    return old + ':' + str(choices.pick([1, 9, 2**31, -1]))
  if kind == 1:
    return '^' + old
  if kind == 2:
    return old.lstrip('^').split(':')[0]
  if kind == 3:
    return ''
  if kind == 4:
    return old[:choices.draw_index(len(old) + 1)]
  if kind == 5:
    return old + choices.pick(['x', '/', '\x00', '\u00e9', ':', ' '])
  if pool:
    return choices.pick(pool)
  return old + 'x'


def _new_bytes(choices, old):
  data = bytearray(old)
  kind = choices.draw_index(6)
  if kind == 0 and data:
    data = data[:choices.draw_index(len(data))]
  elif kind == 1:
    data += bytes(choices.draw_index(256) for _ in range(choices.pick([1, 3, 4, 8, 100])))
  elif kind == 2 and data:
    for _ in range(1 + choices.draw_index(3)):
      pos = choices.draw_index(len(data))
      data[pos] ^= 1 << choices.draw_index(8)
  elif kind == 3:
    data = bytearray()
  elif kind == 4 and data:
    data = data + data
  elif data:
    pos = choices.draw_index(len(data))
    data[pos] = choices.pick([0, 0xff, 0x80, 0x7f])
  return bytes(data)


def _walk(message, choices, path):
  """A random walk down `message`: (container message, field, index or map key or None, path)
  of the spot to mutate, or None for an empty message."""
  while True:
    fields = _set_fields(message)
    if not fields:
      return None
    field, value = choices.pick(fields)
    here = '%s.%s' % (path, field.name) if path else field.name
    if _is_map(field):
      key = choices.pick(sorted(value.keys(), key=str))
      value_field = field.message_type.fields_by_name['value']
      if value_field.type == FD.TYPE_MESSAGE and not choices.chance(4):
        message, path = value[key], '%s[%r]' % (here, key)
        continue
      return message, field, key, '%s[%r]' % (here, key)
    if field.is_repeated:
      index = choices.draw_index(len(value))
      if field.type == FD.TYPE_MESSAGE and not choices.chance(4):
        message, path = value[index], '%s[%d]' % (here, index)
        continue
      return message, field, index, '%s[%d]' % (here, index)
    if field.type == FD.TYPE_MESSAGE and not choices.chance(5):
      message, path = value, here
      continue
    return message, field, None, here


def mutate_message(message, choices, name=''):
  """Mutates one spot of `message` in place; returns what was done (a line), or None when
  the chosen change was not possible (the message is left as it was)."""
  pool = _strings_of(message)
  spot = _walk(message, choices, name)
  if spot is None:
    return None
  container, field, where, path = spot
  try:
    return _mutate_spot(container, field, where, path, choices, pool)
  except (ValueError, TypeError) as e:  # e.g. a closed enum refusing a value
    return '%s: not mutated (%s)' % (path, e)


def _mutate_spot(container, field, where, path, choices, pool):
  value = getattr(container, field.name)
  if _is_map(field):
    kind = choices.draw_index(3)
    if kind == 0:
      del value[where]
      return '%s deleted' % path
    if kind == 1 and isinstance(where, str):
      new_key = _new_string(choices, where, pool)
      if new_key in value:
        return None
      entry = value[where]
      if field.message_type.fields_by_name['value'].type == FD.TYPE_MESSAGE:
        value[new_key].CopyFrom(entry)
      else:
        value[new_key] = entry
      del value[where]
      return '%s renamed %r' % (path, new_key)
    value_field = field.message_type.fields_by_name['value']
    if value_field.type == FD.TYPE_MESSAGE:
      value[where].Clear()
      return '%s cleared' % path
    new = _new_scalar(choices, value_field, value[where], pool)
    value[where] = new
    return '%s = %r' % (path, _short(new))
  if field.is_repeated:
    kind = choices.draw_index(4)
    if kind == 0:
      del value[where]
      return '%s deleted' % path
    if kind == 1:
      if field.type == FD.TYPE_MESSAGE:
        value.add().CopyFrom(value[where])
      else:
        value.append(value[where])
      return '%s duplicated at the end' % path
    if kind == 2 and len(value) > 1:
      other = choices.draw_index(len(value))
      if field.type == FD.TYPE_MESSAGE:
        a, b = type(value[where])(), type(value[where])()
        a.CopyFrom(value[where])
        b.CopyFrom(value[other])
        value[where].CopyFrom(b)
        value[other].CopyFrom(a)
      else:
        value[where], value[other] = value[other], value[where]
      return '%s swapped with [%d]' % (path, other)
    if field.type == FD.TYPE_MESSAGE:
      value[where].Clear()
      return '%s cleared' % path
    new = _new_scalar(choices, field, value[where], pool)
    value[where] = new
    return '%s = %r' % (path, _short(new))
  if field.type == FD.TYPE_MESSAGE:
    container.ClearField(field.name)
    return '%s cleared' % path
  if choices.chance(8):
    container.ClearField(field.name)
    return '%s cleared' % path
  new = _new_scalar(choices, field, value, pool)
  setattr(container, field.name, new)
  return '%s = %r' % (path, _short(new))


def _new_scalar(choices, field, old, pool):
  if field.type in _INT_TYPES:
    return _new_int(choices, field, old)
  if field.type == FD.TYPE_BOOL:
    return not old
  if field.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
    return choices.pick(_FLOATS)
  if field.type == FD.TYPE_STRING:
    return _new_string(choices, old, pool)
  if field.type == FD.TYPE_BYTES:
    return _new_bytes(choices, old)
  raise TypeError('field type %d' % field.type)


def _short(value):
  if isinstance(value, (bytes, str)) and len(value) > 40:
    return value[:37] + ('...' if isinstance(value, str) else b'...')
  return value


def mutate_bytes(data, choices):
  """(mutated bytes, what was done) of a serialized file."""
  data = bytearray(data)
  kind = choices.draw_index(4)
  if kind == 0 or not data:
    keep = choices.draw_index(len(data) + 1)
    return bytes(data[:keep]), 'truncated to %d of %d bytes' % (keep, len(data))
  if kind == 1:
    spots = []
    for _ in range(1 + choices.draw_index(4)):
      pos = choices.draw_index(len(data))
      data[pos] ^= 1 << choices.draw_index(8)
      spots.append(pos)
    return bytes(data), 'bits flipped at %s' % spots
  if kind == 2:
    pos = choices.draw_index(len(data) + 1)
    extra = bytes(choices.draw_index(256) for _ in range(1 + choices.draw_index(8)))
    return bytes(data[:pos] + extra + data[pos:]), '%d bytes inserted at %d' % (len(extra), pos)
  pos = choices.draw_index(len(data))
  count = 1 + choices.draw_index(16)
  return bytes(data[:pos] + data[pos + count:]), '%d bytes deleted at %d' % (count, pos)


# ---------------------------------------------------------------------------------------------
# Checkpoint index: a LevelDB table of key -> BundleEntryProto, the header under key b''


def index_items(data):
  """[(key, value)] of a checkpoint index's table, in order (as the reader decodes them)."""
  return list(leveldb_table.table_items(data))


def _put_block(out, contents):
  offset = len(out)
  out.extend(contents)
  out.extend(b'\x00' + struct.pack('<I', crc32c.masked(contents + b'\x00')))
  return offset, len(contents)


def encode_index(items, entries_per_block=4, handle_edit=None):
  """The table bytes of `items` (key, value) as given (not sorted: a mutated order is kept),
  every block with a valid checksum. `handle_edit(index_block_items)` may change the index
  block's (last key, handle bytes) items before the index block is written."""
  block = leveldb_table.encode_block
  varint = leveldb_table.encode_varint
  out = bytearray()
  index = []
  for start in range(0, len(items), entries_per_block):
    chunk = items[start:start + entries_per_block]
    offset, size = _put_block(out, block(chunk))
    index.append((chunk[-1][0], varint(offset) + varint(size)))
  if handle_edit is not None:
    handle_edit(index)
  meta_offset, meta_size = _put_block(out, block([]))
  index_offset, index_size = _put_block(out, block(index))
  footer = (varint(meta_offset) + varint(meta_size) + varint(index_offset) +
            varint(index_size)).ljust(40, b'\x00') + struct.pack('<Q', 0xdb4775248b80fb57)
  out.extend(footer)
  return bytes(out)


def mutate_index(data, choices):
  """(mutated .index bytes, what was done)."""
  items = index_items(data)
  bundle = checkpoint_index.tensor_bundle_pb2
  kind = choices.draw_index(6)
  if kind == 0:  # raw bytes: checksums no longer match
    out, what = mutate_bytes(data, choices)
    return out, 'index bytes: ' + what
  if kind in (1, 2):  # one entry's (or the header's) fields
    position = 0 if kind == 1 else choices.draw_index(len(items))
    key, value = items[position]
    message = (bundle.BundleHeaderProto() if not key else bundle.BundleEntryProto())
    message.ParseFromString(value)
    if kind == 1 and choices.chance(2):
      message.num_shards = choices.pick([0, -1, 2, 3, 1000, 10**8, 2**31 - 1])
      what = 'header num_shards = %d' % message.num_shards
    else:
      what = mutate_message(message, choices, 'index[%r]' % key[:40])
    items[position] = (key, message.SerializeToString())
    return encode_index(items), 'index entry: %s' % what
  if kind == 3:  # entries deleted, duplicated, renamed, reordered
    position = choices.draw_index(len(items))
    key, value = items[position]
    action = choices.draw_index(4)
    if action == 0:
      del items[position]
      what = 'entry %r deleted' % key[:40]
    elif action == 1:
      items.insert(position, (key, value))
      what = 'entry %r duplicated' % key[:40]
    elif action == 2:
      new = key[:choices.draw_index(len(key) + 1)] + choices.pick([b'', b'x', b'\x00', b'\xff'])
      items[position] = (new, value)
      what = 'entry %r renamed %r' % (key[:40], new[:40])
    else:
      other = choices.draw_index(len(items))
      items[position], items[other] = items[other], items[position]
      what = 'entries %d and %d swapped' % (position, other)
    return encode_index(items), what
  if kind == 4:  # a block handle re-pointed, its block checksums valid
    edits = []

    def edit(index):
      position = choices.draw_index(len(index))
      last, handle = index[position]
      offset, pos = leveldb_table.read_varint(handle, 0)
      size, _ = leveldb_table.read_varint(handle, pos)
      field = choices.draw_index(2)
      new = choices.pick([0, 1, 5, 2**31, 2**62, 10**8]) if choices.chance(2) else (
          (offset if field == 0 else size) + choices.pick([-5, -1, 1, 7]))
      new = max(new, 0)
      if field == 0:
        offset = new
      else:
        size = new
      index[position] = (last, leveldb_table.encode_varint(offset) +
                         leveldb_table.encode_varint(size))
      edits.append('block handle %d = (%d, %d)' % (position, offset, size))

    return encode_index(items, handle_edit=edit), edits[0]
  out = encode_index(items, entries_per_block=1 + choices.draw_index(8))
  return out, 're-encoded in blocks of other sizes'


# ---------------------------------------------------------------------------------------------
# Data files


def mutate_data_files(prefix, choices):
  """Mutates the data files of checkpoint `prefix` in place; returns what was done."""
  directory = os.path.dirname(prefix)
  base = os.path.basename(prefix) + '.data-'
  shards = sorted(n for n in os.listdir(directory) if n.startswith(base))
  name = choices.pick(shards)
  path = os.path.join(directory, name)
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  kind = choices.draw_index(6)
  if kind == 0:
    keep = choices.draw_index(len(data) + 1)
    data = data[:keep]
    what = 'truncated to %d of %d bytes' % (keep, len(data))
  elif kind == 1:
    data += bytes(choices.draw_index(256) for _ in range(1 + choices.draw_index(64)))
    what = 'extended'
  elif kind in (2, 3) and data:
    pos = choices.draw_index(len(data))
    data[pos] ^= 1 << choices.draw_index(8)
    what = 'bit flipped at %d' % pos
  elif kind == 4:
    os.remove(path)
    return '%s deleted' % name
  else:
    extra = '%s%05d-of-%05d' % (base, len(shards), len(shards) + 1)
    with open(os.path.join(directory, extra), 'wb') as f:
      f.write(b'\x00' * 16)
    return 'an extra shard %s written' % extra
  with open(path, 'wb') as f:
    f.write(bytes(data))
  return '%s %s' % (name, what)
