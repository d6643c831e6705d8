"""What every script shares at its top: flags parsing, one-line errors, exit codes, Ctrl-C.

Exit codes (the README's table): 0 success; 1 bad input or models that differ; 2 usage errors
(an unknown flag, a required flag missing, a stray argument), as one line naming the flag;
3 optimize_from_pb_test.py's reference fails on the inputs; 130 interrupted (SIGINT or SIGTERM),
as one line saying what was written. Never a traceback for any of them.

The library is the `freezerlib` package; this module is the scripts' side of it and is never
imported by the package. Import it first in a script: until `run_cli` starts the work, an
interrupt ends the process at once (nothing has been written yet).
"""

import gc
import os
import signal
import sys


def _exit_at_start_up(signum, frame):
  program = sys.argv[0].rsplit('/', 1)[-1] if sys.argv and sys.argv[0] else 'freezer'
  os.write(2, ('%s: interrupted: nothing written\n' % program).encode())
  os._exit(130)


# First, before the imports (TensorFlow's take seconds): an interrupt during them has nothing to
# clean up, so it ends the process at once with one line. Only in a script's own process: a
# test that imports a script keeps its own handlers.
_SCRIPTS = ('model_gen.py', 'freezer.py', 'optimize_from_pb.py', 'optimize_from_pb_test.py',
            'optimize_from_ckpt.py')
if (getattr(sys.modules.get('__main__'), '__file__', None) or '').rsplit('/', 1)[-1] in _SCRIPTS:
  signal.signal(signal.SIGINT, _exit_at_start_up)
  signal.signal(signal.SIGTERM, _exit_at_start_up)
  # The imports make objects that live as long as the process (modules, classes, functions):
  # the cyclic garbage collector, which would walk them again and again while they are made
  # and at every full collection afterwards, waits until run_cli, which freezes them first.
  gc.disable()

import re

from absl import flags
from absl import logging

EXIT_OK = 0
EXIT_FAILURE = 1      # bad input, or two models that do not answer the same
EXIT_USAGE = 2        # unknown or missing flags, stray arguments
EXIT_REFERENCE_FAILED = 3  # optimize_from_pb_test.py: the reference fails on the inputs
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

_HELP_ARGS = ('-h', '-?', '--help', '--helpshort')


def _program():
  return sys.argv[0].rsplit('/', 1)[-1] if sys.argv and sys.argv[0] else 'freezer'


def _interrupt(signum, frame):
  raise KeyboardInterrupt


def usage_error(message):
  """Prints a usage error as one line pointing at --help, and exits with code 2."""
  program = _program()
  sys.stderr.write('%s: usage error: %s; see %s --help\n' % (program, message, program))
  sys.stderr.flush()
  sys.exit(EXIT_USAGE)


def _print_help():
  main = sys.modules.get('__main__')
  doc = (getattr(main, '__doc__', None) or '').strip('\n')
  # absl heads the list with the script's path; the flags follow, indented.
  body = '\n'.join(l for l in flags.FLAGS.main_module_help().splitlines()
                   if l.startswith(' '))
  sys.stdout.write('%s\n\nFlags (required ones marked):\n%s\n\nExit codes: 0 success; 1 bad '
                   'input, or models that differ; 2 usage error;\n3 optimize_from_pb_test.py\'s '
                   'reference fails on the inputs; 130 interrupted.\nEvery flag, absl\'s own '
                   'included: --helpfull.\n' % (doc, body))
  sys.stdout.flush()


def parse_flags(argv):
  """absl's flags parser for `app.run(main, flags_parser=utils.parse_flags)`.

  `--help` prints the script's docstring and its own flags and exits 0, `--helpfull` every
  flag, absl's own included, and exits 0 too (absl's own handler exits 1, the code for bad
  input); a usage error is one line and exit code 2.
  """
  args = argv[1:argv.index('--')] if '--' in argv else argv[1:]
  full = '--helpfull' in args
  if full or any(a in _HELP_ARGS for a in args):
    try:
      flags.FLAGS(argv[:1], known_only=True)  # defaults, so help can show them
    except flags.Error:
      pass
    if full:
      from absl import app
      app.usage(shorthelp=False, writeto_stdout=True)
    else:
      _print_help()
    sys.exit(EXIT_OK)
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    # A rule between flags reads "flags a=1, b=2: the rule"; the rule is what to say.
    message = re.sub(r'^flags [^:]*: ', '', str(e).strip().splitlines()[0])
    missing = [f for f in flags.FLAGS if
               'Flag --%s must have a value other than None' % f in str(e)]
    if missing:
      message = 'flag --%s is required' % missing[0]
    elif message.startswith('Unknown command line flag'):
      message = 'unknown flag ' + message[len('Unknown command line flag '):]
    usage_error(message)
  if len(rest) > 1:
    usage_error('unexpected argument %r (every input is given by a flag)' % rest[1])
  return rest


