"""leveldb_table: LevelDB's table format as TensorFlow's table.cc reads and writes it."""

import struct

from google.protobuf.internal import encoder as pb_encoder
import pytest

from freezerlib.formats import leveldb_table

_varint_bytes = pb_encoder._VarintBytes




@pytest.mark.parametrize('value', [0, 1, 127, 128, 300, 2**32, 2**63 - 1])
def test_varints_are_protobufs(value):
  encoded = leveldb_table.encode_varint(value)
  assert encoded == _varint_bytes(value)
  decode = leveldb_table.read_varint
  assert decode(encoded + b'rest', 0) == (value, len(encoded))
  if len(encoded) > 1:
    with pytest.raises(ValueError, match='truncated varint'):
      decode(encoded[:-1], 0)


def _items(count):
  return [(b'key%06d' % k, b'value %d' % k * (k % 7 + 1)) for k in range(count)]


def test_a_table_written_reads_back_across_blocks():
  items = _items(3000)
  data = leveldb_table.encode_table(items, block_bytes=4096)
  assert list(leveldb_table.table_items(data)) == items
  assert len(list(leveldb_table.table_items(leveldb_table.encode_table([])))) == 0


def test_a_flipped_byte_fails_its_block_checksum():
  data = bytearray(leveldb_table.encode_table(_items(50)))
  data[10] ^= 1
  with pytest.raises(ValueError, match='fails its checksum'):
    list(leveldb_table.table_items(bytes(data)))


def test_a_file_that_is_not_a_table_is_refused():
  with pytest.raises(ValueError, match='too short'):
    list(leveldb_table.table_items(b'x' * 10))
  data = leveldb_table.encode_table(_items(3))
  with pytest.raises(ValueError, match='bad magic'):
    list(leveldb_table.table_items(data[:-8] + struct.pack('<Q', 1)))
