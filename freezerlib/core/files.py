"""Files: tf.io.gfile's operations, local paths at the cost of the OS.

A path with a scheme (`hdfs://`, `gs://`, `s3://`, `ram://`, `file://`) goes to TensorFlow's
file system layer, `tensorflow.python.lib.io.file_io` (what `tf.io.gfile` calls), after
importing TensorFlow, whose start-up registers the file system plugins a `tf.io.gfile` user
has (tensorflow-io-gcs-filesystem, site-packages/tensorflow-plugins). A plain local path goes
straight to the OS, which is what TensorFlow's local file system does too, so a script that
touches only local files and protos never loads TensorFlow (see lean_tf). Copies between
local files run in the kernel (`copy_file_range`), as `cp` does.

Errors are OSError: FileNotFoundError for a missing path, FileError (with TensorFlow's
message) for any other failure of a remote one.
"""

import os
import shutil
import sys
import threading

from freezerlib.core import lean_tf


class FileError(OSError):
  """A file operation on a remote path failed (TensorFlow's message)."""


def is_remote(path):
  return '://' in path


def scheme(path):
  """'gs' for 'gs://b/x', '' for a local path."""
  return path.split('://', 1)[0] if '://' in path else ''


def join(*parts):
  """Joins path components the way tf.io.gfile expects, keeping URL schemes intact."""
  return '/'.join([parts[0].rstrip('/')] + [p.strip('/') for p in parts[1:]])


def parent_dir(path):
  """The directory holding `path` ('' for a bare relative name), scheme-safe."""
  path = path.rstrip('/')
  return path.rsplit('/', 1)[0] if '/' in path else ''


def basename(path):
  """The last component of `path`."""
  return path.rstrip('/').rsplit('/', 1)[-1]


def _file_io():
  lean_tf.tensorflow.io  # noqa: B018  # the access imports TensorFlow: its file-system plugins
  return lean_tf.load('tensorflow.python.lib.io.file_io')


def _errors():
  return lean_tf.load('tensorflow.python.framework.errors_impl')


def is_error(e):
  """Whether `e` is a file error: an OSError, or a TensorFlow OpError from tf.io.gfile."""
  if isinstance(e, OSError):
    return True
  errors = sys.modules.get('tensorflow.python.framework.errors_impl')
  return errors is not None and isinstance(e, errors.OpError)


def _remote(fn, *args, **kwargs):
  errors = _errors()
  try:
    return fn(*args, **kwargs)
  except errors.NotFoundError as e:
    raise FileNotFoundError(e.message) from e
  except errors.OpError as e:
    raise FileError(e.message) from e


def exists(path):
  if is_remote(path):
    return _remote(_file_io().file_exists_v2, path)
  return os.path.exists(path)


def isdir(path):
  if is_remote(path):
    return _remote(_file_io().is_directory_v2, path)
  return os.path.isdir(path)


def listdir(path):
  if is_remote(path):
    return _remote(_file_io().list_directory_v2, path)
  return os.listdir(path)


def size(path):
  if is_remote(path):
    return _remote(_file_io().stat_v2, path).length
  return os.stat(path).st_size


def makedirs(path):
  if is_remote(path):
    _remote(_file_io().recursive_create_dir_v2, path)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path):
  if is_remote(path):
    _remote(_file_io().delete_file_v2, path)
  else:
    os.remove(path)


def rmtree(path):
  if is_remote(path):
    _remote(_file_io().delete_recursively_v2, path)
  else:
    shutil.rmtree(path)


def rename(src, dst, overwrite=False):
  if is_remote(src) or is_remote(dst):
    _remote(_file_io().rename_v2, src, dst, overwrite)
  elif overwrite:
    os.replace(src, dst)
  elif os.path.exists(dst):
    raise FileExistsError('%s exists' % dst)
  else:
    os.rename(src, dst)


def walk(top):
  """(dirpath, subdirs, files) top-down, as tf.io.gfile.walk."""
  if is_remote(top):
    yield from _remote(lambda: list(_file_io().walk_v2(top)))
  else:
    yield from os.walk(top)


class _RemoteFile:
  """A file_io.FileIO whose errors are FileError."""

  def __init__(self, path, mode):
    self._file = _file_io().FileIO(path, mode)

  def __getattr__(self, name):
    attr = getattr(self._file, name)
    if not callable(attr):
      return attr
    return lambda *args, **kwargs: _remote(attr, *args, **kwargs)

  def write(self, data):
    # As a local file: any bytes-like object (FileIO takes only bytes and str).
    if not isinstance(data, (bytes, str)):
      data = bytes(data)
    return _remote(self._file.write, data)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    _remote(self._file.close)