def run_cli(program, fn, end_process=True):
  """Runs `fn()`: a UserError becomes one line and exit code 1 (3 for errors.ReferenceFailed),
  an interrupt exit code 130, any other exception (a bug) one line naming the file holding its
  traceback (internal_error_line) and exit code 1.

  Args:
    program: name shown before the message, e.g. 'freezer.py'.
    fn: the script's work; returns an exit code or None (0).
    end_process: in a script's own process, end it here (`_end_process`). False for a cluster
      task, whose gRPC server other tasks may still be closing their sessions with when its
      work is done: a task ended at once can leave a worker waiting on its vanished PS until
      the cluster's timeout; the interpreter's teardown gives them that time.

  Returns:
    The exit code for `absl.app.run`.
  """
  from freezerlib.core import atomic
  from freezerlib.core import errors
  from freezerlib.core import files
  from freezerlib.core import lean_tf
  lean_tf.run_pending_hooks()  # scripts that imported TensorFlow themselves
  # From here an interrupt unwinds the work, so every temporary output is removed.
  previous = (signal.signal(signal.SIGINT, _interrupt), signal.signal(signal.SIGTERM, _interrupt))
  as_script = previous[0] is _exit_at_start_up
  if as_script and not gc.isenabled():
    gc.freeze()  # what start-up made is never garbage: later collections skip it
    gc.enable()
  already = len(atomic.completed_outputs())
  try:
    code = fn()
  except (errors.UserError, files.FileError) as e:
    # FileError: a store that cannot answer (unreachable, refused credentials), met wherever
    # a path is first touched; its message names the path and the cause.
    _after_work(as_script, previous)
    sys.stderr.write('%s: error: %s\n' % (program, str(e).replace('\n', ' ')))
    sys.stderr.flush()
    code = EXIT_REFERENCE_FAILED if isinstance(e, errors.ReferenceFailed) else EXIT_FAILURE
  except KeyboardInterrupt:
    _after_work(as_script, previous)
    done = atomic.completed_outputs()[already:]
    sys.stderr.write('%s: interrupted: %s\n' % (
        program, ('%s complete, nothing else written' % ', '.join(done)) if done
        else 'nothing written'))
    sys.stderr.flush()
    code = EXIT_INTERRUPTED
  except Exception as e:
    # A bug of ours (bad input would have been a UserError): still one line and exit 1, the
    # outputs already removed by their atomic writers, and the traceback kept for a report.
    _after_work(as_script, previous)
    sys.stderr.write('%s: error: %s\n' % (program, internal_error_line(e)))
    sys.stderr.flush()
    code = EXIT_FAILURE
  else:
    _after_work(as_script, previous)
    code = EXIT_OK if code is None else code
  if as_script and end_process:
    _end_process(code)
  return code


INTERNAL_ERROR = 'internal error'


def internal_error_line(e):
  """The one line for an exception that is not a UserError (a bug: every bad input is meant to
  be one): what it was, and where its traceback went. The traceback is logged at verbosity 1
  and written to a file in the temporary directory, which the line names; when that file
  cannot be written the line says to rerun with --verbosity=1."""
  import tempfile
  import traceback
  text = ''.join(traceback.format_exception(type(e), e, e.__traceback__))
  logging.vlog(1, 'internal error:\n%s', text)
  what = '%s: %s' % (type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e).strip()
                     else '(no message)')
  try:
    fd, path = tempfile.mkstemp(prefix='freezer-traceback-', suffix='.txt')
    with os.fdopen(fd, 'w') as f:
      f.write('%s\n%s' % (' '.join(sys.argv), text))
    where = 'its traceback is in %s' % path
  except OSError:
    where = 'rerun with --verbosity=1 to see its traceback'
  return '%s (%s): a bug, please report it; %s' % (INTERNAL_ERROR, what, where)


def _end_process(code):
  """Ends a script's own process with `code` now that its outputs are what they will be:
  exit handlers run and stdout and stderr are flushed, as at any exit, but the interpreter's
  teardown of every module (TensorFlow's thousands), which changes nothing on disk, is
  skipped. Returns, for the usual exit, while a non-daemon thread is still running: the
  interpreter waits for those."""
  import atexit
  import threading
  if any(t.is_alive() and not t.daemon for t in threading.enumerate()
         if t is not threading.main_thread()):
    return
  atexit._run_exitfuncs()  # logging's flush among them
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can reach it
      pass
  os._exit(code)


def _after_work(as_script, previous):
  """A script's work is done (or was interrupted) and its outputs are what they will be: a
  signal from here on changes nothing. Called in-process (tests), the handlers are restored."""
  if as_script:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
  else:
    signal.signal(signal.SIGINT, previous[0])
    signal.signal(signal.SIGTERM, previous[1])


def warmup_writer(count, input_files, seed=0):
  """The `finalize` callback that writes `count` warmup requests (None when `count` is 0), for
  the scripts that write serving SavedModels (--warmup, --warmup_inputs)."""
  if not count:
    if input_files:
      usage_error('--warmup_inputs needs --warmup=N')
    return None

  def finalize(saved_model_dir):
    from freezerlib.verify import warmup  # loads TF
    written = warmup.write(saved_model_dir, count, input_files or None, seed)
    logging.info('wrote %d warmup requests (assets.extra/%s)', written, warmup.FILE_NAME)

  return finalize


def serving_checker(finalize, check):
  """The `finalize` callback that runs `finalize` (warmup requests, or None), then, if `check`,
  the serving check on the SavedModel before it moves into place (--check): a model TF
  Serving's loader cannot load or run is never put in place."""
  if not check:
    logging.info('--nocheck: the SavedModel written is not loaded to check that it serves')
    return finalize

  def checked(saved_model_dir):
    if finalize is not None:
      finalize(saved_model_dir)
    from freezerlib.verify import serving_check
    seconds = serving_check.check_saved_model(saved_model_dir)
    logging.info('serving check: TF Serving\'s loader loaded the SavedModel and ran each '
                 'signature in %.2f s (--nocheck skips it)', seconds)

  return checked


def log_default(flag_name, value):
  """Logs the default chosen for a flag the user left unset."""
  logging.info("'--%s' not given, using %s", flag_name, value)
