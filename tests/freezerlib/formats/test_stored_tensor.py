"""formats/stored_tensor: the checksum of a stored tensor, fed in pieces, as TensorFlow checks it.

Each case writes a tensor with TensorFlow's own SaveV2 and checks its stored bytes against the
index's recorded CRC, whole and in pieces of 1, 3 and 4096 bytes; one flipped byte fails.
"""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.formats import checkpoint_index
from freezerlib.formats import stored_tensor

VALUES = {
    'floats': np.arange(1000, dtype=np.float32),
    'bools': np.array([True, False, True]),
    'halves': np.linspace(0, 1, 17).astype(np.float16),
    'empty': np.zeros([0, 4], np.float32),
    'strings': np.array([b'', b'a' * 200, b'\xe2\x82\xac', b'x' * 70000], dtype=object),
}


@pytest.fixture(scope='module')
def stored(tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp('stored') / 'ckpt')
  names = sorted(VALUES)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(VALUES[n]) for n in names])
  checkpoint = checkpoint_index.read_index(prefix)
  data = open(checkpoint.data_files()[0], 'rb').read()
  return {n: (checkpoint.entries[n], data[checkpoint.entries[n].offset:
                                          checkpoint.entries[n].offset +
                                          checkpoint.entries[n].size]) for n in names}


@pytest.mark.parametrize('name', sorted(VALUES))
@pytest.mark.parametrize('piece', [None, 1, 3, 4096])
def test_tensorflows_own_tensors_pass_whole_and_in_pieces(stored, name, piece):
  entry, data = stored[name]
  if piece is None:
    assert stored_tensor.check(entry, data) is None
    return
  checksum = stored_tensor.Checksum(entry)
  for start in range(0, len(data), piece):
    checksum.update(data[start:start + piece])
  assert checksum.problem() is None


@pytest.mark.parametrize('name', ['floats', 'strings', 'halves'])
def test_a_flipped_byte_fails(stored, name):
  entry, data = stored[name]
  flipped = bytearray(data)
  flipped[len(flipped) // 2] ^= 0x10
  problem = stored_tensor.check(entry, bytes(flipped))
  assert problem is not None and ('checksum' in problem or 'length' in problem), problem


def test_short_data_is_named(stored):
  entry, data = stored['floats']
  assert stored_tensor.check(entry, data[:-4]) == 'read %d bytes of its %d' % (
      entry.size - 4, entry.size)
  assert stored_tensor.num_elements(entry) == 1000
