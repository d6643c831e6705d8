"""What the benchmarks share: how a command is measured, the machine it ran on, and the setup
that keeps a measured run from compiling bytecode.

Imported by benchmark.py and tf2_checkpoint_bench.py (as `benchmarks.measuring`, with the
repository on sys.path). No TensorFlow, no flags.
"""

import compileall
import os
import subprocess
import sys

from freezerlib.core import units

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Linux keeps a process's peak RSS across fork and exec, so a child of a process that has
# TensorFlow loaded would start from that process's peak. Each command is therefore started by
# a fresh, small Python that reports the child's wall time and ru_maxrss from wait4.
_MEASURE = r"""
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
if os.waitstatus_to_exitcode(status):
  sys.stderr.buffer.write(err[-2000:])
  sys.exit(1)
print(wall, usage.ru_maxrss * 1024)
"""


def measure(cmd):
  """(wall seconds, peak RSS bytes) of `cmd`, run from the repository through a small
  measuring parent.

  Raises:
    RuntimeError: the command failed (with the end of its stderr).
  """
  proc = subprocess.run([sys.executable, '-S', '-c', _MEASURE] + cmd, cwd=REPO,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError('%s failed: %s' % (' '.join(cmd), proc.stderr))
  wall, rss = proc.stdout.split()
  return float(wall), int(rss)


def evict(path):
  """Drops a directory's files from the page cache (posix_fadvise DONTNEED; no root needed),
  so the next reader goes to the disk, as after training on another machine."""
  os.sync()
  for root, _, files in os.walk(path):
    for name in files:
      fd = os.open(os.path.join(root, name), os.O_RDONLY)
      try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      finally:
        os.close(fd)


def dir_bytes(path):
  """Bytes of the files under `path`."""
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


def compile_bytecode():
  """Writes the __pycache__ of the scripts and freezerlib, as an installed copy has it, so that
  no measured run compiles them (py_compile writes it whatever PYTHONDONTWRITEBYTECODE says)."""
  compileall.compile_dir(os.path.join(REPO, 'freezerlib'), quiet=1)
  for name in os.listdir(REPO):
    if name.endswith('.py'):
      compileall.compile_file(os.path.join(REPO, name), quiet=1)


def machine():
  """'N cores (CPU model), RAM; load average' of this machine, for the report's header."""
  model = ''
  try:
    with open('/proc/cpuinfo') as f:
      model = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), '')
  except OSError:
    pass
  memory = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return '%d cores (%s), %s RAM; load average %.1f (other processes share the machine)' % (
      os.cpu_count(), model or 'unknown CPU', units.human_bytes(memory), os.getloadavg()[0])
