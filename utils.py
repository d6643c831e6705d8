"""Shared plumbing for freezer's scripts: user errors, quiet TensorFlow, atomic outputs.

Graph helpers live in modules beside this one, named by concern:
`saved_model_io` (read and write SavedModels and frozen graphs), `tables` (hash-table contents),
`freezing` (variables and tables to constants), `graph_edit` (placeholders, stripping),
`comparison` (run two models on the same inputs).

Every path goes through `fileio` (tf.io.gfile's file systems), so `hdfs://`, `gs://`, `s3://`
and `ram://` paths work like local ones.
"""

import contextlib
import os
import socket
import sys
import time
import uuid

# TensorFlow's C++ start-up chatter would drown the one-line errors this toolkit promises.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import logging  # pylint: disable=g-import-not-at-top

import fileio  # pylint: disable=g-import-not-at-top
import lean_tf  # pylint: disable=g-import-not-at-top


def _quiet_tensorflow(tf):
  """Silences TensorFlow's Python-side noise, once it is loaded (scripts that need only protos
  and files never load it)."""
  from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
  # tf.compat.v1 is this toolkit's subject, not a migration target: its deprecation notices
  # are noise.
  deprecation._PRINT_DEPRECATION_WARNINGS = False  # pylint: disable=protected-access
  # TensorFlow's Python logger has a handler of its own besides absl's, so each of its lines
  # would print twice; its INFO chatter (builder paths of temporary directories) is noise here.
  tf.get_logger().handlers = []
  tf.get_logger().setLevel('WARNING')


lean_tf.after_tensorflow_loads(_quiet_tensorflow)

EXIT_OK = 0
EXIT_FAILURE = 1  # bad input, or two models that do not answer the same
EXIT_USAGE = 2    # absl's own exit code for unknown or missing flags


class UserError(Exception):
  """A mistake in the user's input: reported as one line and exit code 1, never a traceback."""


def run_cli(program, fn):
  """Runs `fn()` and turns a UserError into one line on stderr and exit code 1.

  Args:
    program: name shown before the message, e.g. 'freezer.py'.
    fn: the script's work; returns an exit code or None (0).

  Returns:
    The exit code for `absl.app.run`.
  """
  lean_tf.run_pending_hooks()  # scripts that imported TensorFlow themselves
  try:
    code = fn()
  except UserError as e:
    sys.stderr.write('%s: error: %s\n' % (program, str(e).replace('\n', ' ')))
    sys.stderr.flush()
    return EXIT_FAILURE
  return EXIT_OK if code is None else code


def tf_error_message(e):
  """The first line of a TensorFlow error, without the graph-construction trace."""
  text = getattr(e, 'message', None) or str(e)
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  for line in lines:
    if not line.startswith(('Graph execution error', 'Detected at node', 'File "',
                            'Node:', 'Traceback', 'From /job:', '<stack traces unavailable>')):
      return line
  return lines[0] if lines else type(e).__name__


def join(*parts):
  """Joins path components the way tf.io.gfile expects, keeping URL schemes intact."""
  return '/'.join([parts[0].rstrip('/')] + [p.strip('/') for p in parts[1:]])


def parent_dir(path):
  """The directory holding `path` ('' for a bare relative name), scheme-safe."""
  path = path.rstrip('/')
  return path.rsplit('/', 1)[0] if '/' in path else ''


def check_output_free(path, overwrite):
  """Refuses an existing output unless `overwrite`; checks the parent can hold it.

  Raises:
    UserError: `path` exists and `overwrite` is False, or its parent is not a directory.
  """
  if fileio.exists(path) and not overwrite:
    raise UserError('%s already exists; pass --overwrite to replace it' % path)
  parent = parent_dir(path)
  if parent and fileio.exists(parent) and not fileio.isdir(parent):
    raise UserError('cannot write %s: %s is not a directory' % (path, parent))


_HOST = socket.gethostname().replace('-', '_')


