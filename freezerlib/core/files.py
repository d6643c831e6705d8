"""Files: one layer for every path a script reads or writes.

- A plain local path goes straight to the OS. Copies between local files run in the kernel
  (`copy_file_range`), as `cp` does.
- `s3://` (AWS, and S3-compatible stores such as MinIO and Ceph RGW), `gs://` and `hdfs://` go to
  pyarrow's file systems (core/object_store: endpoints and credentials from the environment,
  bounded retries), imported on the first such path only.
- Any other scheme (`ram://`, `file://`) goes to TensorFlow's file system layer,
  `tensorflow.python.lib.io.file_io` (what `tf.io.gfile` calls).

So a script that touches only local files and protos loads neither TensorFlow (see lean_tf) nor
pyarrow. Where TensorFlow itself must read a model (a session load, tf.saved_model.load), the
caller stages it with `local_copy`; outputs on a store are written locally and uploaded by
core/atomic.

Errors are OSError: FileNotFoundError for a missing path, FileError (one line naming the path
and the cause) for any other failure of a remote one.
"""

import collections
import contextlib
import os
import shutil
import sys
import tempfile
import threading

from freezerlib.core import errors
from freezerlib.core import lean_tf

# The schemes core/object_store reaches through pyarrow; that module is imported on the first
# such path (`_stores`), so a local run loads neither it nor pyarrow.
STORE_SCHEMES = ('s3', 'gs', 'hdfs', 'viewfs')


FileError = errors.FileError  # a remote operation failed: one line, path and cause


def _stores():
  from freezerlib.core import object_store
  return object_store


def is_remote(path):
  return '://' in path


def is_object_store(path):
  """Whether `path` is on a store pyarrow reaches (s3://, gs://, hdfs://): TensorFlow cannot
  open it, so what TensorFlow reads is staged (local_copy) and what it writes uploaded."""
  return scheme(path) in STORE_SCHEMES


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
  tf_errors = sys.modules.get('tensorflow.python.framework.errors_impl')
  return tf_errors is not None and isinstance(e, tf_errors.OpError)


def _remote(fn, *args, **kwargs):
  tf_errors = _errors()
  try:
    return fn(*args, **kwargs)
  except tf_errors.NotFoundError as e:
    raise FileNotFoundError(e.message) from e
  except tf_errors.OpError as e:
    raise FileError(e.message) from e


def exists(path):
  if is_object_store(path):
    return _stores().exists(path)
  if is_remote(path):
    return _remote(_file_io().file_exists_v2, path)
  return os.path.exists(path)


def isdir(path):
  if is_object_store(path):
    return _stores().isdir(path)
  if is_remote(path):
    return _remote(_file_io().is_directory_v2, path)
  return os.path.isdir(path)


def listdir(path):
  if is_object_store(path):
    return _stores().listdir(path)
  if is_remote(path):
    return _remote(_file_io().list_directory_v2, path)
  return os.listdir(path)


def size(path):
  if is_object_store(path):
    return _stores().size(path)
  if is_remote(path):
    return _remote(_file_io().stat_v2, path).length
  return os.stat(path).st_size


def makedirs(path):
  if is_object_store(path):
    _stores().makedirs(path)
  elif is_remote(path):
    _remote(_file_io().recursive_create_dir_v2, path)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path):
  if is_object_store(path):
    _stores().remove(path)
  elif is_remote(path):
    _remote(_file_io().delete_file_v2, path)
  else:
    os.remove(path)


def rmtree(path):
  if is_object_store(path):
    _stores().rmtree(path)
  elif is_remote(path):
    _remote(_file_io().delete_recursively_v2, path)
  else:
    shutil.rmtree(path)


def rename(src, dst, overwrite=False):
  """Renames a file (or, where the file system renames them, a directory). Between two file
  systems, or on an object store, the file is copied then removed: not atomic."""
  if is_object_store(src) or is_object_store(dst):
    if not overwrite and exists(dst):
      raise FileExistsError('%s exists' % dst)
    if _stores().same_store(src, dst):
      _stores().move(src, dst)
    else:
      copy(src, dst, overwrite=True)
      remove(src)
  elif is_remote(src) or is_remote(dst):
    _remote(_file_io().rename_v2, src, dst, overwrite)
  elif overwrite:
    os.replace(src, dst)
  elif os.path.exists(dst):
    raise FileExistsError('%s exists' % dst)
  else:
    os.rename(src, dst)


