"""Stored tensors are checked against the CRC32C their checkpoint index records, while copied.

The convention (what BundleEntryProto.crc32c covers, per dtype) is checked against TensorFlow's
own checkpoints and against TensorFlow's reader, which refuses the same flipped bytes. Then each
path that copies stored bytes (the checkpoint path for TF1 and TF2 structures, the streaming
freezer, --keep_as_variables) refuses a checkpoint with one byte flipped inside a tensor it
copies: one line naming the tensor and the shard, exit 1, nothing written, the input unchanged.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error
from conftest import run_main_as_process
from conftest import run_script
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import crc32c
from freezerlib.core import errors
from freezerlib.export import from_checkpoint
from freezerlib.formats import checkpoint_index
from freezerlib.formats import stored_tensor
import optimize_from_ckpt  # its command line, in-process after one run_script


def _records(prefix):
  index = checkpoint_index.read_index(prefix)
  return index, [(key, entry) for name in sorted(index.entries)
                 for key, entry in index.records(name) if entry.size]


def _stored(index, entry):
  with open(index.data_files()[entry.shard_id], 'rb') as f:
    f.seek(entry.offset)
    return f.read(entry.size)


def _flip(prefix, key, where=0.5):
  """Flips one bit of the byte at `where` (a fraction) of the stored bytes of record `key`
  (a tensor name, or a slice key); returns the data shard's path."""
  index = checkpoint_index.read_index(prefix)
  entry = dict(key_entry for name in index.entries
               for key_entry in index.records(name))[key.encode() if isinstance(key, str)
                                                     else key]
  path = index.data_files()[entry.shard_id]
  with open(path, 'r+b') as f:
    f.seek(entry.offset + int(entry.size * where))
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0x10]))
  return path


def test_masking_is_tensorflows():
  # crc32c::Mask of the CRC of b'' and of b'a' (values from TensorFlow's crc32c_test.cc logic:
  # Unmask(Mask(x)) == x, and Mask differs from x).
  for data in (b'', b'a', b'123456789'):
    crc = crc32c.value(data)
    assert crc32c.unmask(crc32c.mask(crc)) == crc and crc32c.mask(crc) != crc
  assert crc32c.value(b'123456789') == 0xe3069283  # the CRC-32C check value
  # A bytearray, a memoryview of it and bytes give one CRC, the bytearray read in place.
  data = bytearray(os.urandom(1 << 20))
  assert crc32c.value(data) == crc32c.value(bytes(data)) == crc32c.value(memoryview(data)[:])
  assert crc32c.extend(crc32c.value(data[:10]), memoryview(data)[10:]) == crc32c.value(data)


@pytest.fixture(scope='module')
def bundle(tmp_path_factory):
  """A checkpoint written by TensorFlow's SaveV2 with every stored encoding: numbers, bools,
  strings (short, >= 128 bytes, empty, non-ASCII), an empty tensor, a variant, and slices."""
  prefix = str(tmp_path_factory.mktemp('bundle') / 'model')
  strings = [b'a', b'', b'x' * 200, b'y' * 70000, 'é'.encode()] + [b'k%d' % i for i in range(300)]
  tensor_list = tf.raw_ops.TensorListFromTensor(tensor=tf.constant([[1., 2.], [3., 4.]]),
                                                element_shape=tf.constant([2]))
  rows = np.arange(40, dtype=np.float32).reshape(8, 5)
  named = [('floats', '', tf.random.normal([300, 7], seed=1)),
           ('ints', '', tf.range(1000, dtype=tf.int64)),
           ('halves', '', tf.constant([1.5, -2.0], tf.float16)),
           ('bools', '', tf.constant([True, False, True])),
           ('strings', '', tf.constant(strings)),
           ('scalar_string', '', tf.constant('model')),
           ('no_strings', '', tf.constant([], tf.string)),
           ('empty', '', tf.zeros([0, 3])),
           ('variants', '', tf.stack([tensor_list, tensor_list])),
           ('sliced', '8 5 0,3:-', tf.constant(rows[:3])),
           ('sliced', '8 5 3,5:-', tf.constant(rows[3:]))]
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[n for n, _, _ in named],
                    shape_and_slices=[s for _, s, _ in named], tensors=[t for _, _, t in named])
  return prefix


def test_every_stored_tensor_of_tensorflow_passes_whole_and_in_pieces(bundle):
  index, records = _records(bundle)
  assert {index.entries[n].dtype for n in index.entries} >= {
      tf.float32.as_datatype_enum, tf.string.as_datatype_enum, tf.variant.as_datatype_enum}
  assert len(index.slices['sliced']) == 2
  for key, entry in records:
    data = _stored(index, entry)
    assert stored_tensor.check(entry, data) is None, key
    for size in (1, 3, 4096):
      checksum = stored_tensor.Checksum(entry)
      for start in range(0, len(data), size):
        checksum.update(bytearray(data[start:start + size]))
      assert checksum.problem() is None, (key, size)


