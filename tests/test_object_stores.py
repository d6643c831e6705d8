"""s3:// and gs:// against real servers the suite starts: moto's S3 server and fake-gcs-server.

Every script end to end on each store, the checkpoint path from a sharded checkpoint with
optimizer slots on s3:// into s3://, a flipped byte found by the checksum, a run killed during
an upload, and each bad remote input as one line.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import storage_servers

from conftest import REPO
from conftest import TINY_FLAGS
from conftest import assert_one_line_error
from conftest import run_main_as_process
from freezerlib.core import atomic
from freezerlib.core import files
from freezerlib.core import object_store

BUCKET = 'models'


@pytest.fixture(scope='module')
def servers():
  """{'s3': Server, 'gs': Server}, each with BUCKET made; stopped after the module."""
  started = {}
  try:
    started['s3'] = storage_servers.start_moto([BUCKET])
    started['gs'] = storage_servers.start_fake_gcs([BUCKET])
    yield started
  finally:
    for server in started.values():
      server.stop()


@pytest.fixture
def stores(servers, monkeypatch):
  """The servers' environment in this process (files reach them), and a root per store."""
  for server in servers.values():
    for key, value in server.env.items():
      monkeypatch.setenv(key, value)
  object_store.reset()
  yield {'s3': 's3://%s' % BUCKET, 'gs': 'gs://%s' % BUCKET}
  object_store.reset()


