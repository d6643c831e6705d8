"""CRC32C as TensorFlow's checkpoints and LevelDB's tables use it: in C, over any buffer, uncopied.

The C code is google-crc32c's (SSE4.2 where the CPU has it, several GB/s); TensorFlow's own
crc32c is not exposed to Python. Its `extend` takes only objects whose buffer needs no release
(bytes, ctypes arrays: CPython's `y#`), so a bytearray, mmap or memoryview is handed to it as a
ctypes array over the same memory instead of being copied into bytes: reading a tensor into one
reused buffer, checking it and writing that buffer out costs no copy of its own.

`mask`/`unmask` are crc32c::Mask/Unmask: a stored CRC is rotated and offset so that a CRC of
bytes holding CRCs stays well distributed. Both a checkpoint index's blocks and a stored tensor's
BundleEntryProto.crc32c are masked.
"""

import ctypes

import google_crc32c

_MASK_DELTA = 0xa282ead8


def extend(crc, data):
  """The CRC32C of the bytes whose CRC32C is `crc`, followed by `data`.

  Args:
    crc: CRC32C so far (0 to start).
    data: bytes, or a writable bytes-like object (bytearray, mmap, memoryview of either),
      read in place.
  """
  if not isinstance(data, bytes):
    try:
      data = (ctypes.c_char * len(data)).from_buffer(data)
    except TypeError:  # read-only (a memoryview of bytes, a read-only mmap): copied
      data = bytes(data)
  return google_crc32c.extend(crc, data)


def value(data):
  """The CRC32C of `data` (as `extend`)."""
  return extend(0, data)


def mask(crc):
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff


def unmask(masked):
  rot = (masked - _MASK_DELTA) & 0xffffffff
  return ((rot >> 17) | (rot << 15)) & 0xffffffff


def masked(data):
  """LevelDB's and TensorFlow's masked CRC32C of `data`."""
  return mask(value(data))