def _temp_sibling(path):
  # A dot-name beside the target: the same filesystem (so rename is atomic where the filesystem
  # makes it so), and hidden from the model loaders that list the parent directory. Host and
  # pid in the name let a later run tell debris of a killed run from a run still going.
  parent, base = parent_dir(path), path.rstrip('/').rsplit('/', 1)[-1]
  name = '.%s.tmp-%s-%d-%s' % (base, _HOST, os.getpid(), uuid.uuid4().hex[:8])
  return join(parent, name) if parent else name


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
  parent, base = parent_dir(path), path.rstrip('/').rsplit('/', 1)[-1]
  prefix = '.%s.tmp-%s-' % (base, _HOST)
  try:
    names = fileio.listdir(parent or '.')
  except OSError:
    return []
  removed = []
  for name in names:
    name = name.rstrip('/')
    if not name.startswith(prefix):
      continue
    pid = name[len(prefix):].split('-', 1)[0]
    if pid.isdigit() and not _pid_alive(int(pid)):
      stale = join(parent, name) if parent else name
      _remove(stale)
      removed.append(stale)
      logging.info('removed %s, left by a run that was killed', stale)
  return removed


def _remove(path):
  try:
    if fileio.isdir(path):
      fileio.rmtree(path)
    elif fileio.exists(path):
      fileio.remove(path)
  except FileNotFoundError:
    pass


# Filesystems whose directory rename is one atomic metadata operation. Elsewhere (object stores
# such as gs:// and s3://, and TensorFlow's ram://) a directory "rename" copies objects one by
# one, or, on ram://, silently moves nothing.
_ATOMIC_DIR_RENAME = ('', 'file', 'hdfs', 'viewfs')
# Files that mark a model complete: copied last, so a reader that finds them finds the rest.
_COMMIT_FILES = ('saved_model.pb', 'saved_model.pbtxt', 'checkpoint')


def _scheme(path):
  return path.split('://', 1)[0] if '://' in path else ''


def _copy_tree(src, dst):
  """Copies directory `src` to `dst` file by file, the files that mark completeness last."""
  files = []
  for root, _, names in fileio.walk(src):
    for name in names:
      files.append(join(root, name))
  files.sort(key=lambda f: (f.rsplit('/', 1)[-1] in _COMMIT_FILES, f.count('/'), f))
  for f in files:
    target = dst + f[len(src.rstrip('/')):]
    fileio.makedirs(parent_dir(target))
    fileio.copy(f, target, overwrite=True)


def _move(src, dst):
  if fileio.isdir(src) and _scheme(dst) not in _ATOMIC_DIR_RENAME:
    _copy_tree(src, dst)
    _remove(src)
  else:
    fileio.rename(src, dst)


def _commit(tmp, path, overwrite):
  """Moves the finished `tmp` onto `path`, replacing an old output only when allowed."""
  if fileio.exists(path):
    if not overwrite:
      raise UserError('%s already exists; pass --overwrite to replace it' % path)
    if not fileio.isdir(path):
      fileio.rename(tmp, path, overwrite=True)
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
    UserError: `path` exists and `overwrite` is False, or it cannot be written.
  """
  check_output_free(path, overwrite)
  parent = parent_dir(path)
  try:
    if parent:
      fileio.makedirs(parent)
  except OSError as e:
    raise UserError('cannot create %s: %s' % (parent, tf_error_message(e))) from e
  remove_stale_temps(path)
  tmp = _temp_sibling(path)
  try:
    yield tmp
    _commit(tmp, path, overwrite)
  except Exception as e:  # pylint: disable=broad-except
    if not fileio.is_error(e):
      raise
    raise UserError('cannot write %s: %s' % (path, tf_error_message(e))) from e
  finally:
    if fileio.exists(tmp):
      _remove(tmp)


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


def human_bytes(n):
  """'1.5 MiB' for 1572864."""
  n = float(n)
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if abs(n) < 1024 or unit == 'GiB':
      return ('%d %s' % (n, unit)) if unit == 'B' else ('%.1f %s' % (n, unit))
    n /= 1024
  return '%.1f TiB' % n


def log_default(flag_name, value):
  """Logs the default chosen for a flag the user left unset."""
  logging.info("'--%s' not given, using %s", flag_name, value)
