"""The checksum TensorFlow records for each tensor a checkpoint stores, computed piece by piece.

tensor_bundle.cc writes a tensor's bytes into a data shard and records in its index entry
(BundleEntryProto.crc32c) a masked CRC32C, which TensorFlow's reader checks when it restores
the tensor. What the CRC covers depends on the dtype (checked against TensorFlow 2.21's own
checkpoints in tests/test_checksums.py):
- numeric and bool tensors: the stored bytes themselves;
- DT_STRING: stored as a varint64 length per element, a masked CRC32C of the lengths (4
  bytes), then the strings; the entry's CRC covers each length as a little-endian uint32 (a
  uint64 for a string past 4 GiB), not the varint bytes stored, then those 4 bytes as stored,
  then the strings;
- DT_VARIANT: stored per element as a varint64 length, the serialized VariantTensorDataProto
  and a masked CRC32C of everything so far; the entry's CRC covers each length as a uint64,
  the bytes and each element's 4 checksum bytes as stored.

`Checksum` takes the stored bytes in order, in pieces of any size, so a tensor is checked while
it is copied, without holding it.
"""

import re
import struct

from freezerlib.core import crc32c
from freezerlib.core import lean_tf

_STRING = lean_tf.types_pb2.DT_STRING
_VARIANT = lean_tf.types_pb2.DT_VARIANT
_HIGH_BYTE = re.compile(rb'[\x80-\xff]')


def num_elements(entry):
  count = 1
  for dim in entry.shape.dim:
    count *= dim.size
  return count


class Checksum:
  """The checksum of one stored tensor (a BundleEntryProto's bytes), fed in order.

  `update(piece)` with consecutive pieces of the stored bytes (bytes, bytearray, memoryview),
  then `problem()`: None when they are what the entry records, else what is wrong.
  """

  def __init__(self, entry):
    self._entry = entry
    self._crc = 0
    self._seen = 0
    self._problem = None
    self._fields = None
    if entry.dtype == _STRING:
      self._fields = _StringFields(num_elements(entry))
    elif entry.dtype == _VARIANT:
      self._fields = _VariantFields(num_elements(entry))

  def update(self, piece):
    self._seen += len(piece)
    if self._fields is None:
      self._crc = crc32c.extend(self._crc, piece)
    elif self._problem is None:
      try:
        self._crc = self._fields.update(self._crc, piece)
      except ValueError as e:
        self._problem = str(e)

  def problem(self):
    """None if the bytes fed are the entry's tensor, else a phrase saying what is wrong."""
    if self._seen != self._entry.size:
      return 'read %d bytes of its %d' % (self._seen, self._entry.size)
    if self._problem is None and self._fields is not None:
      self._problem = self._fields.finish()
    if self._problem is not None:
      return self._problem
    if self._crc != crc32c.unmask(self._entry.crc32c):
      return 'fails its checksum (crc32c %08x, the index records %08x)' % (
          self._crc, crc32c.unmask(self._entry.crc32c))
    return None


def check(entry, data):
  """None if `data` (all of it) is the tensor `entry` records, else what is wrong."""
  checksum = Checksum(entry)
  checksum.update(data)
  return checksum.problem()


class _Varint:
  """A varint64 read across pieces."""

  def __init__(self):
    self.value = self.shift = 0

  def feed(self, byte):
    """True once `byte` ends the varint."""
    self.value |= (byte & 0x7f) << self.shift
    self.shift += 7
    if self.shift > 70:
      raise ValueError('a length is not a varint64')
    return not byte & 0x80


def _length_bytes(length):
  return struct.pack('<I' if length <= 0xffffffff else '<Q', length)


class _StringFields:
  """DT_STRING: lengths, their checksum, then the strings (tensor_bundle's WriteStringTensor)."""

  def __init__(self, count):
    self._left = count   # lengths still to read
    self._varint = None  # a length split between pieces
    self._lengths_crc = b''
    self._string_bytes = 0  # the strings' total, from the lengths
    self._strings_seen = 0

  def update(self, crc, piece):
    piece = memoryview(piece).cast('B')
    pos = 0
    while self._left and pos < len(piece):
      if self._varint is None:
        # Lengths under 128 are one byte each: those are taken in bulk.
        region = bytes(piece[pos:pos + self._left])
        high = _HIGH_BYTE.search(region)
        run = region[:high.start()] if high else region
        if run:
          packed = bytearray(4 * len(run))
          packed[::4] = run
          crc = crc32c.extend(crc, packed)
          self._string_bytes += sum(run)
          self._left -= len(run)
          pos += len(run)
          continue
        self._varint = _Varint()
      byte = piece[pos]
      pos += 1
      if self._varint.feed(byte):
        length = self._varint.value
        self._varint = None
        crc = crc32c.extend(crc, _length_bytes(length))
        self._string_bytes += length
        self._left -= 1
    if not self._left and len(self._lengths_crc) < 4 and pos < len(piece):
      take = bytes(piece[pos:pos + 4 - len(self._lengths_crc)])
      self._lengths_crc += take
      pos += len(take)
      if len(self._lengths_crc) == 4:
        if crc32c.unmask(struct.unpack('<I', self._lengths_crc)[0]) != crc:
          raise ValueError('its string lengths fail their checksum')
        crc = crc32c.extend(crc, self._lengths_crc)
    if pos < len(piece):
      self._strings_seen += len(piece) - pos
      if self._strings_seen > self._string_bytes:
        raise ValueError('holds more bytes than its string lengths say')
      crc = crc32c.extend(crc, piece[pos:])
    return crc

  def finish(self):
    if self._left or len(self._lengths_crc) < 4:
      return 'ends inside its string lengths'
    if self._strings_seen != self._string_bytes:
      return 'holds %d bytes of strings, its lengths say %d' % (self._strings_seen,
                                                                self._string_bytes)
    return None


class _VariantFields:
  """DT_VARIANT: per element a length, the serialized proto, a checksum (WriteVariantTensor)."""

  def __init__(self, count):
    self._left = count
    self._varint = _Varint()
    self._body = None   # bytes of the current element still to read, once its length is known
    self._sum = None    # its checksum bytes read so far, once its body is read

  def update(self, crc, piece):
    piece = memoryview(piece).cast('B')
    pos = 0
    while pos < len(piece):
      if not self._left:
        raise ValueError('holds more bytes than its elements')
      if self._body is None:
        byte = piece[pos]
        pos += 1
        if self._varint.feed(byte):
          self._body = self._varint.value
          crc = crc32c.extend(crc, struct.pack('<Q', self._body))
          self._varint = _Varint()
      elif self._sum is None:
        take = min(self._body, len(piece) - pos)
        crc = crc32c.extend(crc, piece[pos:pos + take])
        pos += take
        self._body -= take
        if not self._body:
          self._sum = b''
      else:
        take = bytes(piece[pos:pos + 4 - len(self._sum)])
        self._sum += take
        pos += len(take)
        if len(self._sum) == 4:
          if crc32c.unmask(struct.unpack('<I', self._sum)[0]) != crc:
            raise ValueError('an element fails its checksum')
          crc = crc32c.extend(crc, self._sum)
          self._body = self._sum = None
          self._left -= 1
    return crc

  def finish(self):
    if self._left:
      return 'ends inside its elements'
    return None
