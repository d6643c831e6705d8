"""formats/checkpoint_index: the index TensorFlow writes, read; ours, written; bytes copied.

TensorFlow's own checkpoints (a tf.train.Checkpoint, a tf.compat.v1 Saver with a partitioned
variable) are read and compared entry by entry with tf.train.load_checkpoint; what
write_index and copy_tensors write is read back by TensorFlow. A table builder written here
from LevelDB's format (prefix-shared keys, Snappy-compressed blocks, which TensorFlow's
writer no longer makes) checks the reader against a second writer.
"""

import os
import struct

from google.protobuf.internal import encoder as pb_encoder
import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import crc32c
from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.formats import checkpoint_index as ci
from freezerlib.formats import leveldb_table
from freezerlib.formats import object_graph

tf1 = tf.compat.v1
BundleEntryProto = lean_tf.tensor_bundle_pb2.BundleEntryProto
_varint_bytes = pb_encoder._VarintBytes
FLOAT, INT64, STRING = (tf.float32.as_datatype_enum, tf.int64.as_datatype_enum,
                        tf.string.as_datatype_enum)


# ---------------------------------------------------------------------------------------------
# An independent encoder of what TensorFlow writes: OrderedCode slice keys, LevelDB tables.


def _ordered_num(n):
  raw = n.to_bytes((n.bit_length() + 7) // 8, 'big') if n else b''
  return bytes([len(raw)]) + raw


def _ordered_signed(v):
  """OrderedCode SignedNumIncreasing for |v| < 2**13."""
  x = ~v if v < 0 else v
  raw = bytes([0x80 | x]) if x < 64 else (0xc000 | x).to_bytes(2, 'big')
  return bytes((~b) & 0xff for b in raw) if v < 0 else raw


def _slice_key(name, extents):
  key = b'\x00' + name.encode().replace(b'\x00', b'\x00\xff') + b'\x00\x01'
  key += _ordered_num(len(extents))
  for start, length in extents:
    key += _ordered_signed(start) + _ordered_signed(length)
  return key


def _snappy(data):
  """Snappy's block format, greedy: copies (2-byte offsets) of earlier runs of 4+ bytes."""
  out, literal, pos = bytearray(_varint_bytes(len(data))), bytearray(), 0

  def flush():
    while literal:
      piece = bytes(literal[:60])
      del literal[:60]
      out.extend(bytes([(len(piece) - 1) << 2]) + piece)

  while pos < len(data):
    best, offset = 0, 0
    for start in range(max(0, pos - 65535), pos):
      n = 0
      while pos + n < len(data) and n < 64 and data[start + n] == data[pos + n]:
        n += 1
      if n > best:
        best, offset = n, pos - start
    if best >= 4:
      flush()
      out.extend(bytes([((best - 1) << 2) | 2]) + struct.pack('<H', offset))
      pos += best
    else:
      literal.append(data[pos])
      pos += 1
  flush()
  return bytes(out)


def _table(items, per_block=3, compress=False, header=True, num_shards=1):
  """A LevelDB table of sorted (key, value) items: keys prefix-shared, a restart every 2."""
  if header:
    items = [(b'', lean_tf.tensor_bundle_pb2.BundleHeaderProto(
        num_shards=num_shards).SerializeToString())] + items
  out, index = bytearray(), []

  def put(block, compressed):
    handle = _varint_bytes(len(out))
    kind = b'\x01' if compressed else b'\x00'
    # The trailer's masked CRC32C covers the stored block and its type byte (table.cc).
    out.extend(block + kind + struct.pack('<I', crc32c.masked(block + kind)))
    return handle + _varint_bytes(len(block))

  def block_of(chunk):
    body, restarts, last = bytearray(), [], b''
    for i, (key, value) in enumerate(chunk):
      shared = 0
      if i % 2:
        while shared < min(len(key), len(last)) and key[shared] == last[shared]:
          shared += 1
      else:
        restarts.append(len(body))
      body += b''.join(_varint_bytes(n) for n in (shared, len(key) - shared, len(value)))
      body += key[shared:] + value
      last = key
    return bytes(body + b''.join(struct.pack('<I', r) for r in restarts or [0]) +
                 struct.pack('<I', len(restarts or [0])))

  for i in range(0, len(items), per_block):
    chunk = items[i:i + per_block]
    block = block_of(chunk)
    index.append((chunk[-1][0], put(_snappy(block) if compress else block, compress)))
  metaindex = put(block_of([]), False)
  index_handle = put(block_of(index), False)
  return bytes(out) + (metaindex + index_handle).ljust(40, b'\0') + struct.pack(
      '<Q', 0xdb4775248b80fb57)


def _entry(dtype, shape, offset=0, size=0, shard=0, slices=()):
  entry = BundleEntryProto(dtype=dtype, shard_id=shard, offset=offset, size=size)
  for n in shape:
    entry.shape.dim.add().size = n
  for extents in slices:
    tensor_slice = entry.slices.add()
    for start, length in extents:
      extent = tensor_slice.extent.add(start=start)
      if length is not None:
        extent.length = length
  return entry


# ---------------------------------------------------------------------------------------------
# Our writer, read back


def _records():
  """Records of 3 tensors on 2 shards: a, b/c, and p of [10, 2] in slices of 4 and 6 rows."""
  return [
      (b'a', _entry(FLOAT, [2, 3], 0, 24)),
      (b'b/c', _entry(INT64, [4], 0, 32, shard=1)),
      (b'p', _entry(FLOAT, [10, 2], slices=[[(0, 4), (0, None)], [(4, 6), (0, None)]])),
      (_slice_key('p', [(0, 4), (0, 2)]), _entry(FLOAT, [4, 2], 24, 32)),
      (_slice_key('p', [(4, 6), (0, 2)]), _entry(FLOAT, [6, 2], 32, 48, shard=1)),
  ]


def _write_data(prefix, sizes):
  for k, size in enumerate(sizes):
    with open('%s.data-%05d-of-%05d' % (prefix, k, len(sizes)), 'wb') as f:
      f.write(os.urandom(size))


@pytest.mark.parametrize('block_bytes', [256 << 10, 40])
def test_write_index_reads_back(tmp_path, block_bytes):
  prefix = str(tmp_path / 'ckpt')
  ci.write_index(prefix + '.index', _records(), num_shards=2, block_bytes=block_bytes)
  _write_data(prefix, [56, 80])
  checkpoint = ci.read_index(prefix)
  assert checkpoint.prefix == prefix and checkpoint.num_shards == 2
  assert checkpoint.data_files() == [prefix + '.data-00000-of-00002',
                                     prefix + '.data-00001-of-00002']
  records = dict(_records())
  assert checkpoint.entries == {'a': records[b'a'], 'b/c': records[b'b/c'], 'p': records[b'p']}
  assert checkpoint.slices == {'p': [(k, records[k]) for k in sorted(records) if k[:1] == b'\0']}
  assert checkpoint.records('a') == [(b'a', records[b'a'])]
  assert checkpoint.nbytes('p') == 80 and checkpoint.nbytes('a') == 24
  assert ci.slices_of(checkpoint, 'p') == [((0, 4), (0, 2)), ((4, 6), (0, 2))]


def test_tensorflow_reads_an_index_written_here(tmp_path):
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  prefix = str(tmp_path / 'ckpt')
  with open(prefix + '.data-00000-of-00001', 'wb') as f:
    f.write(values.tobytes())
  entry = _entry(FLOAT, [2, 3], 0, 24)
  entry.crc32c = crc32c.masked(values.tobytes())
  ci.write_index(prefix + '.index', [(b'layer/w', entry)])
  reader = tf.train.load_checkpoint(prefix)
  assert reader.get_variable_to_shape_map() == {'layer/w': [2, 3]}
  np.testing.assert_array_equal(reader.get_tensor('layer/w'), values)


@pytest.mark.parametrize('compress', [False, True], ids=['plain', 'snappy'])
def test_reader_agrees_with_a_second_table_writer(tmp_path, compress):
  items = sorted((key, entry.SerializeToString()) for key, entry in _records())
  prefix = str(tmp_path / 'ckpt')
  table = _table(items, compress=compress, num_shards=2)
  if compress:  # Snappy found runs to copy (keys and protos repeat)
    assert len(table) < len(_table(items, num_shards=2))
  (tmp_path / 'ckpt.index').write_bytes(table)
  _write_data(prefix, [56, 80])
  checkpoint = ci.read_index(prefix)
  records = dict(_records())
  assert checkpoint.entries == {'a': records[b'a'], 'b/c': records[b'b/c'], 'p': records[b'p']}
  assert [k for k, _ in checkpoint.slices['p']] == sorted(k for k in records if k[:1] == b'\0')
  (tmp_path / 'ckpt.index').write_bytes(_table(items, header=False))
  with pytest.raises(errors.UserError, match='has no header'):
    ci.read_index(prefix)


def test_snappy_elements():
  uncompress = leveldb_table._snappy_uncompress
  literal = lambda b: bytes([(len(b) - 1) << 2]) + b
  assert uncompress(b'\x05' + literal(b'hello')) == b'hello'
  long = bytes(range(200))  # literal lengths past 60 take 1 extra byte
  assert uncompress(bytes([200, 1, 60 << 2, 199]) + long) == long
  # Copies: 1-byte offset (kind 1), 2-byte (kind 2), 4-byte (kind 3); overlapping runs.
  assert uncompress(b'\x09' + literal(b'abc') + bytes([((6 - 4) << 2) | 1, 3])) == b'abcabcabc'
  assert uncompress(b'\x06' + literal(b'x') + bytes([(5 - 1) << 2 | 2, 1, 0])) == b'xxxxxx'
  assert uncompress(b'\x04' + literal(b'ab') + bytes([(2 - 1) << 2 | 3, 2, 0, 0, 0])) == b'abab'
  assert uncompress(_snappy(b'abcdabcdabcdxyz' * 5)) == b'abcdabcdabcdxyz' * 5
  for bad in (b'\x05' + bytes([(4 - 1) << 2 | 2, 0, 0]),  # offset 0
              b'\x08' + literal(b'ab') + bytes([(4 - 1) << 2 | 2, 3, 0]),  # before the start
              b'\x09' + literal(b'abc')):  # shorter than its preamble says
    with pytest.raises(ValueError, match='corrupt snappy block'):
      uncompress(bad)


# ---------------------------------------------------------------------------------------------
# TensorFlow's checkpoints, read


def test_tf2_checkpoint_entries_equal_tensorflows_reader(tmp_path):
  values = {
      'layer/kernel': tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4)),
      'layer/bias': tf.Variable(np.array([1, -2, 3, 2**40, 5], np.int64)),
      'layer/half': tf.Variable(np.float16(2.5)),
      'flags': tf.Variable([True, False, True]),
      'words': tf.Variable([b'', b'apple', b'x' * 300]),
  }
  root = tf.Module()
  root.layer = tf.Module()
  for name, variable in values.items():
    owner = root.layer if name.startswith('layer/') else root
    setattr(owner, name.split('/')[-1], variable)
  prefix = tf.train.Checkpoint(root=root).write(str(tmp_path / 'ckpt'))
  checkpoint = ci.read_index(prefix)
  reader = tf.train.load_checkpoint(prefix)
  shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
  assert set(checkpoint.entries) == set(shapes) and not checkpoint.slices
  assert checkpoint.num_shards == 1
  data = (tmp_path / 'ckpt.data-00000-of-00001').read_bytes()
  for name, entry in checkpoint.entries.items():
    assert [d.size for d in entry.shape.dim] == shapes[name], name
    assert entry.dtype == dtypes[name].as_datatype_enum, name
    expected = reader.get_tensor(name)
    if entry.dtype == STRING:
      got = ci.read_string_tensor(checkpoint, name)
      assert got == list(np.ravel(expected)), name
    else:
      stored = data[entry.offset:entry.offset + entry.size]
      got = np.frombuffer(stored, dtypes[name].as_numpy_dtype).reshape(shapes[name])
      np.testing.assert_array_equal(got, expected, err_msg=name)
      assert crc32c.masked(stored) == entry.crc32c, name
  assert sum(checkpoint.nbytes(n) for n in checkpoint.entries) == sum(
      e.size for e in checkpoint.entries.values())


