"""The one error type for the user's mistakes, and TensorFlow errors as one line."""


class UserError(Exception):
  """A mistake in the user's input: reported as one line and exit code 1, never a traceback.

  The message names the path or name at fault and, where there is one, the fix.
  """


class ReferenceFailed(UserError):
  """The reference model itself fails on the inputs: they are wrong for it, so nothing can be
  said of the new model. optimize_from_pb_test.py exits 3 for it, not 1 ("models differ")."""


def tf_error_message(e):
  """The first line of a TensorFlow error, without the graph-construction trace."""
  text = getattr(e, 'message', None) or str(e)
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  for line in lines:
    if not line.startswith(('Graph execution error', 'Detected at node', 'File "',
                            'Node:', 'Traceback', 'From /job:', '<stack traces unavailable>')):
      return line
  return lines[0] if lines else type(e).__name__


def exists_error(path):
  """The error for an output that exists and may not be replaced."""
  return UserError('%s already exists; pass --overwrite to replace it' % path)


class FileError(OSError):
  """A file operation on a remote path failed: one line naming the path and the cause
  (core/files, core/object_store)."""
