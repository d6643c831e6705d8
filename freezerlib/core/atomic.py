"""Outputs that appear whole or not at all, and never replace what the user did not allow.

An output is written beside its target under a dot-name holding the host and process id, then
moved into place: by a rename where the filesystem renames directories atomically (local,
HDFS), else by copying file by file with the files that mark a model complete
(`saved_model.pb`, `checkpoint`) last, so a loader that finds them finds the rest. A run killed
at any moment leaves the target absent or complete; the next run removes the killed run's
debris.
"""

import contextlib
import dataclasses
import errno
import os
import signal
import socket

from absl import logging

from freezerlib.core import errors
from freezerlib.core import files


def check_output_free(path, overwrite, version=None):
  """Refuses an existing output unless `overwrite`; checks the parent can hold it.

  Args:
    path: the output; with `version`, the base directory of TF Serving's layout.
    overwrite: an existing output may be replaced.
    version: None, an int (the output is PATH/<version>) or 'auto' (a new version in PATH).

  Raises:
    errors.UserError: the output exists and `overwrite` is False, or its parent is not a
      directory.
  """
  if version == 'auto':
    if files.exists(path) and not files.isdir(path):
      raise errors.UserError('cannot write %s: it is a file, not a model base directory' % path)
    return
  if version is not None:
    path = files.join(path, str(version))
  if files.exists(path) and not overwrite:
    raise errors.exists_error(path)
  parent = files.parent_dir(path)
  if parent and files.exists(parent) and not files.isdir(parent):
    raise errors.UserError('cannot write %s: %s is not a directory' % (path, parent))


_HOST = socket.gethostname().replace('-', '_')
_COMPLETED = []  # outputs moved into place by this process, in order


def completed_outputs():
  """The outputs this process has moved into place so far (for an interrupted run's report)."""
  return list(_COMPLETED)


@contextlib.contextmanager
def _signals_held():
  """Holds SIGINT and SIGTERM back while an output moves into place; they arrive after."""
  held = (signal.SIGINT, signal.SIGTERM)
  try:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
  except (AttributeError, ValueError, OSError):  # not the main thread, or no sigmask
    yield
    return
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _temp_sibling(path):
  # A dot-name beside the target: the same filesystem (so rename is atomic where the filesystem
  # makes it so), and hidden from the model loaders that list the parent directory. Host and
  # pid in the name let a later run tell debris of a killed run from a run still going.
  parent, base = files.parent_dir(path), path.rstrip('/').rsplit('/', 1)[-1]
  name = '.%s.tmp-%s-%d-%s' % (base, _HOST, os.getpid(), os.urandom(4).hex())
  return files.join(parent, name) if parent else name


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_temps(path):
  """Removes temporary siblings of `path` left by runs of this host that were killed.

  Returns:
    The paths removed.
  """
  parent, base = files.parent_dir(path), path.rstrip('/').rsplit('/', 1)[-1]
  prefix = '.%s.tmp-%s-' % (base, _HOST)
  try:
    names = files.listdir(parent or '.')
  except OSError:
    return []
  removed = []
  for name in names:
    name = name.rstrip('/')
    if not name.startswith(prefix):
      continue
    pid = name[len(prefix):].split('-', 1)[0]
    if pid.isdigit() and not _pid_alive(int(pid)):
      stale = files.join(parent, name) if parent else name
      _remove(stale)
      removed.append(stale)
      logging.info('removed %s, left by a run that was killed', stale)
  return removed


def _remove(path):
  try:
    if files.isdir(path):
      files.rmtree(path)
    elif files.exists(path):
      files.remove(path)
  except FileNotFoundError:
    pass


# Filesystems whose directory rename is one atomic metadata operation. Elsewhere (object stores
# such as gs:// and s3://, and TensorFlow's ram://) a directory "rename" copies objects one by
# one, or, on ram://, silently moves nothing.
_ATOMIC_DIR_RENAME = ('', 'file', 'hdfs', 'viewfs')
# Files that mark a model complete: copied last, so a reader that finds them finds the rest.
_COMMIT_FILES = ('saved_model.pb', 'saved_model.pbtxt', 'checkpoint')


def _copy_tree(src, dst):
  """Copies directory `src` to `dst` file by file, the files that mark completeness last."""
  paths = []
  for root, _, names in files.walk(src):
    for name in names:
      paths.append(files.join(root, name))
  paths.sort(key=lambda f: (f.rsplit('/', 1)[-1] in _COMMIT_FILES, f.count('/'), f))
  for f in paths:
    target = dst + f[len(src.rstrip('/')):]
    files.makedirs(files.parent_dir(target))
    files.copy(f, target, overwrite=True)


def _move(src, dst):
  if files.isdir(src) and files.scheme(dst) not in _ATOMIC_DIR_RENAME:
    _copy_tree(src, dst)
    _remove(src)
  else:
    files.rename(src, dst)


def _commit(tmp, path, overwrite):
  """Moves the finished `tmp` onto `path`, replacing an old output only when allowed."""
  if files.exists(path):
    if not overwrite:
      raise errors.exists_error(path)
    if not files.isdir(path):
      files.rename(tmp, path, overwrite=True)
      return
    # Directories cannot be renamed over: move the old one aside first, so that the target is
    # always either the old complete model or the new complete one.
    old = _temp_sibling(path)
    _move(path, old)
    _move(tmp, path)
    _remove(old)
    return
  _move(tmp, path)