def open_file(path, mode='rb'):
  """A file object for `path` (mode as tf.io.gfile.GFile: 'rb', 'wb', 'r', 'w')."""
  if is_remote(path):
    if 'r' in mode:
      _remote(_file_io().stat_v2, path)  # FileIO reports a missing file only on first read
    return _RemoteFile(path, mode)
  return open(path, mode)


def read(path):
  with open_file(path, 'rb') as f:
    return f.read()


def copy(src, dst, overwrite=False):
  if is_remote(src) or is_remote(dst):
    _remote(_file_io().copy_v2, src, dst, overwrite)
    return
  if not overwrite and os.path.exists(dst):
    raise FileExistsError('%s exists' % dst)
  with open(src, 'rb') as s, open(dst, 'wb') as d:
    copy_range(s, 0, d, os.fstat(s.fileno()).st_size)


def _fileno(f):
  """The file descriptor of a local file object, None for a remote file (or a BytesIO)."""
  if isinstance(f, _RemoteFile):
    return None
  try:
    return f.fileno()
  except (OSError, ValueError, AttributeError):
    return None


def read_range(src, offset, length, consume, chunk_bytes=8 << 20, buffer=None):
  """Reads `length` bytes of open file `src` from `offset`, piece by piece, into `consume`.

  A local file is read with pread into `buffer` (a bytearray; one of `chunk_bytes` is made when
  None: pass one to reuse across calls, a new one faults in fresh pages), a remote one in pieces
  of `chunk_bytes`.

  Args:
    src: an open file (open_file).
    offset, length: the range.
    consume: callable(memoryview of a piece), valid only during the call.
    chunk_bytes: the size of a piece.
    buffer: optional bytearray to read local pieces into (its length caps a piece).

  Raises:
    EOFError: `src` ends before `length` bytes.
  """
  left = length
  fd = _fileno(src)
  if fd is None:  # remote
    while left:
      src.seek(offset)
      piece = src.read(min(chunk_bytes, left))
      if not piece:
        raise EOFError('%d bytes short' % left)
      consume(memoryview(piece))
      offset += len(piece)
      left -= len(piece)
    return
  if buffer is None:
    buffer = bytearray(max(1, min(chunk_bytes, length)))
  with memoryview(buffer) as view:
    while left:
      n = os.preadv(fd, [view[:min(len(view), left)]], offset)
      if not n:
        raise EOFError('%d bytes short' % left)
      with view[:n] as piece:
        consume(piece)
      offset += n
      left -= n


def copy_range(src, offset, dst, length, chunk_bytes=8 << 20, progress=None, inspect=None,
               buffer=None):
  """Appends `length` bytes of open file `src` from `offset` to open file `dst`.

  Between two local files the kernel copies (copy_file_range: no bytes pass through this
  process), unless `inspect` is given. Then each piece is read into memory (read_range), handed
  to `inspect` and written from that same memory: each byte is read and written once, as the
  kernel's copy does, and `inspect` reads it while it is in the CPU's cache.

  Args:
    src, dst: open files (open_file), `dst` open for writing.
    offset: where in `src` to start.
    length: bytes to copy.
    chunk_bytes: the size of a piece copied through memory.
    progress: optional callable(bytes), called after each piece.
    inspect: optional callable(memoryview), called with each piece before it is written.
    buffer: optional bytearray to read local pieces into (read_range).

  Raises:
    EOFError: `src` ends before `length` bytes.
  """
  src_fd, dst_fd = _fileno(src), _fileno(dst)
  local = src_fd is not None and dst_fd is not None
  dst.flush()
  if inspect is not None or not local or not hasattr(os, 'copy_file_range'):
    def consume(piece):
      if inspect:
        inspect(piece)
      if dst_fd is None:
        dst.write(piece)
      else:
        written = 0
        while written < len(piece):
          written += os.write(dst_fd, piece[written:])
      if progress:
        progress(len(piece))

    try:
      read_range(src, offset, length, consume, chunk_bytes, buffer)
    finally:
      if dst_fd is not None:
        dst.seek(0, os.SEEK_END)
    return
  left = length
  kernel = True
  while left:
    if kernel:
      try:
        n = os.copy_file_range(src_fd, dst_fd, min(left, 1 << 30), offset)
      except OSError:
        kernel = False  # another filesystem, or a kernel without it: copy through memory
        dst.seek(0, os.SEEK_END)
        continue
      if n:
        dst.seek(0, os.SEEK_END)
    else:
      src.seek(offset)
      piece = src.read(min(chunk_bytes, left))
      dst.write(piece)
      n = len(piece)
    if not n:
      raise EOFError('%d bytes short' % left)
    offset += n
    left -= n
    if progress:
      progress(n)