def test_partitioned_variable_of_a_saver(saver_checkpoint):
  prefix, values, specs, parts = saver_checkpoint
  checkpoint = ci.read_index(prefix)
  reader = tf.train.load_checkpoint(prefix)
  assert reader.get_variable_to_shape_map() == {n: list(v.shape) for n, v in values.items()}
  assert set(checkpoint.entries) == set(values) and list(checkpoint.slices) == ['emb']
  assert specs == ['200 3 0,67:0,3', '200 3 134,66:0,3', '200 3 67,67:0,3']
  extents = sorted(ci.parse_slice_spec(s)[1] for s in specs)
  assert ci.slices_of(checkpoint, 'emb') == extents
  assert checkpoint.entries['emb'].size == 0 and checkpoint.nbytes('emb') == 200 * 3 * 4
  data = open(checkpoint.data_files()[0], 'rb').read()
  by_extents = {ci.parse_slice_spec(s)[1]: parts[s] for s in specs}
  for key, entry in checkpoint.slices['emb']:
    found = ci.slice_key_extents(key, [200, 3])
    assert key == _slice_key('emb', found)  # what TensorFlow wrote is what we would encode
    stored = np.frombuffer(data[entry.offset:entry.offset + entry.size], np.float32)
    np.testing.assert_array_equal(stored.reshape(by_extents[found].shape), by_extents[found])
  np.testing.assert_array_equal(reader.get_tensor('emb'), values['emb'])


