r"""What the serving check (--check, on by default) costs a run of the scripts that write
SavedModels: each command with --check and with --nocheck, alternated, wall-time medians and
peak RSS, on the demo model (model_gen.py) and its fake inference graph.

  python benchmarks/serving_check_bench.py --work_dir=/tmp/freezer_check_bench --runs=5
"""

import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import measuring
from freezerlib.core import units

_WORK_DIR = flags.DEFINE_string('work_dir', '/tmp/freezer_check_bench', 'Where models go.')
_RUNS = flags.DEFINE_integer('runs', 5, 'Measured runs of each command.', lower_bound=1)


def _run(*cmd):
  proc = subprocess.run([sys.executable] + list(cmd), cwd=measuring.REPO, capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    raise RuntimeError('%s failed: %s' % (' '.join(cmd), proc.stderr[-2000:]))


def main(argv):
  del argv
  work = _WORK_DIR.value
  model, fake, frozen = [os.path.join(work, n) for n in ('model', 'fake', 'frozen.pb')]
  if not os.path.exists(frozen):
    _run('model_gen.py', '--output_dir=' + model, '--steps=50', '--seed=7')
    _run('model_gen.py', '--output_dir=' + fake, '--fake_infer_graph')
    _run('freezer.py', '--saved_model_dir=%s/saved_model' % model, '--output_graph=' + frozen)
  out = os.path.join(work, 'out')
  measuring.compile_bytecode()
  commands = {
      'optimize_from_ckpt.py (fake graph: no TensorFlow Python API)': [
          'optimize_from_ckpt.py', '--saved_model_dir=%s/saved_model' % fake,
          '--checkpoint=%s/ckpt' % model, '--output_saved_model_dir=' + out, '--overwrite'],
      'optimize_from_pb.py': [
          'optimize_from_pb.py', '--input_graph=' + frozen, '--output_saved_model_dir=' + out,
          '--overwrite'],
  }
  print('machine: %s' % measuring.machine())
  print('%-62s %8s %10s %8s %10s %8s' % ('command', 'check s', 'RSS', 'nocheck', 'RSS',
                                         'delta s'))
  for name, cmd in commands.items():
    times = {'--check': [], '--nocheck': []}
    rss = {'--check': [], '--nocheck': []}
    for _ in range(_RUNS.value):
      for flag in ('--check', '--nocheck'):  # alternated: the machine's drift hits both
        wall, peak = measuring.measure([sys.executable] + cmd + [flag])
        times[flag].append(wall)
        rss[flag].append(peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    print('%-62s %8.2f %10s %8.2f %10s %+8.2f' % (
        name, med['--check'], units.human_bytes(max(rss['--check'])), med['--nocheck'],
        units.human_bytes(max(rss['--nocheck'])), med['--check'] - med['--nocheck']))


if __name__ == '__main__':
  app.run(main)