def _file_error_as_user_error(e, path):
  """Raises a file error met while writing `path` as a one-line UserError (other exceptions,
  the caller's own or the tool's bugs, are left to the caller to re-raise)."""
  if files.is_error(e):
    raise errors.UserError('cannot write %s: %s' % (path, errors.tf_error_message(e))) from e


@contextlib.contextmanager
def atomic_output(path, overwrite=False):
  """Yields a temporary path beside `path`; on success moves it onto `path`.

  Whatever goes wrong inside the block, the temporary output is removed and `path` is left as
  it was, so no reader ever sees a half-written model.

  Args:
    path: the final file or directory.
    overwrite: replace an existing `path`.

  Yields:
    The temporary path to write (not yet existing).

  Raises:
    errors.UserError: `path` exists and `overwrite` is False, or it cannot be written.
  """
  check_output_free(path, overwrite)
  parent = files.parent_dir(path)
  try:
    if parent:
      files.makedirs(parent)
  except OSError as e:
    raise errors.UserError('cannot create %s: %s' % (parent, errors.tf_error_message(e))) from e
  remove_stale_temps(path)
  tmp = _temp_sibling(path)
  try:
    yield tmp
    with _signals_held():
      _commit(tmp, path, overwrite)
      _COMPLETED.append(path)
  except Exception as e:
    _file_error_as_user_error(e, path)
    raise
  finally:
    if files.exists(tmp):
      _remove(tmp)


# ---------------------------------------------------------------------------------------------
# TF Serving's version layout: BASE/<version>/saved_model.pb


def _rename_noreplace(src, dst):
  """Renames `src` to `dst`, failing with FileExistsError if `dst` exists, atomically where the
  kernel offers it (Linux renameat2 RENAME_NOREPLACE); elsewhere a rename that fails on a
  non-empty directory (a finished version always holds saved_model.pb)."""
  if not files.is_remote(src):
    import ctypes  # here only: not every run renames
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, 'renameat2', None)
    if renameat2 is not None:
      at_fdcwd, rename_noreplace = -100, 1
      if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst),
                   rename_noreplace) == 0:
        return
      err = ctypes.get_errno()
      if err == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, 'exists', dst)
      if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        raise OSError(err, os.strerror(err), dst)
    try:
      os.rename(src, dst)
    except OSError as e:
      if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
        raise FileExistsError(errno.EEXIST, 'exists', dst) from e
      raise
    return
  if files.exists(dst):  # object stores: no atomic test-and-rename (racing runs not protected)
    raise FileExistsError(errno.EEXIST, 'exists', dst)
  _move(src, dst)


def numeric_versions(base):
  """The numeric version directories under `base` (TF Serving's layout), as ints."""
  try:
    names = files.listdir(base)
  except (FileNotFoundError, NotADirectoryError):
    return []
  return sorted(int(n.rstrip('/')) for n in names if n.rstrip('/').isdigit())


def parse_version(text):
  """'auto' or a positive integer (as TF Serving numbers versions) -> 'auto' or int; None for
  None or ''.

  Raises:
    errors.UserError: anything else.
  """
  if text is None or text == '':
    return None
  if text == 'auto':
    return 'auto'
  if text.isdigit() and int(text) > 0:
    return int(text)
  raise errors.UserError('--version=%s is neither a positive integer nor auto' % text)


@dataclasses.dataclass
class VersionedOutput:
  """Where a versioned output is written (`tmp`), and where it ended up (`path`, set once it
  is in place)."""
  tmp: str
  path: str = None


@contextlib.contextmanager
def versioned_output(base, version, overwrite=False):
  """Like atomic_output, for a SavedModel in TF Serving's layout: BASE/<version>.

  The output is written under a dot-name inside BASE, which TF Serving's file-system poller
  ignores (it loads numeric directory names only), then moved to BASE/<version>. With
  version 'auto' the number is one more than the highest numeric version in BASE (1 for a
  new BASE), chosen when the output moves into place; if another run took that number first,
  the next one is taken, so two runs racing for the same number cannot both win.

  Args:
    base: the model's base path (TF Serving's --model_base_path).
    version: an int, or 'auto'.
    overwrite: replace an existing BASE/<version> (an int version only).

  Yields:
    VersionedOutput: write `.tmp`; `.path` is set after the block.

  Raises:
    errors.UserError: BASE/<version> exists (without `overwrite`), or a write fails.
  """
  if version != 'auto':
    target = files.join(base, str(version))
    with atomic_output(target, overwrite) as tmp:
      out = VersionedOutput(tmp)
      yield out
    out.path = target
    return
  if files.exists(base) and not files.isdir(base):
    raise errors.UserError('cannot write %s: it is a file, not a model base directory' % base)
  try:
    files.makedirs(base)
  except OSError as e:
    raise errors.UserError('cannot create %s: %s' % (base, errors.tf_error_message(e))) from e
  remove_stale_temps(files.join(base, 'auto'))
  tmp = _temp_sibling(files.join(base, 'auto'))
  out = VersionedOutput(tmp)
  try:
    yield out
    with _signals_held():
      number = max(numeric_versions(base) + [0]) + 1
      while True:
        target = files.join(base, str(number))
        try:
          _rename_noreplace(tmp, target)
          break
        except FileExistsError:
          number += 1
      out.path = target
      _COMPLETED.append(target)
  except Exception as e:
    _file_error_as_user_error(e, base)
    raise
  finally:
    if files.exists(tmp):
      _remove(tmp)