@pytest.mark.parametrize('name', ['floats', 'bools', 'strings', 'scalar_string', 'variants',
                                  'sliced'])
@pytest.mark.parametrize('where', [0.0, 0.5, 0.999])
def test_a_flipped_byte_fails_here_and_in_tensorflows_reader(bundle, tmp_path, name, where):
  copy = str(tmp_path / 'model')
  for suffix in ('.index', '.data-00000-of-00001'):
    shutil.copy(bundle + suffix, copy + suffix)
  index = checkpoint_index.read_index(copy)
  key, entry = index.records(name)[-1]
  _flip(copy, key, where)
  assert stored_tensor.check(entry, _stored(index, entry)) is not None
  dtype = tf.as_dtype(index.entries[name].dtype)
  with pytest.raises((tf.errors.DataLossError, tf.errors.InternalError,
                      tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError)):
    tf.raw_ops.RestoreV2(prefix=copy, tensor_names=[name], shape_and_slices=[''],
                         dtypes=[dtype])


# ---------------------------------------------------------------------------------------------
# Each path that copies stored bytes


def _checkpoint_copy(tiny_model, tmp_path):
  dst = tmp_path / 'ckpt'
  shutil.copytree(tiny_model['checkpoint'].rsplit('/', 1)[0], dst)
  return str(dst / tiny_model['checkpoint'].rsplit('/', 1)[1])


def _first_slice(prefix, name):
  return checkpoint_index.read_index(prefix).slices[name][0][0]


def test_checkpoint_path_names_the_tensor_and_the_shard(tiny_model, tmp_path, capsys):
  prefix = _checkpoint_copy(tiny_model, tmp_path)
  ckpt_dir = prefix.rsplit('/', 1)[0]
  # Untouched, it passes; bytes the export does not copy (an Adam slot) are not read.
  out = tmp_path / 'untouched'
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt_dir, output_dir=str(out),
                                              saved_model_dir=tiny_model['saved_model'])
  assert (out / 'variables' / 'variables.index').is_file()
  _flip(prefix, 'hidden_0/kernel/Adam')
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt_dir, output_dir=str(out),
                                              saved_model_dir=tiny_model['saved_model'],
                                              overwrite=True)
  _flip(prefix, 'hidden_0/kernel/Adam')  # back as it was: --noprune reads every tensor
  # One bit of a partition of the embedding: refused, on the command line, with --noprune too.
  shard = _flip(prefix, _first_slice(prefix, 'item_embedding'))
  digest = tree_digest(ckpt_dir)
  for extra in ([], ['--noprune']):
    args = ['--saved_model_dir=%s' % tiny_model['saved_model'], '--checkpoint=%s' % ckpt_dir,
            '--output_saved_model_dir=%s' % (tmp_path / 'o')] + extra
    if extra:  # the command line once; in-process then, without another TensorFlow start-up
      proc = run_main_as_process(optimize_from_ckpt, args, capsys)
    else:
      proc = run_script('optimize_from_ckpt.py', *args)
    line = assert_one_line_error(proc, 'optimize_from_ckpt.py', 'is corrupt: tensor '
                                 'item_embedding (slice 0,', ':0,4) in data shard %s fails its '
                                 'checksum' % shard)
    assert 'the index records' in line
    assert not (tmp_path / 'o').exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.o')] == []
  assert tree_digest(ckpt_dir) == digest
  # --noverify_checksums copies without reading; the serving check's load, TensorFlow's
  # reader, then refuses it, and nothing is left; with --nocheck too, it is written.
  args = ['--saved_model_dir=%s' % tiny_model['saved_model'], '--checkpoint=%s' % ckpt_dir,
          '--output_saved_model_dir=%s' % (tmp_path / 'o'), '--noverify_checksums']
  proc = run_main_as_process(optimize_from_ckpt, args, capsys)
  assert_one_line_error(proc, 'optimize_from_ckpt.py', 'does not serve', 'Checksum does not '
                        'match')
  assert not (tmp_path / 'o').exists()
  proc = run_main_as_process(optimize_from_ckpt, args + ['--nocheck'], capsys)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_string_table_keys_are_checked_in_the_checkpoint_path(tiny_model, tmp_path):
  prefix = _checkpoint_copy(tiny_model, tmp_path)
  shard = _flip(prefix, 'category_stats-keys', 0.9)  # in the strings, past their lengths
  with pytest.raises(errors.UserError, match='tensor category_stats-keys in data shard %s fails '
                     'its checksum' % shard):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=prefix, output_dir=str(tmp_path / 'o'),
                                                saved_model_dir=tiny_model['saved_model'])
  assert not (tmp_path / 'o').exists()


