"""checkpoint_copy: tensors copied as stored bytes (checked, linked where nearly whole), read
back by TensorFlow's own reader."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import checkpoint_index as ci

tf1 = tf.compat.v1


# ---------------------------------------------------------------------------------------------
# Copies


def test_copy_tensors_is_restored_by_tensorflow(saver_checkpoint, tmp_path, monkeypatch):
  prefix, values, specs, parts = saver_checkpoint
  checkpoint = ci.read_index(prefix)
  # emb and w are all but `other`'s 8 bytes of the data file: copied here all the same.
  monkeypatch.setattr(checkpoint_copy, '_LINK_SLACK', 0)
  progress = []
  dst = str(tmp_path / 'copy')
  copied = checkpoint_copy.copy_tensors(checkpoint, ['emb', 'w'], dst, chunk_bytes=100,
                           progress=lambda done, total: progress.append((done, total)))
  assert copied == 200 * 3 * 4 + 2 * 4
  assert progress[-1] == (copied, copied)
  # Two data shards, one per copying worker, between them every byte once.
  sizes = [os.path.getsize('%s.data-%05d-of-00002' % (dst, k)) for k in range(2)]
  assert sum(sizes) == copied and min(sizes) > 0
  reader = tf.train.load_checkpoint(dst)
  assert reader.get_variable_to_shape_map() == {'emb': [200, 3], 'w': [1, 2]}
  for name in ('emb', 'w'):
    np.testing.assert_array_equal(reader.get_tensor(name), values[name])
  for spec in specs:  # each partition as the serving graph's RestoreV2 reads it
    got = tf.raw_ops.RestoreV2(prefix=dst, tensor_names=['emb'], shape_and_slices=[spec],
                               dtypes=[tf.float32])[0]
    np.testing.assert_array_equal(got, parts[spec])
  copy = ci.read_index(dst)
  assert copy.num_shards == 2 and len(copy.slices['emb']) == 3
  for name in ('emb', 'w'):  # the stored bytes with their own checksums
    assert [e.crc32c for _, e in copy.records(name)] == [
        e.crc32c for _, e in checkpoint.records(name)]


def test_a_data_file_needed_nearly_whole_is_linked_not_copied(saver_checkpoint, tmp_path):
  prefix, values, _, _ = saver_checkpoint
  checkpoint = ci.read_index(prefix)
  source = checkpoint.data_files()[0]
  # emb and w: all of the data file but `other`'s 8 bytes (under 1%).
  dst = str(tmp_path / 'linked')
  assert checkpoint_copy.copy_tensors(checkpoint, ['emb', 'w'], dst) == 200 * 3 * 4 + 2 * 4
  copy = ci.read_index(dst)
  assert copy.data_files() == [dst + '.data-00000-of-00001']
  assert os.stat(copy.data_files()[0]).st_ino == os.stat(source).st_ino
  reader = tf.train.load_checkpoint(dst)
  assert reader.get_variable_to_shape_map() == {'emb': [200, 3], 'w': [1, 2]}
  for name in ('emb', 'w'):
    np.testing.assert_array_equal(reader.get_tensor(name), values[name])
  # A flipped bit is still found: the linked file's needed bytes are checked first.
  corrupt = tmp_path / 'corrupt'
  corrupt.mkdir()
  for path in (prefix + '.index', source):
    shutil.copy(path, corrupt)
  bad = str(corrupt / os.path.basename(prefix))
  entry = checkpoint.entries['w']
  with open(bad + '.data-00000-of-00001', 'r+b') as f:
    f.seek(entry.offset)
    byte = f.read(1)
    f.seek(entry.offset)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(errors.UserError, match='tensor w .*fails its checksum'):
    checkpoint_copy.copy_tensors(ci.read_index(bad), ['emb', 'w'], str(tmp_path / 'bad_copy'))
  # Only `w`: the file is mostly unneeded, so w is copied into a file of its own.
  dst = str(tmp_path / 'copied')
  checkpoint_copy.copy_tensors(checkpoint, ['w'], dst)
  assert os.path.getsize(ci.read_index(dst).data_files()[0]) == 8


def test_linked_and_copied_data_files_in_one_checkpoint(saver_checkpoint, tmp_path):
  # Records of two checkpoints: one needed all but its object graph (linked), one only in
  # part (its record copied into a data file of its own).
  big = np.arange(20000, dtype=np.float32).reshape(100, 200)
  whole = ci.read_index(tf.train.Checkpoint(v=tf.Variable(big)).write(str(tmp_path / 'a' / 'c')))
  part = ci.read_index(saver_checkpoint[0])
  records = [checkpoint_copy.Record(whole, key, entry) for key, entry in
             whole.records('v/.ATTRIBUTES/VARIABLE_VALUE')]
  records += [checkpoint_copy.Record(part, key, entry, new_key=b'w2')
              for key, entry in part.records('w')]
  dst = str(tmp_path / 'both')
  assert checkpoint_copy.copy_records(records, dst) == big.nbytes + 8
  copy = ci.read_index(dst)
  assert copy.num_shards == 2
  assert os.stat(copy.data_files()[0]).st_ino == os.stat(whole.data_files()[0]).st_ino
  assert os.path.getsize(copy.data_files()[1]) == 8
  reader = tf.train.load_checkpoint(dst)
  np.testing.assert_array_equal(reader.get_tensor('v/.ATTRIBUTES/VARIABLE_VALUE'), big)
  np.testing.assert_array_equal(reader.get_tensor('w2'), saver_checkpoint[1]['w'])


def test_slice_records_copy_only_the_partitions_asked_for(saver_checkpoint, tmp_path):
  prefix, _, specs, parts = saver_checkpoint
  checkpoint = ci.read_index(prefix)
  # the entry and its 3 slices
  assert len(checkpoint_copy.slice_records(checkpoint, 'emb', {''})) == 4
  assert len(checkpoint_copy.slice_records(checkpoint, 'w', {''})) == 1
  dst = str(tmp_path / 'part')
  records = checkpoint_copy.slice_records(checkpoint, 'emb', {specs[1]})
  assert checkpoint_copy.copy_records(records, dst) == parts[specs[1]].nbytes
  copy = ci.read_index(dst)
  assert ci.slices_of(copy, 'emb') == [ci.parse_slice_spec(specs[1])[1]]
  got = tf.raw_ops.RestoreV2(prefix=dst, tensor_names=['emb'], shape_and_slices=[specs[1]],
                             dtypes=[tf.float32])[0]
  np.testing.assert_array_equal(got, parts[specs[1]])
  with pytest.raises(tf.errors.OpError):  # the others are not there
    tf.raw_ops.RestoreV2(prefix=dst, tensor_names=['emb'], shape_and_slices=[specs[0]],
                         dtypes=[tf.float32])


def test_copy_records_stores_one_tensor_under_two_keys_once(saver_checkpoint, tmp_path):
  checkpoint = ci.read_index(saver_checkpoint[0])
  entry = checkpoint.entries['w']
  records = [checkpoint_copy.Record(checkpoint, b'w', entry, b'first/w'),
             checkpoint_copy.Record(checkpoint, b'w', entry, b'second/w'),
             checkpoint_copy.Record(checkpoint, b'other', checkpoint.entries['other'])]
  dst = str(tmp_path / 'copy')
  assert checkpoint_copy.copy_records(records, dst) == entry.size + 8
  reader = tf.train.load_checkpoint(dst)
  assert sorted(reader.get_variable_to_shape_map()) == ['first/w', 'other', 'second/w']
  np.testing.assert_array_equal(reader.get_tensor('second/w'), saver_checkpoint[1]['w'])
  assert reader.get_tensor('other') == 7


def test_copy_from_a_shard_cut_short_is_refused(saver_checkpoint, tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  for name in os.listdir(os.path.dirname(saver_checkpoint[0])):
    if name.startswith('model.ckpt.'):
      (src / name).write_bytes(open(os.path.join(os.path.dirname(saver_checkpoint[0]), name),
                                    'rb').read())
  checkpoint = ci.read_index(str(src / 'model.ckpt'))
  os.truncate(checkpoint.data_files()[0], 10)
  with pytest.raises(errors.UserError, match=r'model\.ckpt\.data-00000-of-00001: \d+ bytes '
                     r'short \(it ends early\)'):
    checkpoint_copy.copy_tensors(checkpoint, ['emb', 'w', 'other'], str(tmp_path / 'copy'))


def test_link_checkpoint_shares_the_files(saver_checkpoint, tmp_path):
  prefix = saver_checkpoint[0]
  checkpoint = ci.read_index(prefix)
  tensors, nbytes = checkpoint_copy.link_files(checkpoint, str(tmp_path / 'linked'))
  assert tensors == 3 and nbytes == 200 * 3 * 4 + 2 * 4 + 8
  for suffix in ('.index', '.data-00000-of-00001'):
    assert os.stat(str(tmp_path / 'linked') + suffix).st_ino == os.stat(prefix + suffix).st_ino
  checkpoint_copy.link_checkpoint(prefix, str(tmp_path / 'again'))
  np.testing.assert_array_equal(tf.train.load_checkpoint(str(tmp_path / 'again')).get_tensor(
      'emb'), saver_checkpoint[1]['emb'])