def test_slice_keys():
  key = _slice_key('a/emb', [(67, 67), (0, -1)])  # -1: the whole dimension
  assert ci.slice_key_extents(key, [200, 3]) == ((67, 67), (0, 3))
  assert ci.slice_key_extents(_slice_key('e', [(5000, 3)]), [9000]) == ((5000, 3),)
  renamed = ci.renamed_slice_key(key, 'a/emb', 'model/x')
  assert renamed == _slice_key('model/x', [(67, 67), (0, -1)])
  assert ci.slice_key_extents(renamed, [200, 3]) == ((67, 67), (0, 3))
  with pytest.raises(ValueError, match='not a slice key of b'):
    ci.renamed_slice_key(key, 'b', 'c')


@pytest.mark.parametrize('spec,expected', [
    ('1000 8 0,334:0,8', ([1000, 8], ((0, 334), (0, 8)))),
    ('10 3 4,6:-', ([10, 3], ((4, 6), (0, 3)))),
    ('7 -', ([7], ((0, 7),))),
    ('', (None, None))])
def test_parse_slice_spec(spec, expected):
  assert ci.parse_slice_spec(spec) == expected


# ---------------------------------------------------------------------------------------------
# Checks


def test_check_restorable_lists_every_problem(saver_checkpoint):
  checkpoint = ci.read_index(saver_checkpoint[0])
  fine = [ci.Want('w', tf.float32, shape=[1, 2], specs=['']),
          ci.Want('emb', tf.float32, specs=['200 3 0,67:0,3', '200 3 67,67:0,3',
                                            '200 3 134,66:0,3']),
          ci.Want('emb', tf.float32, shape=[200, 3], specs=['']),  # whole, read from slices
          ci.Want('other', lean_tf.DType(INT64))]
  ci.check_restorable(checkpoint, fine, 'the graph')
  bad = [ci.Want('nope', tf.float32),
         ci.Want('other', tf.float32),
         ci.Want('w', tf.float32, shape=[2, 1]),
         ci.Want('emb', tf.float32, specs=['200 3 0,100:0,3', '200 3 100,100:0,3']),
         ci.Want('emb', tf.float32, specs=['100 3 0,100:0,3']),
         ci.Want('w', tf.float32, specs=['1 2 0,1:0,1', '1 2 0,1:1,1'])]
  with pytest.raises(errors.UserError) as caught:
    ci.check_restorable(checkpoint, bad, 'the graph')
  assert str(caught.value) == (
      'checkpoint %s does not match the graph: nope missing; other is int64 in the checkpoint, '
      'float32 in the graph; w has shape [1, 2] in the checkpoint, [2, 1] in the graph; emb is '
      'split in 3 partitions in the checkpoint, 2 in the graph (the structure graph must keep '
      'the training graph\'s partitions); emb has shape [200, 3] in the checkpoint, [100, 3] in '
      'the graph; w is one tensor in the checkpoint, 2 partitions in the graph'
      % saver_checkpoint[0])


