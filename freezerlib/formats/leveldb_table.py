"""LevelDB's table format, as TensorFlow's `table.cc` reads and writes it for checkpoint indexes.

A table is data blocks of (key, value) entries, prefix-compressed between restart points, each
block followed by a type byte (0 plain, 1 Snappy) and the masked CRC32C of both; then a
metaindex block, an index block (last key of each data block -> its handle) and a 48-byte
footer ending in a magic number. Reading checks every block's checksum and every entry's bounds;
writing makes every entry a restart point (no key sharing), which every reader accepts.
"""

import struct

from freezerlib.core import crc32c

_TABLE_MAGIC = 0xdb4775248b80fb57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5


def read_varint(buf, pos):
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
  length, pos = read_varint(buf, 0)
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
    shared, pos = read_varint(block, pos)
    non_shared, pos = read_varint(block, pos)
    value_len, pos = read_varint(block, pos)
    if shared > len(key) or pos + non_shared + value_len > limit:
      raise ValueError('an entry past its block')
    key = key[:shared] + block[pos:pos + non_shared]
    pos += non_shared
    yield key, block[pos:pos + value_len]
    pos += value_len


def table_items(data):
  if len(data) < _FOOTER_SIZE:
    raise ValueError('too short for a table (%d bytes)' % len(data))
  footer = data[-_FOOTER_SIZE:]
  if struct.unpack('<Q', footer[-8:])[0] != _TABLE_MAGIC:
    raise ValueError('bad magic number: not a checkpoint index')
  _, pos = read_varint(footer, 0)   # metaindex offset
  _, pos = read_varint(footer, pos)  # metaindex size
  index_offset, pos = read_varint(footer, pos)
  index_size, pos = read_varint(footer, pos)
  for _, handle in _block_entries(data, index_offset, index_size):
    offset, p = read_varint(handle, 0)
    size, _ = read_varint(handle, p)
    yield from _block_entries(data, offset, size)


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


def encode_block(items):
  """A table block: every entry a restart point (no key sharing), then the restart array."""
  body, restarts = bytearray(), []
  for key, value in items:
    restarts.append(len(body))
    body += encode_varint(0) + encode_varint(len(key)) + encode_varint(len(value)) + key + value
  if not restarts:
    restarts = [0]
  body += b''.join(struct.pack('<I', r) for r in restarts) + struct.pack('<I', len(restarts))
  return bytes(body)


def encode_table(items, block_bytes=256 << 10):
  """A LevelDB table of `items` ((key bytes, value bytes), sorted), as TensorFlow's table.cc
  writes it: data blocks of about `block_bytes`, every entry a restart point, each block
  followed by its type byte and masked CRC32C, then the metaindex and index blocks and the
  footer."""
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
      index.append((current[-1][0], put_block(encode_block(current))))
      current, size = [], 0
  if current:
    index.append((current[-1][0], put_block(encode_block(current))))
  metaindex = put_block(encode_block([]))
  index_handle = put_block(encode_block(index))
  footer = (metaindex + index_handle).ljust(40, b'\x00') + struct.pack('<Q', _TABLE_MAGIC)
  out.extend(footer)
  return bytes(out)
