"""SIGKILL at many moments: the output is absent or complete, inputs unchanged, re-runs work.

Each script is started as the README runs it and killed at a moment named by what it has just
logged (so the moment is the same on a fast or a slow machine), or as soon as its temporary
output appears beside the target (mid-write). (A signal during start-up, before anything is
written, is test_cli.py's interrupt test's first moment.)
"""

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.verify import loaders


def _run_and_kill(args, moment, parent, base, timeout=120):
  """Runs `python args`, SIGKILLs it at `moment`; returns what it had logged and whether it
  was still running when killed."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen([sys.executable] + args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(l) for l in proc.stderr], daemon=True).start()
  start, log = time.monotonic(), []
  kind, value = moment[:2]
  killed = False
  while proc.poll() is None and time.monotonic() - start < timeout:
    try:
      log.append(lines.get(timeout=0.001))
    except queue.Empty:
      pass
    hit = ((kind == 'log' and any(value in l for l in log)) or
           (kind == 'temp' and any(n.startswith('.%s.tmp-' % base) for n in os.listdir(parent))))
    if hit:
      proc.send_signal(signal.SIGKILL)
      killed = True
      break
  proc.wait()
  return log, killed and proc.returncode == -signal.SIGKILL


def _debris(parent, base):
  return [n for n in os.listdir(parent) if n.startswith(('.%s.tmp-' % base,
                                                         '.%s.variables.tmp-' % base))]


# A moment marked 'may end' is logged so near the end of a run this small that the run can
# rename its output and end before the kill lands (the scripts end without the interpreter's
# teardown): its output is then complete, which is checked; the 'temp' moments kill mid-write.
MOMENTS = {
    'freezer': [('log', 'not run by the signatures'),
                ('log', 'keys from the checkpoint', 'may end'),
                ('temp', None)],
    # --keep_as_variables: killed while the kept tensors are copied (the checkpoint's temporary
    # directory appears first), and once they are.
    'freezer_keep': [('temp', None), ('log', 'kept 4 variables and tables as state', 'may end')],
    'optimize_from_pb': [('log', 'nodes:'), ('log', 'before    after'),
                         ('temp', None)],
    # Without TensorFlow the whole run takes about 0.1 s: both log lines come a few ms before
    # its end ('copying tensors' when the copy is done).
    'optimize_from_ckpt': [('log', 'serving graph:', 'may end'),
                           ('log', 'copying tensors', 'may end'), ('temp', None)],
}
CASES = [(script, i) for script, moments in MOMENTS.items() for i in range(len(moments))]


def _command(script, tiny_model, tiny_frozen, out):
  if script == 'freezer':
    return ['freezer.py', '--saved_model_dir=' + tiny_model['saved_model'],
            '--output_graph=' + out], tiny_model['saved_model']
  if script == 'freezer_keep':
    return ['freezer.py', '--saved_model_dir=' + tiny_model['saved_model'],
            '--output_graph=' + out, '--keep_as_variables=item_embedding,user_stats'], \
        tiny_model['saved_model']
  if script == 'optimize_from_pb':
    return ['optimize_from_pb.py', '--input_graph=' + tiny_frozen,
            '--output_saved_model_dir=' + out], tiny_frozen
  ckpt = tiny_model['checkpoint'].rsplit('/', 1)[0]
  return ['optimize_from_ckpt.py', '--saved_model_dir=' + tiny_model['saved_model'],
          '--checkpoint=' + ckpt, '--output_saved_model_dir=' + out], ckpt


def _loads(script, out):
  if script.startswith('freezer'):
    frozen = frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(out), out)
    return loaders.load_frozen_graph(out, frozen).nodes
  return loaders.load_saved_model(out).nodes


@pytest.mark.parametrize('script,moment', CASES, ids=['%s-%d' % c for c in CASES])
def test_sigkill(script, moment, tiny_model, tiny_frozen, tmp_path):
  killed = _kill_and_check(script, moment, tiny_model, tiny_frozen, tmp_path)
  kind = MOMENTS[script][moment][0]
  if kind != 'temp' and 'may end' not in MOMENTS[script][moment]:
    # Log-line moments come before the output is renamed into place.
    assert killed


def _kill_and_check(script, moment, tiny_model, tiny_frozen, tmp_path):
  out = str(tmp_path / ('out.pb' if script.startswith('freezer') else 'out'))
  args, source = _command(script, tiny_model, tiny_frozen, out)
  digest = tree_digest(source)
  # The checkpoint beside the graph is written first: its temporary is what appears first.
  base = pathlib.Path(out).name + ('.variables' if script == 'freezer_keep' else '')
  log, killed = _run_and_kill(args, MOMENTS[script][moment], str(tmp_path), base)
  assert tree_digest(source) == digest
  if os.path.exists(out):
    assert _loads(script, out) > 0  # complete: killed after the rename
  else:
    assert killed, log[-5:]
  # A re-run without --overwrite is not bothered by what the killed run left (run in-process:
  # the command line itself is exercised above and in each script's tests).
  if not os.path.exists(out):
    _rerun(script, tiny_model, tiny_frozen, out)
    assert _loads(script, out) > 0
  assert _debris(str(tmp_path), pathlib.Path(out).name) == []
  return killed


def _rerun(script, tiny_model, tiny_frozen, out):
  if script == 'freezer':
    freeze.graph_from_saved_model(tiny_model['saved_model'], out)
  elif script == 'freezer_keep':
    freeze.graph_from_saved_model(tiny_model['saved_model'], out,
                   keep_as_variables='item_embedding,user_stats')
  elif script == 'optimize_from_pb':
    from_frozen.saved_model_from_frozen_graph(tiny_frozen, output_saved_model_dir=out)
  else:
    from_checkpoint.saved_model_from_checkpoint(checkpoint=tiny_model['checkpoint'], output_dir=out,
                             saved_model_dir=tiny_model['saved_model'])