def _corrupt(tmp_path, change):
  prefix = str(tmp_path / 'ckpt')
  ci.write_index(prefix + '.index', _records(), num_shards=2)
  _write_data(prefix, [56, 80])
  change(tmp_path, prefix)
  return prefix


@pytest.mark.parametrize('change,message', [
    (lambda p, x: os.remove(x + '.index'), r'cannot read .*ckpt\.index'),
    (lambda p, x: (p / 'ckpt.index').write_bytes((p / 'ckpt.index').read_bytes()[:30]),
     r'ckpt\.index is truncated or corrupt \(too short'),
    (lambda p, x: (p / 'ckpt.index').write_bytes((p / 'ckpt.index').read_bytes()[:-1] + b'!'),
     'bad magic number'),
    (lambda p, x: (p / 'ckpt.index').write_bytes(
        b'\xff' * 20 + (p / 'ckpt.index').read_bytes()[20:]),
     'truncated or corrupt'),
    (lambda p, x: os.remove(x + '.data-00001-of-00002'), r'data-00001-of-00002 is missing'),
    (lambda p, x: os.truncate(x + '.data-00001-of-00002', 79),
     r'data-00001-of-00002 is truncated \(79 bytes, the index needs 80\)'),
], ids=['no_index', 'short_index', 'bad_magic', 'garbage_block', 'no_shard', 'short_shard'])
def test_bad_index_or_shard_is_named(tmp_path, change, message):
  prefix = _corrupt(tmp_path, change)
  with pytest.raises(errors.UserError, match=message):
    ci.read_index(prefix)