class _Module(tf.Module):

  def __init__(self):
    super().__init__()
    self.emb = tf.Variable(tf.random.normal([50, 4], seed=2), name='emb')

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def serve(self, ids):
    return {'score': tf.reduce_sum(tf.gather(self.emb, ids), 1)}


def test_tf2_checkpoint_path_names_the_tensor_and_the_shard(tmp_path):
  model = _Module()
  structure = str(tmp_path / 'structure')
  tf.saved_model.save(model, structure, signatures={'serving_default': model.serve})
  optimizer = tf.keras.optimizers.Adam(0.1)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model.serve(tf.range(10, dtype=tf.int64))['score'])
  optimizer.apply_gradients(zip(tape.gradient(loss, [model.emb]), [model.emb]))
  prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / 'ckpt' / 'c'))
  from_checkpoint.saved_model_from_checkpoint(checkpoint=prefix, output_dir=str(tmp_path / 'ok'),
                                              saved_model_dir=structure)
  shard = _flip(prefix, 'model/emb/.ATTRIBUTES/VARIABLE_VALUE')
  digest = tree_digest(tmp_path / 'ckpt')
  proc = run_script('optimize_from_ckpt.py', '--saved_model_dir=%s' % structure,
                    '--checkpoint=%s' % prefix, '--output_saved_model_dir=%s' % (tmp_path / 'o'))
  assert_one_line_error(proc, 'optimize_from_ckpt.py', 'is corrupt: tensor '
                        'model/emb/.ATTRIBUTES/VARIABLE_VALUE in data shard %s fails its '
                        'checksum' % shard)
  assert not (tmp_path / 'o').exists() and tree_digest(tmp_path / 'ckpt') == digest
  # The structure's object graph, copied as stored, is checked too.
  structure_prefix = os.path.join(structure, 'variables', 'variables')
  _flip(structure_prefix, '_CHECKPOINTABLE_OBJECT_GRAPH', 0.7)
  with pytest.raises(errors.UserError, match='tensor _CHECKPOINTABLE_OBJECT_GRAPH in data shard '
                     '.*structure/variables/variables.data-00000-of-00001'):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=prefix, output_dir=str(tmp_path / 'o'),
                                                saved_model_dir=structure)


def _saved_model_copy(tiny_model, tmp_path):
  dst = tmp_path / 'saved_model'
  shutil.copytree(tiny_model['saved_model'], dst)
  return str(dst), str(dst / 'variables' / 'variables')


def test_streaming_freezer_names_the_tensor_and_the_shard(tiny_model, tmp_path):
  saved_model_dir, prefix = _saved_model_copy(tiny_model, tmp_path)
  result = freeze.graph_from_saved_model(saved_model_dir, str(tmp_path / 'ok.pb'))
  assert result.freezer == 'streaming'
  shard = _flip(prefix, _first_slice(prefix, 'item_embedding'), 0.3)
  digest = tree_digest(saved_model_dir)
  out = tmp_path / 'frozen.pb'
  proc = run_script('freezer.py', '--saved_model_dir=%s' % saved_model_dir,
                    '--output_graph=%s' % out)
  assert_one_line_error(proc, 'freezer.py', 'is corrupt: tensor item_embedding (slice 0,',
                        'in data shard %s fails its checksum' % shard)
  assert not out.exists() and tree_digest(saved_model_dir) == digest
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.frozen')] == []


def test_streaming_freezer_checks_the_tables_it_restores(tiny_model, tmp_path):
  saved_model_dir, prefix = _saved_model_copy(tiny_model, tmp_path)
  shard = _flip(prefix, 'user_stats-values')
  with pytest.raises(errors.UserError, match='tensor user_stats-values in data shard %s fails '
                     'its checksum' % shard):
    freeze.graph_from_saved_model(saved_model_dir, str(tmp_path / 'frozen.pb'))
  assert not (tmp_path / 'frozen.pb').exists()


def test_keep_as_variables_names_the_tensor_and_the_shard(tiny_model, tmp_path):
  saved_model_dir, prefix = _saved_model_copy(tiny_model, tmp_path)
  out = tmp_path / 'frozen.pb'
  freeze.graph_from_saved_model(saved_model_dir, str(out), keep_as_variables='hidden_0/kernel')
  shard = _flip(prefix, 'hidden_0/kernel')
  with pytest.raises(errors.UserError, match='tensor hidden_0/kernel in data shard %s fails its '
                     'checksum' % shard):
    freeze.graph_from_saved_model(saved_model_dir, str(out), overwrite=True,
                                  keep_as_variables='hidden_0/kernel')
  # The earlier output is left as it was.
  assert out.exists() and (tmp_path / 'frozen.pb.variables').is_dir()
