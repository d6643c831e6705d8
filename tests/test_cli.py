"""The command line as a user meets it: --help, exit codes, Ctrl-C, TF Serving's layout, warmup.

Exit codes (README): 0 success; 1 bad input or models that differ; 2 usage errors, as one
line naming the flag; 3 optimize_from_pb_test.py's reference fails on the inputs; 130
interrupted, as one line saying what was written.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from conftest import REPO
from conftest import run_script
from conftest import tree_digest
from freezerlib.core import atomic
from freezerlib.verify import loaders

SCRIPTS = ['model_gen.py', 'freezer.py', 'optimize_from_pb.py', 'optimize_from_pb_test.py',
           'optimize_from_ckpt.py']
# Flags each script must list in --help (its own and the shared ones it uses), required first.
HELP = {
    'model_gen.py': (['output_dir'], ['overwrite', 'seed', 'num_ps', 'fake_infer_graph']),
    'freezer.py': (['saved_model_dir', 'output_graph'],
                   ['signature_def', 'tags', 'overwrite', 'allow_ops', 'keep_as_variables']),
    'optimize_from_pb.py': (['input_graph'],
                            ['output_saved_model_dir', 'output_graph', 'inputs', 'outputs',
                             'signature_def', 'version', 'warmup', 'warmup_inputs', 'log_dir']),
    'optimize_from_pb_test.py': (['reference_saved_model_dir'],
                                 ['saved_model_dir', 'graph', 'inputs', 'seed', 'atol']),
    'optimize_from_ckpt.py': (['checkpoint', 'output_saved_model_dir'],
                              ['saved_model_dir', 'meta_graph', 'version', 'warmup',
                               'checkpoint_object']),
}


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_lists_the_scripts_flags_and_answers_without_tensorflow(script):
  code = ('import runpy, sys\n'
          'sys.argv = [%r, "--help"]\n'
          'try:\n'
          '  runpy.run_path(%r, run_name="__main__")\n'
          'except SystemExit as e:\n'
          '  code = e.code\n'
          'print("EXIT", code, "tensorflow.python" in sys.modules)\n' % (script, script))
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=60, check=False)
  seconds = time.perf_counter() - start
  out = proc.stdout
  assert out.splitlines()[-1] == 'EXIT 0 False', (out[-500:], proc.stderr[-2000:])
  assert seconds < 3, seconds  # no TensorFlow start-up
  required, optional = HELP[script]
  for name in required:
    assert '--%s: (required' % name in out, (name, out)
  for name in optional:
    assert '--' + name in out or '--[no]' + name in out, (name, out)
  assert 'Example' in out and 'python %s' % script in out
  assert '--helpfull' in out and 'xla' not in out.lower()  # absl's and TF's own flags stay out
  footer = ' %s ' % ' '.join(out[out.index('Exit codes:'):].split())
  for exit_code in ('0 success', '1 bad input', '2 usage error', '3 optimize_from_pb_test.py',
                    '130 interrupted'):
    assert ' %s' % exit_code in footer, footer
  # --helpfull adds absl's own flags, and is no error either (absl's own handler exits 1).
  full = subprocess.run([sys.executable, script, '--helpfull'], cwd=REPO, capture_output=True,
                        text=True, timeout=60, check=False)
  assert full.returncode == 0 and '--verbosity' in full.stdout, full.stderr[-2000:]
  assert ('--%s' % required[0]) in full.stdout


@pytest.mark.parametrize('script', SCRIPTS)
@pytest.mark.parametrize('case', ['unknown_flag', 'missing_required', 'stray_argument'])
def test_usage_errors_exit_2_with_one_line(script, case, tmp_path):
  required, _ = HELP[script]
  given = ['--%s=%s' % (name, tmp_path / name) for name in required]
  if case == 'unknown_flag':
    args, fragment = given + ['--no_such_flag=1'], "unknown flag 'no_such_flag'"
  elif case == 'missing_required':
    args, fragment = given[1:], '--%s is required' % required[0]
  else:
    args, fragment = given + ['stray'], "unexpected argument 'stray'"
  proc = run_script(script, *args)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, lines
  assert lines[0].startswith('%s: usage error: ' % script), lines[0]
  assert fragment in lines[0] and lines[0].endswith('see %s --help' % script), lines[0]
  assert not os.listdir(tmp_path)


def test_a_flag_of_another_script_is_refused(tiny_frozen, tmp_path):
  # freezer.py's --keep_as_variables means nothing to optimize_from_pb.py.
  proc = run_script('optimize_from_pb.py', '--input_graph=' + tiny_frozen,
                    '--output_saved_model_dir=%s' % (tmp_path / 'out'),
                    '--keep_as_variables=64MiB')
  assert proc.returncode == 2 and "unknown flag 'keep_as_variables'" in proc.stderr
  assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


def _catches_sigterm(pid):
  """Whether process `pid` has a handler for SIGTERM: the script's first line has run (the
  interpreter's own start-up, before any of the script's code, is not the script's to handle)."""
  try:
    with open('/proc/%d/status' % pid) as f:
      caught = next(l for l in f if l.startswith('SigCgt:')).split()[1]
  except (OSError, StopIteration):
    return True  # no /proc (or the process ended): nothing to wait for
  return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def _interrupted(args, delay, sig):
  """Runs the script, sends `sig` `delay` seconds after its first line ran."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen([sys.executable] + [str(a) for a in args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while not _catches_sigterm(proc.pid) and time.monotonic() < deadline:
    time.sleep(0.002)
  time.sleep(delay)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


# Moments after the script's first line: during imports (TensorFlow's take seconds), while the
# graph is read and checked, while the output is written, and once it is complete.
@pytest.mark.parametrize('sig,delay', [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.5),
                                       (signal.SIGINT, 1.5), (signal.SIGTERM, 3.0),
                                       (signal.SIGINT, 5.0)],
                         ids=['SIGINT-0.0', 'SIGTERM-0.5', 'SIGINT-1.5', 'SIGTERM-3.0',
                              'SIGINT-5.0'])
def test_interrupt_at_any_moment_is_one_line_and_leaves_nothing_half_written(
    tiny_model, tmp_path, sig, delay):
  out = tmp_path / 'frozen.pb'
  before = tree_digest(tiny_model['saved_model'])
  code, _, err = _interrupted(['freezer.py', '--saved_model_dir=' + tiny_model['saved_model'],
                               '--output_graph=%s' % out], delay, sig)
  lines = [l for l in err.splitlines() if l.strip() and not (l[:1] in 'IW' and l[1:5].isdigit())]
  assert 'Traceback' not in err, err[-3000:]
  if code == 0:  # finished before the signal came
    assert out.is_file() and not lines, lines
  else:
    assert code == 130, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith('freezer.py: interrupted: '), lines
    if 'nothing written' in lines[0]:
      assert not out.exists()
    else:
      assert str(out) + ' complete' in lines[0] and out.is_file()
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no temporary left
  assert tree_digest(tiny_model['saved_model']) == before


def test_interrupt_after_the_output_is_complete_says_so(monkeypatch, tmp_path, capsys):
  import utils  # the scripts' own plumbing

  def work():
    with atomic.atomic_output(str(tmp_path / 'out.pb')) as tmp:
      pathlib.Path(tmp).write_bytes(b'x')
    raise KeyboardInterrupt  # as the handler raises it for SIGINT or SIGTERM

  monkeypatch.setattr(signal, 'signal', lambda *a: None)
  assert utils.run_cli('freezer.py', work) == 130
  assert capsys.readouterr().err == (
      'freezer.py: interrupted: %s complete, nothing else written\n' % (tmp_path / 'out.pb'))


def test_an_exception_that_is_not_a_user_error_is_one_line_naming_its_traceback_file(
    monkeypatch, tmp_path, capsys):
  """A bug met mid-write: one line, exit 1, the output's temporary removed, and the traceback
  in the file the line names (and in the log at verbosity 1)."""
  import utils  # the scripts' own plumbing

  def work():
    with atomic.atomic_output(str(tmp_path / 'out.pb')) as tmp:
      pathlib.Path(tmp).write_bytes(b'half')
      {}['missing key']

  monkeypatch.setattr(signal, 'signal', lambda *a: None)
  monkeypatch.setenv('TMPDIR', str(tmp_path / 'traces'))
  (tmp_path / 'traces').mkdir()
  import tempfile
  monkeypatch.setattr(tempfile, 'tempdir', None)  # TMPDIR read again
  assert utils.run_cli('freezer.py', work) == 1
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert len(lines) == 1 and 'Traceback' not in err, err
  assert lines[0].startswith("freezer.py: error: internal error (KeyError: 'missing key'): a "
                             'bug, please report it; its traceback is in '), lines[0]
  trace = pathlib.Path(lines[0].rsplit(' ', 1)[1])
  assert trace.parent == tmp_path / 'traces'
  assert 'Traceback' in trace.read_text() and "{}['missing key']" in trace.read_text()
  assert sorted(os.listdir(tmp_path)) == ['traces']  # no output, no temporary


def test_a_scripts_process_ends_after_its_exit_handlers_with_its_output_flushed():
  """utils.run_cli ends a script's own process without the interpreter's teardown: exit
  handlers still run, buffered output still reaches a pipe, the exit code is kept."""
  code = ('import atexit, sys, utils\n'
          'atexit.register(lambda: sys.stdout.write(" handler"))\n'
          'sys.stdout.write("buffered")\n'
          'utils._end_process(3)\n'
          'sys.stdout.write(" not reached")\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO,
                        env=dict(os.environ, PYTHONUNBUFFERED=''), capture_output=True,
                        text=True, timeout=60, check=False)
  assert (proc.returncode, proc.stdout, proc.stderr) == (3, 'buffered handler', '')


def test_a_scripts_process_waits_for_its_running_threads():
  """While a non-daemon thread runs, the usual exit (which waits for it) is kept."""
  code = ('import threading, time, utils\n'
          'threading.Thread(target=time.sleep, args=(0.3,)).start()\n'
          'utils._end_process(3)\n'
          'print("returned")\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=60, check=False)
  assert (proc.returncode, proc.stdout) == (0, 'returned\n')


# ---------------------------------------------------------------------------------------------
# TF Serving's layout and warmup requests


def test_version_auto_numbers_versions_and_racing_runs_get_different_numbers(tiny_frozen,
                                                                             tmp_path):
  base = tmp_path / 'model'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  cmd = [sys.executable, 'optimize_from_pb.py', '--input_graph=' + tiny_frozen,
         '--output_saved_model_dir=%s' % base, '--version=auto']
  racing = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
  errs = [p.communicate(timeout=300)[1] for p in racing]
  assert [p.returncode for p in racing] == [0, 0, 0], errs
  assert sorted(os.listdir(base)) == ['1', '2', '3']  # no debris, each number once
  for version in ('1', '2', '3'):
    assert (base / version / 'saved_model.pb').is_file()
  proc = run_script('optimize_from_pb.py', '--input_graph=' + tiny_frozen,
                    '--output_saved_model_dir=%s' % base, '--version=2')
  assert proc.returncode == 1 and 'model/2 already exists; pass --overwrite' in proc.stderr
  assert atomic.numeric_versions(str(base)) == [1, 2, 3]


def test_warmup_requests_parse_back_and_run_on_the_saved_model(tiny_frozen, tmp_path):
  base = tmp_path / 'model'
  proc = run_script('optimize_from_pb.py', '--input_graph=' + tiny_frozen,
                    '--output_saved_model_dir=%s' % base, '--version=auto', '--warmup=7')
  assert proc.returncode == 0, proc.stderr[-3000:]
  path = base / '1' / 'assets.extra' / 'tf_serving_warmup_requests'
  records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
             for r in tf.data.TFRecordDataset(str(path))]
  assert len(records) == 7
  signatures = [r.predict_log.request.model_spec.signature_name for r in records]
  assert signatures == ['embeddings', 'serving_default'] * 3 + ['embeddings']
  model = loaders.load_saved_model(str(base / '1'))
  batches = set()
  for record in records:
    request = record.predict_log.request
    feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    assert sorted(feeds) == sorted(model.signatures[request.model_spec.signature_name].inputs)
    outputs = model.run(request.model_spec.signature_name, feeds)
    batches.add(len(next(iter(feeds.values()))))
    assert all(len(v) == len(next(iter(feeds.values()))) for v in outputs.values())
  assert batches == {1, 8, 64}
  model.close()


def test_warmup_out_of_range_is_a_usage_error(tiny_frozen, tmp_path):
  proc = run_script('optimize_from_pb.py', '--input_graph=' + tiny_frozen,
                    '--output_saved_model_dir=%s' % (tmp_path / 'm'), '--warmup=1001')
  assert proc.returncode == 2 and 'warmup' in proc.stderr and not (tmp_path / 'm').exists()


def test_signature_def_keeps_only_those_and_names_the_choices(tiny_frozen, tmp_path):
  proc = run_script('optimize_from_pb.py', '--input_graph=' + tiny_frozen,
                    '--output_saved_model_dir=%s' % (tmp_path / 'one'),
                    '--signature_def=serving_default')
  assert proc.returncode == 0, proc.stderr[-2000:]
  model = loaders.load_saved_model(str(tmp_path / 'one'))
  assert sorted(model.signatures) == ['serving_default']
  model.close()
  proc = run_script('optimize_from_pb.py', '--input_graph=' + tiny_frozen,
                    '--output_saved_model_dir=%s' % (tmp_path / 'none'),
                    '--signature_def=nonexistent')
  assert proc.returncode == 1
  assert "no signature 'nonexistent'; choose --signature_def from: embeddings, serving_default" \
      in proc.stderr
  assert not (tmp_path / 'none').exists()
