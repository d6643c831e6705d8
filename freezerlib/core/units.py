"""Sizes as people write them, bytes as people read them, and progress of long steps."""

import re
import time

from absl import logging

from freezerlib.core import errors

_UNITS = {'': 1, 'b': 1, 'kb': 10**3, 'kib': 2**10, 'mb': 10**6, 'mib': 2**20, 'gb': 10**9,
          'gib': 2**30}
_SIZE = re.compile(r'^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$', re.IGNORECASE)


def human_bytes(n):
  """'1.5 MiB' for 1572864."""
  n = float(n)
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if abs(n) < 1024 or unit == 'GiB':
      return ('%d %s' % (n, unit)) if unit == 'B' else ('%.1f %s' % (n, unit))
    n /= 1024
  return '%.1f TiB' % n


def parse_size(text, flag, alternative=''):
  """'64MiB', '1.5GB', '500000' (bytes) -> bytes.

  Args:
    text: the size as written.
    flag: the flag it came from, for the message.
    alternative: what else the flag accepts, appended to the message.

  Raises:
    errors.UserError: not a size (naming `flag`).
  """
  match = _SIZE.match(text)
  if not match or match.group(2).lower() not in _UNITS:
    raise errors.UserError(
        '%s=%s is not a size (e.g. 64MiB, 1.5GB, 500000 bytes; units KB, KiB, MB, MiB, GB, '
        'GiB)%s' % (flag, text.strip(), alternative))
  return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def size_spec(nbytes):
  """The largest whole-MiB spec not above `nbytes` ('525MiB'), or bytes under 1 MiB."""
  return ('%dMiB' % (nbytes >> 20)) if nbytes >= 2**20 else '%d' % nbytes


class Progress:
  """Logs bytes done, total and rate of a long step, at most every `every` seconds (INFO)."""

  def __init__(self, what, every=5.0):
    self._what, self._every = what, every
    self._start = self._last = time.perf_counter()

  def __call__(self, done, total):
    now = time.perf_counter()
    if now - self._last >= self._every or done >= total:
      self._last = now
      rate = done / max(now - self._start, 1e-9)
      logging.info('%s: %s of %s (%.0f%%), %s/s', self._what, human_bytes(done),
                   human_bytes(total), 100.0 * done / max(total, 1), human_bytes(rate))