def walk(top):
  """(dirpath, subdirs, files) top-down, as tf.io.gfile.walk."""
  if is_object_store(top):
    yield from _stores().walk(top)
  elif is_remote(top):
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

  def pread(self, offset, length):
    self._file.seek(offset)
    return _remote(self._file.read, length)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    _remote(self._file.close)


def open_file(path, mode='rb'):
  """A file object for `path` (mode as tf.io.gfile.GFile: 'rb', 'wb', 'r', 'w')."""
  if is_object_store(path):
    return _stores().StoreFile(path, mode)
  if is_remote(path):
    if 'r' in mode:
      _remote(_file_io().stat_v2, path)  # FileIO reports a missing file only on first read
    return _RemoteFile(path, mode)
  return open(path, mode)


def glob(pattern):
  """The paths matching `pattern` (wildcards in its last component on an object store), sorted."""
  if is_object_store(pattern):
    return _stores().glob(pattern)
  if is_remote(pattern):
    return sorted(_remote(_file_io().get_matching_files_v2, pattern))
  import glob as glob_lib
  return sorted(glob_lib.glob(pattern))


def read(path):
  with open_file(path, 'rb') as f:
    return f.read()


def write(path, data):
  """Writes `data` (bytes or str) as the whole of file `path`."""
  with open_file(path, 'wb') as f:
    f.write(data.encode('utf-8') if isinstance(data, str) else data)


_STREAM_BYTES = 8 << 20


def copy(src, dst, overwrite=False):
  if is_object_store(src) or is_object_store(dst):
    if not overwrite and exists(dst):
      raise FileExistsError('%s exists' % dst)
    if _stores().same_store(src, dst):
      _stores().copy_file(src, dst)
      return
    with open_file(src, 'rb') as s, open_file(dst, 'wb') as d:
      while True:
        piece = s.read(_STREAM_BYTES)
        if not piece:
          break
        d.write(piece)
    return
  if is_remote(src) or is_remote(dst):
    _remote(_file_io().copy_v2, src, dst, overwrite)
    return
  if not overwrite and os.path.exists(dst):
    raise FileExistsError('%s exists' % dst)
  with open(src, 'rb') as s, open(dst, 'wb') as d:
    copy_range(s, 0, d, os.fstat(s.fileno()).st_size)


def link_or_copy(src, dst):
  """Makes `dst` a hard link of `src` where both are on one local file system (it costs
  nothing and neither file is written again), else a copy of it (replacing `dst`)."""
  if not is_remote(src) and not is_remote(dst):
    try:
      os.link(src, dst)
      return
    except OSError:
      pass
  copy(src, dst, overwrite=True)


def copy_tree(src, dst, last=()):
  """Copies directory `src` into `dst` file by file, the files named in `last` after every
  other (a reader that finds them finds the rest)."""
  paths = []
  for root, _, names in walk(src):
    for name in names:
      paths.append(join(root, name))
  paths.sort(key=lambda f: (basename(f) in last, f.count('/'), f))
  made = set()
  for f in paths:
    target = dst.rstrip('/') + f[len(src.rstrip('/')):]
    parent = parent_dir(target)
    if parent not in made and not is_object_store(target):  # object stores: no directories
      makedirs(parent)
      made.add(parent)
    copy(f, target, overwrite=True)


_SCRATCH_PREFIX = 'freezer-scratch-%d-' % os.getpid()


def scratch_dir(what='scratch'):
  """A new local directory for staging (the caller removes it); its name holds this process's
  id, so remove_stale_scratch of a later run removes it if this run is killed."""
  remove_stale_scratch()
  return tempfile.mkdtemp(prefix='%s%s-' % (_SCRATCH_PREFIX, what))