def copy_ranges(shares, piece_bytes=1 << 20, progress=None):
  """Copies ranges of local files into open local files at given offsets, one worker a share.

  Each share is (dst, jobs): an open local file and the ranges to copy into it, each job
  (source path, offset, length, offset in `dst`, inspect or None). A share's worker (the first
  share's is this thread) copies its jobs in order, each piece by piece: pread into its own
  buffer, `inspect` (as copy_range's), pwrite at the job's place in `dst`, so a piece is read,
  inspected and written by one core while it is in that core's cache. With `dst` None the
  pieces are read and inspected only (checking a checkpoint in place). A job without
  `inspect` is copied by the kernel (copy_file_range) where it can. Give each share a file of
  its own: the kernel serializes the writes into one file (benchmarks/README.md, checkpoint
  path).

  Args:
    shares: list of (dst or None, jobs); jobs a list of (path, offset, length, dst_offset,
      inspect).
    piece_bytes: bytes read and written at a time.
    progress: optional callable(bytes), called after each piece (from any worker).

  Raises:
    EOFError: a source ends before a job's range.
    OSError: a source cannot be read or a `dst` written.
    Whatever `inspect` raises. Of several failures, the first share's earliest job's is
    raised.
  """
  failures = {}  # (share, job index) -> exception
  lock = threading.Lock()
  kernel = [hasattr(os, 'copy_file_range')]

  def work(share_index):
    dst, jobs = shares[share_index]
    dst_fd = None if dst is None else dst.fileno()
    buffer = bytearray(max(1, min(piece_bytes, max((job[2] for job in jobs), default=1))))
    opened = {}
    try:
      with memoryview(buffer) as view:
        for index, (path, offset, length, dst_offset, inspect) in enumerate(jobs):
          if failures:
            return
          writing = False
          try:
            if path not in opened:
              opened[path] = os.open(path, os.O_RDONLY)
              if hasattr(os, 'posix_fadvise'):  # as cp: a larger read-ahead
                os.posix_fadvise(opened[path], 0, 0, os.POSIX_FADV_SEQUENTIAL)
            fd = opened[path]
            left = length
            while left and inspect is None and dst_fd is not None and kernel[0]:
              try:
                n = os.copy_file_range(fd, dst_fd, left, offset, dst_offset)
              except OSError:  # a full disk fails the pwrite below too
                kernel[0] = False  # not between these files: through memory
                break
              if not n:
                raise EOFError('%s: %d bytes short' % (path, left))
              offset += n
              dst_offset += n
              left -= n
              if progress:
                with lock:
                  progress(n)
            while left:
              n = os.preadv(fd, [view[:min(len(view), left)]], offset)
              if not n:
                raise EOFError('%s: %d bytes short' % (path, left))
              with view[:n] as piece:
                if inspect:
                  inspect(piece)
                written = 0 if dst_fd is not None else n
                writing = True
                while written < n:
                  written += os.pwrite(dst_fd, piece[written:], dst_offset + written)
                writing = False
              offset += n
              dst_offset += n
              left -= n
              if progress:
                with lock:
                  progress(n)
          except OSError as e:
            # Name the file at fault: the source unless the write failed (a full disk).
            failures[(share_index, index)] = OSError(
                e.errno, e.strerror, e.filename or (dst.name if writing else path))
            return
          except Exception as e:  # raised by the caller
            failures[(share_index, index)] = e
            return
    finally:
      for fd in opened.values():
        os.close(fd)

  for dst, _ in shares:
    if dst is not None:
      dst.flush()
  threads = [threading.Thread(target=work, args=(k,), name='copy_ranges', daemon=True)
             for k in range(1, len(shares))]
  for thread in threads:
    thread.start()
  try:
    if shares:
      work(0)
  finally:
    for thread in threads:
      thread.join()
    for dst, _ in shares:
      if dst is not None:
        dst.seek(0, os.SEEK_END)
  if failures:
    raise failures[min(failures)]