def _entries_changed(change):
  """_records() with change(key, BundleEntryProto) applied, as (key, entry) pairs."""
  out = []
  for key, entry in _records():
    copy = BundleEntryProto()
    copy.CopyFrom(entry)
    change(key, copy)
    out.append((key, copy))
  return out


def _with_dims(entry, dims):
  del entry.shape.dim[:]
  for size in dims:
    entry.shape.dim.add().size = size


@pytest.mark.parametrize('records,num_shards,message', [
    (lambda: _records(), 0, 'its header declares 0 data shards'),
    (lambda: _entries_changed(lambda k, e: k == b'a' and setattr(e, 'shard_id', 2)), 2,
     r"entry 'a' is in data shard 2, of 2"),
    (lambda: _entries_changed(lambda k, e: k == b'a' and setattr(e, 'dtype', 77)), 2,
     r"entry 'a' has dtype 77, which is not a TensorFlow type"),
    (lambda: _entries_changed(lambda k, e: k == b'a' and _with_dims(e, [2**31] * 3)), 2,
     r"entry 'a' has a shape whose size overflows"),
    (lambda: _entries_changed(lambda k, e: k == b'a' and setattr(e, 'offset', -8)), 2,
     r"entry 'a' has a negative offset or size \(-8, "),
    (lambda: _entries_changed(lambda k, e: k == b'a' and setattr(e, 'size', e.size - 4)), 2,
     r"entry 'a' holds \d+ bytes, its shape of \d+ float(32)? elements needs \d+"),
], ids=['no_shards', 'shard_past_the_count', 'dtype', 'overflow', 'negative_offset',
        'size_against_shape'])