def _env(servers, tmpdir=None, **extra):
  """The servers' environment for a script; with `tmpdir`, its scratch space (to check that
  nothing is left there)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if tmpdir is not None:
    os.makedirs(tmpdir, exist_ok=True)
    env['TMPDIR'] = str(tmpdir)
  for server in servers.values():
    env.update(server.env)
  env.update(extra)
  return env


def _run(script, args, env, timeout=120):
  return subprocess.run([sys.executable, script] + [str(a) for a in args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _unique(root, name):
  return '%s/%s-%s' % (root, name, os.urandom(3).hex())


@pytest.mark.parametrize('store', ['s3', 'gs'])
def test_every_script_end_to_end(store, stores, capsys):
  """model_gen -> freezer (a variable kept) -> optimize_from_pb -> optimize_from_pb_test (the
  SavedModel on the training data's records, and the optimized graph with its checkpoint), and
  the checkpoint path, every input and output on the store; the comparator passes on the
  store's models."""
  import freezer
  import model_gen
  import optimize_from_ckpt
  import optimize_from_pb
  import optimize_from_pb_test
  root = _unique(stores[store], 'e2e')
  steps = [
      (model_gen, ['--output_dir=%s/model' % root, '--steps=5'] +
       [f for f in TINY_FLAGS if not f.startswith('--steps')]),
      (freezer, ['--saved_model_dir=%s/model/saved_model' % root,
                 '--output_graph=%s/frozen.pb' % root, '--keep_as_variables=item_embedding']),
      (optimize_from_pb, ['--input_graph=%s/frozen.pb' % root,
                          '--output_saved_model_dir=%s/serving' % root, '--version=auto',
                          '--output_graph=%s/optimized.pb' % root]),
      (optimize_from_pb_test, ['--graph=%s/optimized.pb' % root,
                               '--reference_saved_model_dir=%s/model/saved_model' % root,
                               '--num_examples=16', '--batch_sizes=0']),
      (optimize_from_pb_test, ['--saved_model_dir=%s/serving/1' % root,
                               '--reference_saved_model_dir=%s/model/saved_model' % root,
                               '--inputs=%s/model/data/*.tfrecord' % root,
                               '--num_examples=16', '--batch_sizes=0']),
      (optimize_from_ckpt, ['--saved_model_dir=%s/model/saved_model' % root,
                            '--checkpoint=%s/model/ckpt' % root,
                            '--output_saved_model_dir=%s/from_ckpt' % root]),
      (optimize_from_pb_test, ['--saved_model_dir=%s/from_ckpt' % root,
                               '--reference_saved_model_dir=%s/model/saved_model' % root,
                               '--num_examples=16', '--batch_sizes=0']),
  ]
  for module, args in steps:
    proc = run_main_as_process(module, args, capsys)
    assert proc.returncode == 0, (module.__name__, proc.stderr[-3000:])
  assert files.exists(root + '/serving/1/saved_model.pb')
  assert files.exists(root + '/optimized.pb.variables/variables.index')
  assert files.exists(root + '/from_ckpt/variables/variables.index')
  # No dot-name or marker left on the store, and no scratch directory of this process.
  names = [n for _, _, fs in files.walk(root) for n in fs]
  assert not [n for n in names if n.startswith('.')], names
  assert not [d for d in os.listdir(os.environ.get('TMPDIR', '/tmp'))
              if d.startswith('freezer-scratch-%d-' % os.getpid())]


def _upload(local_dir, remote_dir):
  files.copy_tree(local_dir, remote_dir)


def test_checkpoint_path_from_s3_into_s3_matches_the_local_run(
    cluster_model, fake_graph, stores, servers, tmp_path):
  """A 2-PS checkpoint with Adam slots (two data shards) read from s3:// with ranged reads,
  written to s3://: the same variables as the local run, and a progress line with its rate."""
  root = _unique(stores['s3'], 'ckpt')
  ckpt_dir = os.path.dirname(cluster_model['checkpoint'])
  _upload(ckpt_dir, root + '/ckpt')
  _upload(fake_graph, root + '/fake')
  local_out = tmp_path / 'local'
  proc = _run('optimize_from_ckpt.py', ['--saved_model_dir=%s' % fake_graph,
                                        '--checkpoint=%s' % cluster_model['checkpoint'],
                                        '--output_saved_model_dir=%s' % local_out],
              _env(servers))
  assert proc.returncode == 0, proc.stderr[-3000:]
  prefix = '%s/ckpt/%s' % (root, os.path.basename(cluster_model['checkpoint']))
  proc = _run('optimize_from_ckpt.py', ['--saved_model_dir=%s/fake' % root,
                                        '--checkpoint=%s' % prefix,
                                        '--output_saved_model_dir=%s/serving' % root,
                                        '--version=auto'], _env(servers, tmp_path / 'tmp'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not os.listdir(tmp_path / 'tmp')  # the local scratch output removed after upload
  assert 'data-00001-of-00002' in ' '.join(files.listdir(root + '/ckpt'))
  assert 'copying tensors:' in proc.stderr and '/s' in proc.stderr
  # The exported tensors are the local run's: same index records, same bytes per tensor.
  from freezerlib.formats import checkpoint_index
  remote = checkpoint_index.read_index(root + '/serving/1/variables/variables')
  local = checkpoint_index.read_index(str(local_out / 'variables' / 'variables'))
  assert sorted(remote.entries) == sorted(local.entries)
  assert not any('Adam' in name for name in remote.entries)
  for name in local.entries:
    for (key, a), (_, b) in zip(local.records(name), remote.records(name)):
      assert (a.crc32c, a.size, a.dtype) == (b.crc32c, b.size, b.dtype), key
  assert files.read(root + '/serving/1/saved_model.pb') == (
      local_out / 'saved_model.pb').read_bytes()


def test_flipped_byte_in_a_remote_shard_is_found(cluster_model, fake_graph, stores, servers,
                                                 tmp_path):
  root = _unique(stores['s3'], 'flip')
  ckpt_dir = os.path.dirname(cluster_model['checkpoint'])
  _upload(ckpt_dir, root + '/ckpt')
  name = os.path.basename(cluster_model['checkpoint'])
  from freezerlib.formats import checkpoint_index
  index = checkpoint_index.read_index(cluster_model['checkpoint'])
  entry = index.entries['item_embedding/part_0'] if 'item_embedding/part_0' in index.entries \
      else next(e for n, e in index.entries.items() if 'Adam' not in n and e.size > 8)
  shard = '%s.data-%05d-of-%05d' % (name, entry.shard_id, index.num_shards)
  data = bytearray(files.read('%s/%s' % (ckpt_dir, shard)))
  data[entry.offset + entry.size // 2] ^= 0x01
  files.write('%s/ckpt/%s' % (root, shard), bytes(data))
  proc = _run('optimize_from_ckpt.py', ['--saved_model_dir=%s' % fake_graph,
                                        '--checkpoint=%s/ckpt/%s' % (root, name),
                                        '--output_saved_model_dir=%s/out' % root],
              _env(servers, tmp_path / 'tmp'))
  assert_one_line_error(proc, 'optimize_from_ckpt.py', 'corrupt', shard)
  assert not files.exists(root + '/out')
  assert not os.listdir(tmp_path / 'tmp')  # the local scratch output removed


_KILLED_UPLOAD = r'''
import os, signal, sys
sys.path.insert(0, %(repo)r)
from freezerlib.core import atomic, files
real_copy = files.copy
def copy(src, dst, overwrite=False):
  real_copy(src, dst, overwrite)
  if dst.endswith('variables.index'):
    os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of the upload
files.copy = copy
with atomic.versioned_output(%(base)r, 'auto') as out:
  os.makedirs(os.path.join(out.tmp, 'variables'))
  for name in ('variables/variables.data-00000-of-00001', 'variables/variables.index',
               'saved_model.pb'):
    with open(os.path.join(out.tmp, name), 'wb') as f:
      f.write(b'x' * 100)
'''


def test_killed_upload_leaves_nothing_tf_serving_loads(stores, servers):
  """SIGKILL after the variables are uploaded, before saved_model.pb: the version directory
  has no saved_model.pb; the next run removes it and takes its number."""
  base = _unique(stores['s3'], 'killed')
  proc = subprocess.run([sys.executable, '-c', _KILLED_UPLOAD % {'repo': str(REPO),
                                                                  'base': base}],
                        env=_env(servers), capture_output=True, text=True, timeout=60,
                        check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  names = files.listdir(base + '/1')
  assert 'saved_model.pb' not in names and any(n.startswith('.freezer-incomplete-')
                                               for n in names), names
  with atomic.versioned_output(base, 'auto') as out:
    files.makedirs(out.tmp)
    files.write(files.join(out.tmp, 'saved_model.pb'), b'new')
  assert out.path == base + '/1'
  assert sorted(files.listdir(base + '/1')) == ['saved_model.pb']


def _checkpoint_args(root, checkpoint):
  return ['--saved_model_dir=%s/fake' % root, '--checkpoint=%s' % checkpoint,
          '--output_saved_model_dir=%s/out' % root]


@pytest.mark.parametrize('case', ['missing_key', 'missing_bucket', 'missing_output_bucket',
                                  'unreachable', 'gs_unreachable'])
def test_bad_remote_input_is_one_line_in_seconds(case, fake_graph, tiny_model, stores, servers,
                                                 tmp_path):
  root = _unique(stores['s3'], 'bad')
  _upload(fake_graph, root + '/fake')
  env = _env(servers, tmp_path / 'tmp')
  checkpoint = root + '/ckpt/model.ckpt-30'
  expected = [checkpoint]
  if case == 'missing_bucket':
    args = ['--saved_model_dir=s3://no-such-bucket/fake', '--checkpoint=%s' % checkpoint,
            '--output_saved_model_dir=%s/out' % root]
    expected = ['s3://no-such-bucket/fake', 'bucket']
  elif case == 'missing_output_bucket':  # good local inputs, the output's bucket missing
    args = ['--saved_model_dir=%s' % tiny_model['saved_model'],
            '--checkpoint=%s' % tiny_model['checkpoint'],
            '--output_saved_model_dir=s3://no-such-bucket/out']
    expected = ['s3://no-such-bucket/out', 'bucket']
  elif case == 'unreachable':
    env['AWS_ENDPOINT_URL'] = 'http://127.0.0.1:%d' % storage_servers.free_port()
    args = _checkpoint_args(root, checkpoint)
    expected = [root + '/fake', 'cannot reach']
  elif case == 'gs_unreachable':
    env['STORAGE_EMULATOR_HOST'] = 'http://127.0.0.1:%d' % storage_servers.free_port()
    args = ['--saved_model_dir=gs://%s/fake' % BUCKET, '--checkpoint=%s' % checkpoint,
            '--output_saved_model_dir=%s/out' % root]
    expected = ['gs://%s/fake' % BUCKET, 'cannot reach']
  else:
    args = _checkpoint_args(root, checkpoint)
  start = time.monotonic()
  proc = _run('optimize_from_ckpt.py', args, env)
  seconds = time.monotonic() - start
  assert_one_line_error(proc, 'optimize_from_ckpt.py', *expected)
  assert seconds < 20, seconds
  assert not files.exists(root + '/out')
  assert not os.listdir(tmp_path / 'tmp')


def test_wrong_credentials_are_one_line(fake_graph, tmp_path):
  """A store that checks credentials (moto with authentication on) refuses unknown keys."""
  server = storage_servers.start_moto(authenticate=True)
  try:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **server.env)
    env['AWS_ACCESS_KEY_ID'] = 'AKIAWRONGWRONGWRONG1'
    proc = _run('optimize_from_ckpt.py', ['--saved_model_dir=%s' % fake_graph,
                                          '--checkpoint=s3://%s/ckpt/model.ckpt-30' % BUCKET,
                                          '--output_saved_model_dir=%s' % (tmp_path / 'out')],
                env)
    assert_one_line_error(proc, 'optimize_from_ckpt.py', 's3://%s/ckpt' % BUCKET,
                          'access denied')
    assert not (tmp_path / 'out').exists()
  finally:
    server.stop()


def test_hdfs_without_a_hadoop_client_says_what_is_missing(monkeypatch):
  monkeypatch.delenv('JAVA_HOME', raising=False)
  monkeypatch.setenv('ARROW_LIBHDFS_DIR', '/nonexistent')
  object_store.reset()
  try:
    with pytest.raises(files.FileError) as raised:
      files.exists('hdfs://namenode:8020/models/m')
  finally:
    object_store.reset()
  message = str(raised.value)
  assert '\n' not in message
  assert message.startswith('hdfs://namenode:8020 needs a Hadoop client'), message
  assert 'JAVA_HOME' in message or 'libhdfs' in message


def test_ctrl_c_removes_the_scratch_copy(tiny_model, stores, servers, tmp_path):
  """SIGINT while a remote SavedModel is staged for TensorFlow: exit 130, no scratch left."""
  root = _unique(stores['s3'], 'sigint')
  _upload(tiny_model['saved_model'], root + '/model/saved_model')
  scratch = tmp_path / 'tmp'
  task = subprocess.Popen(
      [sys.executable, 'freezer.py', '--saved_model_dir=%s/model/saved_model' % root,
       '--output_graph=%s/frozen.pb' % root], cwd=REPO, env=_env(servers, scratch),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 60
  while not any(n.startswith('freezer-scratch-') for n in os.listdir(scratch)):
    assert task.poll() is None and time.monotonic() < deadline, task.communicate()
    time.sleep(0.005)
  task.send_signal(signal.SIGINT)
  _, stderr = task.communicate(timeout=60)
  assert task.returncode == 130, stderr[-2000:]
  assert 'interrupted' in stderr
  assert not os.listdir(scratch)
  assert not files.exists(root + '/frozen.pb')
