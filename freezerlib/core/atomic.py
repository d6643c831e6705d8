"""Outputs that appear whole or not at all, and never replace what the user did not allow.

An output is written beside its target under a dot-name holding the host and process id, then
moved into place: by a rename where the filesystem renames directories atomically (local,
HDFS), else by copying file by file with the files that mark a model complete
(`saved_model.pb`, `checkpoint`) last, so a loader that finds them finds the rest. A run killed
at any moment leaves the target absent or complete; the next run removes the killed run's
debris.
"""

import contextlib
import os
import socket
import uuid

from absl import logging

from freezerlib.core import errors
from freezerlib.core import files


def check_output_free(path, overwrite):
  """Refuses an existing output unless `overwrite`; checks the parent can hold it.

  Raises:
    errors.UserError: `path` exists and `overwrite` is False, or its parent is not a directory.
  """
  if files.exists(path) and not overwrite:
    raise errors.exists_error(path)
  parent = files.parent_dir(path)
  if parent and files.exists(parent) and not files.isdir(parent):
    raise errors.UserError('cannot write %s: %s is not a directory' % (path, parent))


_HOST = socket.gethostname().replace('-', '_')


def _temp_sibling(path):
  # A dot-name beside the target: the same filesystem (so rename is atomic where the filesystem
  # makes it so), and hidden from the model loaders that list the parent directory. Host and
  # pid in the name let a later run tell debris of a killed run from a run still going.
  parent, base = files.parent_dir(path), path.rstrip('/').rsplit('/', 1)[-1]
  name = '.%s.tmp-%s-%d-%s' % (base, _HOST, os.getpid(), uuid.uuid4().hex[:8])
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
    _commit(tmp, path, overwrite)
  except Exception as e:  # pylint: disable=broad-except
    if not files.is_error(e):
      raise
    raise errors.UserError('cannot write %s: %s' % (path, errors.tf_error_message(e))) from e
  finally:
    if files.exists(tmp):
      _remove(tmp)