def test_index_entries_are_checked_against_the_header_and_their_shape(tmp_path, records,
                                                                       num_shards, message):
  prefix = str(tmp_path / 'ckpt')
  ci.write_index(prefix + '.index', records(), num_shards=num_shards)
  _write_data(prefix, [56, 80])
  with pytest.raises(errors.UserError, match=message):
    ci.read_index(prefix)


def test_an_index_block_that_fails_its_checksum_or_keys_out_of_order_are_refused(tmp_path):
  prefix = str(tmp_path / 'ckpt')
  ci.write_index(prefix + '.index', _records(), num_shards=2)
  _write_data(prefix, [56, 80])
  data = bytearray((tmp_path / 'ckpt.index').read_bytes())
  data[3] ^= 1  # inside the first block: its entries would still parse
  (tmp_path / 'ckpt.index').write_bytes(bytes(data))
  with pytest.raises(errors.UserError, match='a block at offset 0 fails its checksum'):
    ci.read_index(prefix)
  items = sorted((k, e.SerializeToString()) for k, e in _records())
  items[1], items[2] = items[2], items[1]
  header = lean_tf.tensor_bundle_pb2.BundleHeaderProto(num_shards=2).SerializeToString()
  (tmp_path / 'ckpt.index').write_bytes(_unsorted_table([(b'', header)] + items))
  with pytest.raises(errors.UserError, match='its keys are not in order'):
    ci.read_index(prefix)


def _unsorted_table(items):
  """A table of `items` in the order given (write_index sorts them), checksums valid."""
  out = bytearray()

  def put(contents):
    offset = len(out)
    out.extend(contents + b'\x00' + struct.pack('<I', crc32c.masked(contents + b'\x00')))
    return leveldb_table.encode_varint(offset) + leveldb_table.encode_varint(len(contents))

  block = put(leveldb_table.encode_block(items))
  metaindex = put(leveldb_table.encode_block([]))
  index = put(leveldb_table.encode_block([(items[-1][0], block)]))
  return bytes(out) + (metaindex + index).ljust(40, b'\0') + struct.pack('<Q', 0xdb4775248b80fb57)


