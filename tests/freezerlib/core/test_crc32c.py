"""core/crc32c: CRC32C in C over any buffer, and the mask TensorFlow and LevelDB store."""

import importlib.machinery
import mmap

import pytest

from freezerlib.core import crc32c

# RFC 3720's check value: CRC-32C of b'123456789'.
CHECK = 0xe3069283


def test_known_value_and_mask():
  assert crc32c.value(b'123456789') == CHECK
  masked = (((CHECK >> 15) | (CHECK << 17)) + 0xa282ead8) & 0xffffffff
  assert crc32c.masked(b'123456789') == masked == crc32c.mask(CHECK)
  assert crc32c.unmask(masked) == CHECK
  assert crc32c.value(b'') == 0


@pytest.mark.parametrize('cut', [0, 1, 4, 8, 9])
def test_extend_in_pieces_equals_the_whole(cut):
  data = b'123456789'
  assert crc32c.extend(crc32c.value(data[:cut]), data[cut:]) == CHECK


def test_buffers_read_in_place():
  data = bytearray(b'123456789')
  assert crc32c.value(data) == CHECK
  assert crc32c.value(memoryview(data)[2:]) == crc32c.value(b'3456789')
  assert crc32c.value(memoryview(b'123456789')) == CHECK  # read-only
  with mmap.mmap(-1, 9) as m:
    m.write(b'123456789')
    assert crc32c.value(m) == CHECK
  data[0] ^= 1  # one flipped bit, another checksum
  assert crc32c.value(data) != CHECK


def test_the_c_extension_is_loaded_alone_and_is_the_packages_own():
  # Loaded without the package's __init__ (its importlib.metadata and argparse cost 13.7 ms of
  # start-up); importing the package afterwards uses the same module.
  assert crc32c._crc32c.__name__ == 'crc32c._crc32c'
  assert crc32c._crc32c.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
  import crc32c as package
  assert package.crc32c is crc32c._crc32c.crc32c