@contextlib.contextmanager
def scratch(what='scratch'):
  """A new local scratch directory (scratch_dir), removed after the block whatever happens."""
  path = scratch_dir(what)
  try:
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_scratch():
  """Removes the scratch directories of killed runs (their process gone) from the temp dir."""
  root = tempfile.gettempdir()
  try:
    names = os.listdir(root)
  except OSError:
    return
  for name in names:
    if not name.startswith('freezer-scratch-'):
      continue
    pid = name[len('freezer-scratch-'):].split('-', 1)[0]
    if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def pid_alive(pid):
  """Whether process `pid` of this host is running (its debris is not to be removed)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@contextlib.contextmanager
def local_copy(path):
  """Yields a local path holding what `path` holds, for TensorFlow to read.

  A path TensorFlow opens itself (local, ram://) is yielded as it is. A file or directory on an
  object store (TensorFlow cannot open s3:// or hdfs://, nor an emulator's gs://) is downloaded
  into a scratch directory, removed after the block, also when it fails or is interrupted.

  Raises:
    FileNotFoundError: `path` does not exist.
  """
  if not is_object_store(path):
    yield path
    return
  scratch = scratch_dir('input')
  try:
    local = os.path.join(scratch, basename(path) or 'input')
    if isdir(path):
      copy_tree(path, local)
      os.makedirs(local, exist_ok=True)
    elif exists(path):
      copy(path, local)
    else:
      raise _stores().error(path, FileNotFoundError(path))
    yield local
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _fileno(f):
  """The file descriptor of a local file object, None for a remote file (or a BytesIO)."""
  stores = sys.modules.get('freezerlib.core.object_store')  # loaded if a store file exists
  if isinstance(f, _RemoteFile) or (stores is not None and isinstance(f, stores.StoreFile)):
    return None
  try:
    return f.fileno()
  except (OSError, ValueError, AttributeError):
    return None


def _preader(f, buffer):
  """read(offset, n) -> exactly n bytes of open file `f` (EOFError if it ends first): a local
  file read with pread into `buffer` (the bytes valid until the next call), a remote one
  with a ranged read."""
  fd = _fileno(f)
  if fd is None:
    def read(offset, n):
      data = f.pread(offset, n) if hasattr(f, 'pread') else _seek_read(f, offset, n)
      if len(data) < n:
        raise EOFError('%d bytes short' % (n - len(data)))
      return data
    return read
  return _preader_fd(fd, memoryview(buffer))


def _seek_read(f, offset, n):
  f.seek(offset)
  return f.read(n)


def _pwrite_all(fd, piece, offset):
  written = 0
  while written < len(piece):
    written += os.pwrite(fd, piece[written:], offset + written)


def move_pieces(pieces, read, write=None, progress=None, pool=None, depth=1):
  """The one read-check-write loop: reads each piece, hands it to its `inspect`, writes it.

  Args:
    pieces: iterable of (source, offset, n, dst_offset, inspect): n bytes of `source` at
      `offset`, written at `dst_offset`; `inspect` None or callable(bytes-like), called with
      each piece in order before it is written.
    read: callable(source, offset, n) -> exactly n bytes (EOFError if the source ends first).
    write: callable(bytes-like, dst_offset), or None to read and inspect only.
    progress: optional callable(bytes), after each piece.
    pool: an executor to read ahead in: up to `depth` pieces are read at once (ranged reads of
      a remote file in parallel), inspected and written in order. `read` must then return
      bytes it owns. Memory holds at most `depth` pieces.
    depth: pieces read ahead with `pool`.

  Raises:
    EOFError: a source ends before a piece; whatever `read`, `inspect` or `write` raise.
  """
  def handle(piece, data):
    _, _, n, dst_offset, inspect = piece
    if inspect is not None:
      inspect(data)
    if write is not None:
      write(data, dst_offset)
    if progress:
      progress(n)

  if pool is None:
    for piece in pieces:
      handle(piece, read(*piece[:3]))
    return
  window = collections.deque()
  try:
    for piece in pieces:
      window.append((piece, pool.submit(read, *piece[:3])))
      if len(window) >= depth:
        done, future = window.popleft()
        handle(done, future.result())
    while window:
      done, future = window.popleft()
      handle(done, future.result())
  finally:
    for _, future in window:
      future.cancel()
    for _, future in window:
      if not future.cancelled():
        try:
          future.result()
        except Exception:  # the first failure is raised
          pass


def _split(source, offset, length, dst_offset, inspect, piece_bytes):
  """The pieces of one range, as move_pieces takes them."""
  done = 0
  while done < length:
    n = min(piece_bytes, length - done)
    yield (source, offset + done, n, dst_offset + done, inspect)
    done += n


def read_range(src, offset, length, consume, chunk_bytes=8 << 20, buffer=None):
  """Reads `length` bytes of open file `src` from `offset`, piece by piece, into `consume`.

  A local file is read with pread into `buffer` (a bytearray; one of `chunk_bytes` is made when
  None: pass one to reuse across calls, a new one faults in fresh pages), a remote one in pieces
  of `chunk_bytes`.

  Args:
    src: an open file (open_file).
    offset, length: the range.
    consume: callable(bytes-like piece), valid only during the call.
    chunk_bytes: the size of a piece.
    buffer: optional bytearray to read local pieces into (its length caps a piece).

  Raises:
    EOFError: `src` ends before `length` bytes.
  """
  if buffer is None:
    buffer = bytearray(max(1, min(chunk_bytes, length)) if _fileno(src) is not None else 0)
  if _fileno(src) is not None:
    chunk_bytes = min(chunk_bytes, len(buffer))
  read = _preader(src, buffer)
  move_pieces(_split(src, offset, length, 0, consume, chunk_bytes),
              lambda _, off, n: read(off, n))


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
  dst.flush()
  if inspect is None and src_fd is not None and dst_fd is not None and hasattr(
      os, 'copy_file_range'):
    left = length
    while left:
      try:
        n = os.copy_file_range(src_fd, dst_fd, min(left, 1 << 30), offset)
      except OSError:
        break  # another filesystem, or a kernel without it: through memory below
      if not n:
        raise EOFError('%d bytes short' % left)
      dst.seek(0, os.SEEK_END)
      offset += n
      left -= n
      if progress:
        progress(n)
    length = left
    if not length:
      return

  def write(piece, _):
    if dst_fd is None:
      dst.write(piece)
    else:
      written = 0
      while written < len(piece):
        written += os.write(dst_fd, piece[written:])

  if buffer is None and src_fd is not None:
    buffer = bytearray(max(1, min(chunk_bytes, length)))
  if src_fd is not None:
    chunk_bytes = min(chunk_bytes, len(buffer))
  read = _preader(src, buffer)
  try:
    move_pieces(_split(src, offset, length, 0, inspect, chunk_bytes),
                lambda _, off, n: read(off, n), write, progress)
  finally:
    if dst_fd is not None:
      dst.seek(0, os.SEEK_END)


# Ranged reads of a remote source: the size of one, and how many each worker keeps in flight
# (what a store's latency asks for; memory holds at most workers x depth pieces).
REMOTE_PIECE_BYTES = 4 << 20
REMOTE_DEPTH = 8


class _JobFailed(Exception):
  """A job of copy_ranges failed: which one, the error, and whether writing failed."""

  def __init__(self, index, error, writing):
    super().__init__(str(error))
    self.index, self.error, self.writing = index, error, writing


def copy_ranges(shares, piece_bytes=1 << 20, progress=None, remote_piece_bytes=None,
                depth=None):
  """Copies ranges of files into open local files at given offsets, one worker a share.

  Each share is (dst, jobs): an open local file and the ranges to copy into it, each job
  (source path, offset, length, offset in `dst`, inspect or None). A share's worker (the first
  share's is this thread) copies its jobs in order, each piece by piece (move_pieces): read,
  `inspect` (as copy_range's), pwrite at the job's place in `dst`, so a piece is read,
  inspected and written by one core while it is in that core's cache. With `dst` None the
  pieces are read and inspected only (checking a checkpoint in place). A job from a local file
  without `inspect` is copied by the kernel (copy_file_range) where it can. A source on an
  object store (s3://, gs://, hdfs://) is read with ranged reads of `remote_piece_bytes`,
  `depth` of them in flight per worker, each piece inspected and written in order as it
  arrives. Give each share a file of its own: the kernel serializes the writes into one file
  (benchmarks/README.md, checkpoint path).

  Args:
    shares: list of (dst or None, jobs); jobs a list of (path, offset, length, dst_offset,
      inspect).
    piece_bytes: bytes read and written at a time from a local source.
    progress: optional callable(bytes), called after each piece (from any worker).
    remote_piece_bytes: bytes of one ranged read of a remote source (default
      max(piece_bytes, REMOTE_PIECE_BYTES)).
    depth: ranged reads in flight per worker (default REMOTE_DEPTH).

  Raises:
    EOFError: a source ends before a job's range.
    OSError: a source cannot be read or a `dst` written.
    Whatever `inspect` raises. Of several failures, the first share's earliest job's is
    raised.
  """
  failures = {}  # (share, job index) -> exception
  lock = threading.Lock()
  stopping = threading.Event()
  kernel = [hasattr(os, 'copy_file_range')]
  remote_piece_bytes = remote_piece_bytes or max(piece_bytes, REMOTE_PIECE_BYTES)
  depth = depth or REMOTE_DEPTH

  def counted(n):
    with lock:
      progress(n)

  def work(share_index):
    dst, jobs = shares[share_index]
    dst_fd = None if dst is None else dst.fileno()
    remote = any(is_object_store(job[0]) for job in jobs)
    buffer = bytearray(0 if remote else
                       max(1, min(piece_bytes, max((job[2] for job in jobs), default=1))))
    view = memoryview(buffer)
    opened = {}
    local_readers = {}  # fd -> read(offset, n) through `view`

    def source(path):
      if path not in opened:
        if is_object_store(path):
          opened[path] = _stores().StoreFile(path, 'rb')
        else:
          opened[path] = os.open(path, os.O_RDONLY)
          if hasattr(os, 'posix_fadvise'):  # as cp: a larger read-ahead
            os.posix_fadvise(opened[path], 0, 0, os.POSIX_FADV_SEQUENTIAL)
      return opened[path]

    def read(job, offset, n):
      index, path = job
      try:
        f = source(path)
        if not isinstance(f, int):  # a store's file (a local source is a descriptor)
          data = f.pread(offset, n)
        elif remote:  # read ahead in threads: bytes of its own
          data = os.pread(f, n, offset)
        else:
          if f not in local_readers:
            local_readers[f] = _preader_fd(f, view)
          return local_readers[f](offset, n)
        if len(data) < n:
          raise EOFError('%s: %d bytes short' % (path, n - len(data)))
        return data
      except EOFError as e:
        raise _JobFailed(index, EOFError('%s: %s' % (path, e) if path not in str(e) else e),
                         False) from e
      except Exception as e:  # raised by the caller
        raise _JobFailed(index, e, False) from e

    def write(piece, dst_offset):
      if dst_fd is not None:
        _pwrite_all(dst_fd, piece, dst_offset)

    def checked(index, inspect):
      if inspect is None:
        return None

      def run(piece):
        try:
          inspect(piece)
        except Exception as e:  # raised by the caller
          raise _JobFailed(index, e, False) from e
      return run

    def writing(index):
      def run(piece, dst_offset):
        try:
          write(piece, dst_offset)
        except OSError as e:
          raise _JobFailed(index, e, True) from e
      return run

    try:
      if remote:
        import concurrent.futures  # remote sources only
        def pieces():
          for index, (path, offset, length, dst_offset, inspect) in enumerate(jobs):
            for piece in _split((index, path), offset, length, dst_offset,
                                checked(index, inspect), remote_piece_bytes):
              if failures or stopping.is_set():  # another worker failed, or an interrupt
                return
              yield piece

        def write_piece(piece, at):
          if dst_fd is not None:
            try:
              _pwrite_all(dst_fd, piece, at)
            except OSError as e:
              raise _JobFailed(0, e, True) from e

        with concurrent.futures.ThreadPoolExecutor(depth, 'copy_ranges_read') as pool:
          move_pieces(pieces(), read, write_piece, counted if progress else None, pool, depth)
        return
      for index, (path, offset, length, dst_offset, inspect) in enumerate(jobs):
        if failures:
          return
        left = length
        while left and inspect is None and dst_fd is not None and kernel[0]:
          try:
            n = os.copy_file_range(source(path), dst_fd, left, offset, dst_offset)
          except FileNotFoundError as e:
            raise _JobFailed(index, e, False) from e
          except OSError:  # a full disk fails the pwrite below too
            kernel[0] = False  # not between these files: through memory
            break
          if not n:
            raise _JobFailed(index, EOFError('%s: %d bytes short' % (path, left)), False)
          offset += n
          dst_offset += n
          left -= n
          if progress:
            counted(n)
        move_pieces(_split((index, path), offset, left, dst_offset, checked(index, inspect),
                           piece_bytes),
                    read, writing(index) if dst_fd is not None else None,
                    counted if progress else None)
    except _JobFailed as f:
      e = f.error
      if isinstance(e, OSError) and not isinstance(e, FileError) and e.errno is not None:
        # Name the file at fault: the source unless the write failed (a full disk).
        e = OSError(e.errno, e.strerror, e.filename or (
            dst.name if f.writing else jobs[f.index][0]))
      failures[(share_index, f.index)] = e
    except Exception as e:  # raised by the caller
      failures[(share_index, len(jobs))] = e
    finally:
      view.release()
      for f in opened.values():
        if isinstance(f, int):
          os.close(f)
        else:
          try:
            f.close()
          except OSError:
            pass

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
  except BaseException:
    stopping.set()  # an interrupt in this thread: the other workers stop at their next piece
    raise
  finally:
    for thread in threads:
      thread.join()
    for dst, _ in shares:
      if dst is not None:
        dst.seek(0, os.SEEK_END)
  if failures:
    raise failures[min(failures)]


def _preader_fd(fd, view):
  """read(offset, n) of local file descriptor `fd` through `view` (see _preader)."""
  def read_local(offset, n):
    got = 0
    while got < n:
      k = os.preadv(fd, [view[got:n]], offset + got)
      if not k:
        raise EOFError('%d bytes short' % (n - got))
      got += k
    return view[:n]
  return read_local