def test_a_state_file_naming_a_path_with_a_nul_is_refused(tmp_path):
  (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "model\\000.ckpt"\n')
  with pytest.raises(errors.UserError, match='the checkpoint state file in .* is corrupt: its '
                                             'model_checkpoint_path holds a NUL'):
    ci.resolve_prefix(str(tmp_path))


def test_a_slice_listed_but_not_stored_is_refused(tmp_path):
  prefix = str(tmp_path / 'ckpt')
  ci.write_index(prefix + '.index', _records()[:-1], num_shards=2)  # p's second slice gone
  _write_data(prefix, [56, 80])
  with pytest.raises(errors.UserError, match=r'ckpt\.index is corrupt: tensor p lists slice '
                                             r'4,6:0,2, which it does not store'):
    ci.read_index(prefix)


def test_a_shard_count_past_the_files_there_is_refused_before_a_path_is_made(tmp_path,
                                                                             monkeypatch):
  prefix = str(tmp_path / 'ckpt')
  ci.write_index(prefix + '.index', _records(), num_shards=10**8)
  _write_data(prefix, [56, 80])
  made = []
  monkeypatch.setattr(ci.Checkpoint, 'data_files', lambda self: made.append(1) or [])
  with pytest.raises(errors.UserError, match=r'ckpt\.index is corrupt: it declares 100000000 '
                                             r'data shards, but .* holds 3 files'):
    ci.read_index(prefix)
  assert not made


def test_resolve_prefix(tmp_path, saver_checkpoint):
  prefix = saver_checkpoint[0]
  assert ci.resolve_prefix(prefix) == prefix
  # A tf.compat.v1 Saver's state file names the prefix by its absolute path.
  assert ci.resolve_prefix(os.path.dirname(prefix)) == prefix
  (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "sub/model.ckpt-9"\n')
  assert ci.resolve_prefix(str(tmp_path)) == str(tmp_path / 'sub' / 'model.ckpt-9')
  (tmp_path / 'checkpoint').write_text('model_checkpoint_path: [not a proto')
  with pytest.raises(errors.UserError, match='cannot read the checkpoint state file'):
    ci.resolve_prefix(str(tmp_path))
  (tmp_path / 'checkpoint').unlink()
  with pytest.raises(errors.UserError, match='holds no `checkpoint` state file: pass a '
                                             'checkpoint prefix'):
    ci.resolve_prefix(str(tmp_path))
  with pytest.raises(errors.UserError, match='does not exist'):
    ci.resolve_prefix(str(tmp_path / 'missing' / 'model.ckpt'))
  with pytest.raises(errors.UserError, match=r'no .*model\.ckpt-5\.index \(pass a prefix'):
    ci.resolve_prefix(str(tmp_path / 'model.ckpt-5'))


# ---------------------------------------------------------------------------------------------
# Strings


def _string_bytes(tmp_path, values):
  prefix = tf.train.Checkpoint(v=tf.Variable(tf.constant(values))).write(str(tmp_path / 'c'))
  checkpoint = ci.read_index(prefix)
  entry = checkpoint.entries['v/.ATTRIBUTES/VARIABLE_VALUE']
  data = (tmp_path / 'c.data-00000-of-00001').read_bytes()[entry.offset:entry.offset + entry.size]
  return checkpoint, entry, data


def test_string_tensors_decode_as_tensorflow_reads_them(tmp_path):
  values = [b'', b'a', b'x' * 300, bytes(range(256)), b'\x00end']
  prefix = tf.train.Checkpoint(v=tf.Variable(tf.constant(values))).write(str(tmp_path / 'c'))
  index = ci.read_index(prefix)
  assert ci.read_string_tensor(index, 'v/.ATTRIBUTES/VARIABLE_VALUE') == values
  graph = object_graph.read_object_graph(index)
  assert [c.local_name for c in graph.nodes[0].children] == ['v']


def test_string_tensor_checksums_and_lengths(tmp_path):
  values = [b'ab', b'', b'c' * 200]
  checkpoint, entry, data = _string_bytes(tmp_path, values)
  assert ci.decode_string_tensor(data, 3, entry.crc32c) == values
  assert ci.decode_string_tensor(data, 3) == values
  with pytest.raises(ValueError, match='string tensor fails its checksum'):
    ci.decode_string_tensor(data[:-1] + b'!', 3, entry.crc32c)
  with pytest.raises(ValueError, match='lengths fail their checksum'):
    ci.decode_string_tensor(b'\x03' + data[1:], 3)
  with pytest.raises(ValueError, match='holds 201 bytes, its lengths say 202'):
    ci.decode_string_tensor(data[:-1], 3)
  with pytest.raises(ValueError, match='truncated'):
    ci.decode_string_tensor(data[:3], 3)
  with pytest.raises(errors.UserError, match='holds no tensor nope'):
    ci.read_string_tensor(checkpoint, 'nope')
  checkpoint.entries = dict(checkpoint.entries, n=_entry(FLOAT, [], 0, 4))
  with pytest.raises(errors.UserError, match='n is not a string tensor'):
    ci.read_string_tensor(checkpoint, 'n')
  os.truncate(checkpoint.data_files()[0], entry.offset + 5)
  with pytest.raises(errors.UserError,
                     match='is corrupt: tensor v/.ATTRIBUTES/VARIABLE_VALUE .*ends early'):
    ci.read_string_tensor(checkpoint, 'v/.ATTRIBUTES/VARIABLE_VALUE')
