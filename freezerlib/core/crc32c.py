"""CRC32C as TensorFlow's checkpoints and LevelDB's tables use it: in C, over any buffer, uncopied.

The C code is the `crc32c` package's (ICRAR's: the CPU's CRC32C instructions, SSE4.2 or ARMv8,
where it has them, else slicing-by-8), which reads any buffer in place (bytes, bytearray, mmap,
memoryview) and lets go of the interpreter lock while it runs over a large one, so two copy
workers check in parallel (google-crc32c holds the lock: benchmarks/README.md has both
measured). TensorFlow's own crc32c is not exposed to Python.

`mask`/`unmask` are crc32c::Mask/Unmask: a stored CRC is rotated and offset so that a CRC of
bytes holding CRCs stays well distributed. Both a checkpoint index's blocks and a stored tensor's
BundleEntryProto.crc32c are masked.
"""

import importlib.machinery
import importlib.util
import os
import sys

_MASK_DELTA = 0xa282ead8


def _extension():
  """The package's C extension, `crc32c._crc32c`, loaded without the package's __init__, which
  imports importlib.metadata and argparse (to set __version__ and a command line) that the
  checkpoint path's start-up does not need. A later `import crc32c` runs the __init__ and finds
  this module in place."""
  name = 'crc32c._crc32c'
  if name in sys.modules:
    return sys.modules[name]
  package = importlib.util.find_spec('crc32c')  # found, not imported
  for directory in (package.submodule_search_locations or []) if package else []:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
      path = os.path.join(directory, '_crc32c' + suffix)
      if os.path.exists(path):
        spec = importlib.util.spec_from_file_location(
            name, path, loader=importlib.machinery.ExtensionFileLoader(name, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        return module
  import crc32c  # another layout: the usual import
  return crc32c


_crc32c = _extension()


def extend(crc, data):
  """The CRC32C of the bytes whose CRC32C is `crc`, followed by `data`.

  Args:
    crc: CRC32C so far (0 to start).
    data: any bytes-like object (bytes, bytearray, mmap, memoryview of either), read in place.
  """
  return _crc32c.crc32c(data, crc)


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
