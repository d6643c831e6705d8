"""Outputs that appear whole or not at all, and never replace what the user did not allow.

An output is written beside its target under a dot-name holding the host and process id, then
moved into place: by a rename where the filesystem renames directories atomically (local,
HDFS), else by copying file by file with the files that mark a model complete
(`saved_model.pb`, `checkpoint`) last, so a loader that finds them finds the rest. A run killed
at any moment leaves the target absent or complete; the next run removes the killed run's
debris.

On an object store (s3://, gs://: no rename) the output is written into a local scratch
directory (which TensorFlow can write, and which is removed afterwards, also on failure and
Ctrl-C) and uploaded when complete. A file appears whole (an object becomes visible when its
upload completes). A directory is uploaded file by file under a marker object
`.freezer-incomplete-HOST-PID`, uploaded first and removed last, with `saved_model.pb` uploaded
after every other file: TF Serving's poller never finds a version whose saved_model.pb is there
before its variables, and a run killed during the upload leaves a directory without
saved_model.pb (which no loader loads) under a marker naming a process that is gone; the next
run on this host that writes there removes it.
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
  remove_killed_upload(path)
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
  if files.is_object_store(path):  # written locally, uploaded when complete
    return files.join(files.scratch_dir('output'), files.basename(path))
  # A dot-name beside the target: the same filesystem (so rename is atomic where the filesystem
  # makes it so), and hidden from the model loaders that list the parent directory. Host and
  # pid in the name let a later run tell debris of a killed run from a run still going.
  parent, base = files.parent_dir(path), path.rstrip('/').rsplit('/', 1)[-1]
  name = '.%s.tmp-%s-%d-%s' % (base, _HOST, os.getpid(), os.urandom(4).hex())
  return files.join(parent, name) if parent else name


def remove_stale_temps(path):
  """Removes temporary siblings of `path` left by runs of this host that were killed.

  Returns:
    The paths removed.
  """
  if files.is_object_store(path):
    return []  # written in a local scratch directory (files.remove_stale_scratch)
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
    if pid.isdigit() and not files.pid_alive(int(pid)):
      stale = files.join(parent, name) if parent else name
      _remove(stale)
      removed.append(stale)
      logging.info('removed %s, left by a run that was killed', stale)
  return removed


_MARKER = '.freezer-incomplete-'


def remove_killed_upload(path):
  """Removes what a killed run of this host left of an upload to `path` (an object store's
  directory under a marker naming a process that is gone): the directory when its
  saved_model.pb never arrived, else the marker only (the model is complete).

  Returns:
    Whether anything was removed.
  """
  if not files.is_object_store(path):
    return False
  try:
    names = [n.rstrip('/') for n in files.listdir(path)]
  except OSError:  # absent, or a file
    return False
  prefix = '%s%s-' % (_MARKER, _HOST)
  stale = [n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit() and
           not files.pid_alive(int(n[len(prefix):]))]
  if not stale:
    return False
  if any(n in _COMMIT_FILES for n in names):
    for name in stale:
      files.remove(files.join(path, name))
    logging.info('%s: removed the marker a killed run left on this complete model', path)
  else:
    files.rmtree(path)
    logging.info('removed %s, left incomplete by a run that was killed', path)
  return True


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


def _upload_tree(src, dst):
  """Copies directory `src` to object store `dst` under a marker (module docstring)."""
  marker = files.join(dst, '%s%s-%d' % (_MARKER, _HOST, os.getpid()))
  files.write(marker, b'')
  try:
    files.copy_tree(src, dst, last=_COMMIT_FILES)
  except BaseException:
    try:  # what this run uploaded, marker included: nothing half-written stays
      files.rmtree(dst)
    except OSError as e:  # the store failed again: the marker stays, the next run removes it
      logging.warning('could not remove the partial upload %s (%s); the next run on this host '
                      'removes it', dst, e)
    raise
  files.remove(marker)


def _move(src, dst):
  if files.isdir(src) and files.is_object_store(dst):
    _upload_tree(src, dst)
    _remove(src)
  elif files.isdir(src) and files.scheme(dst) not in _ATOMIC_DIR_RENAME:
    files.copy_tree(src, dst, last=_COMMIT_FILES)
    _remove(src)
  else:
    files.rename(src, dst)


def _commit(tmp, path, overwrite):
  """Moves the finished `tmp` onto `path`, replacing an old output only when allowed; returns
  `path`."""
  if files.exists(path):
    if not overwrite:
      raise errors.exists_error(path)
    if not files.isdir(path):
      files.rename(tmp, path, overwrite=True)
      return path
    if files.is_object_store(path):
      # Nothing to move aside without a rename: the old model goes, then the new one is
      # uploaded (the version is absent, then incomplete without saved_model.pb, then whole).
      files.rmtree(path)
      _move(tmp, path)
      return path
    # Directories cannot be renamed over: move the old one aside first, so that the target is
    # always either the old complete model or the new complete one.
    old = _temp_sibling(path)
    _move(path, old)
    _move(tmp, path)
    _remove(old)
    return path
  _move(tmp, path)
  return path


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
    if files.is_object_store(path):  # the store's line names the bucket or the endpoint
      raise errors.UserError('cannot write %s: %s' % (path, errors.tf_error_message(e))) from e
    raise errors.UserError('cannot create %s: %s' % (parent, errors.tf_error_message(e))) from e
  remove_stale_temps(path)
  tmp = _temp_sibling(path)
  with _written(tmp, path, lambda: _commit(tmp, path, overwrite)):
    yield tmp


@contextlib.contextmanager
def _written(tmp, where, commit):
  """The one cleanup block of atomic_output and versioned_output.

  The block writes `tmp`. Then `commit()`, with SIGINT and SIGTERM held, moves it into place and
  returns where it went; that path is appended to the list this yields. A file error becomes a
  one-line UserError naming `where`. Whatever happens, `tmp` is removed, and with it the local
  scratch directory holding it (outputs to an object store).
  """
  final = []
  try:
    yield final
    with _signals_held():
      target = commit()
      final.append(target)
      _COMPLETED.append(target)
  except Exception as e:
    _file_error_as_user_error(e, where)
    raise
  finally:
    if files.exists(tmp):
      _remove(tmp)
    scratch = files.parent_dir(tmp)
    if not files.is_remote(tmp) and files.basename(scratch).startswith('freezer-scratch-'):
      files.rmtree(scratch)


# ---------------------------------------------------------------------------------------------
# TF Serving's version layout: BASE/<version>/saved_model.pb


def _rename_noreplace(src, dst):
  """Renames `src` to `dst`, failing with FileExistsError if `dst` exists, atomically where the
  kernel offers it (Linux renameat2 RENAME_NOREPLACE); elsewhere a rename that fails on a
  non-empty directory (a finished version always holds saved_model.pb)."""
  if not files.is_remote(src) and not files.is_remote(dst):
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
  if files.is_object_store(base):
    for number in numeric_versions(base):
      remove_killed_upload(files.join(base, str(number)))
  tmp = _temp_sibling(files.join(base, 'auto'))
  out = VersionedOutput(tmp)

  def commit():
    number = max(numeric_versions(base) + [0]) + 1
    while True:
      target = files.join(base, str(number))
      try:
        _rename_noreplace(tmp, target)
        return target
      except FileExistsError:
        number += 1

  with _written(tmp, base, commit) as final:
    yield out
  out.path = final[0]
