"""What every script shares at its top: one-line errors, exit codes, the defaults it picked.

The library is the `freezerlib` package; this module is the scripts' side of it and is never
imported by the package.
"""

import sys

from absl import logging

from freezerlib.core import errors
from freezerlib.core import lean_tf

EXIT_OK = 0
EXIT_FAILURE = 1  # bad input, or two models that do not answer the same
EXIT_USAGE = 2    # absl's own exit code for unknown or missing flags
EXIT_REFERENCE_FAILED = 3  # optimize_from_pb_test.py: the reference fails on the inputs


def run_cli(program, fn):
  """Runs `fn()` and turns a UserError into one line on stderr and exit code 1 (3 for
  errors.ReferenceFailed).

  Args:
    program: name shown before the message, e.g. 'freezer.py'.
    fn: the script's work; returns an exit code or None (0).

  Returns:
    The exit code for `absl.app.run`.
  """
  lean_tf.run_pending_hooks()  # scripts that imported TensorFlow themselves
  try:
    code = fn()
  except errors.UserError as e:
    sys.stderr.write('%s: error: %s\n' % (program, str(e).replace('\n', ' ')))
    sys.stderr.flush()
    return EXIT_REFERENCE_FAILED if isinstance(e, errors.ReferenceFailed) else EXIT_FAILURE
  return EXIT_OK if code is None else code


def log_default(flag_name, value):
  """Logs the default chosen for a flag the user left unset."""
  logging.info("'--%s' not given, using %s", flag_name, value)
