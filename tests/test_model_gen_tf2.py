"""model_gen.py --api=tf2: a real ParameterServerStrategy cluster on loopback, its checkpoint, and
the structure (--fake_infer_graph) that checkpoint restores into."""

import contextlib
import io
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf
from test_model_gen_distributed import _cluster_processes

import capi_runner
from conftest import REPO
from conftest import TINY
from conftest import TINY_FLAGS
from conftest import run_script
from freezerlib.core import errors
from freezerlib.demo import cluster
from freezerlib.demo import recsys_model
from freezerlib.formats import checkpoint_index as checkpoints
from freezerlib.verify import loaders
import model_gen  # the script whose command line this file tests, in-process

NUM_PS = 2
CKPT = 'ckpt-%d' % TINY.steps


def _main(*flag_args):
  """model_gen.main in this process with the given flags: (exit code, printed output)."""
  out = io.StringIO()
  with flagsaver.flagsaver(), contextlib.redirect_stdout(out):
    for arg in flag_args:
      name, value = arg[2:].split('=', 1) if '=' in arg else (arg[2:], 'true')
      flags.FLAGS[name].parse(value)
    code = model_gen.main(['model_gen.py'])
  return code, out.getvalue()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The module docstring's TF2 cluster command at TINY size (2 PS, 1 worker, a coordinator),
  through model_gen.main in this process; every task is a process of its own."""
  root = tmp_path_factory.mktemp('tf2_cluster')
  code, printed = _main('--api=tf2', '--output_dir=%s' % (root / 'model'),
                        '--num_ps=%d' % NUM_PS, '--num_workers=1', *TINY_FLAGS)
  assert code == 0
  model = root / 'model'
  return {'root': root, 'stdout': printed, 'saved_model': str(model / 'saved_model'),
          'checkpoint': str(model / 'ckpt' / CKPT)}


@pytest.fixture(scope='module')
def structure(tmp_path_factory):
  """--api=tf2 --fake_infer_graph for the same cluster: path of its SavedModel."""
  out = tmp_path_factory.mktemp('tf2_fake') / 'fake'
  code, printed = _main('--api=tf2', '--fake_infer_graph', '--num_ps=%d' % NUM_PS,
                        '--output_dir=%s' % out, *TINY_FLAGS)
  assert code == 0
  assert printed.strip() == str(out / 'saved_model')
  assert sorted(os.listdir(out)) == ['saved_model']
  return str(out / 'saved_model')


def _shapes(checkpoint):
  return {name: [d.size for d in entry.shape.dim] for name, entry in checkpoint.entries.items()}


def test_cluster_trains_and_leaves_no_process(trained):
  root = trained['root']
  assert trained['stdout'].strip() == trained['saved_model']
  assert sorted(os.listdir(root)) == ['model']  # no temporary output, no logs kept
  assert sorted(os.listdir(root / 'model')) == ['ckpt', 'data', 'saved_model']
  assert _cluster_processes(str(root)) == []
  # CheckpointManager(max_to_keep=1): relative paths; a data file per PS task + the coordinator.
  ckpt_dir = root / 'model' / 'ckpt'
  assert sorted(os.listdir(ckpt_dir)) == ['checkpoint'] + [
      '%s.data-%05d-of-00003' % (CKPT, k) for k in range(3)] + ['%s.index' % CKPT]
  assert 'model_checkpoint_path: "%s"\n' % CKPT in (ckpt_dir / 'checkpoint').read_text()
  assert tf.train.latest_checkpoint(str(ckpt_dir)) == trained['checkpoint']


def test_checkpoint_keys_shards_and_tables(trained):
  index = checkpoints.read_index(trained['checkpoint'])
  shapes = _shapes(index)
  # The sharded embedding is one logical tensor in 3 slices ("div": rows 0-19, 20-39, 40-59),
  # each stored by the PS task holding it (round-robin: tasks 0, 1, 0; data file 0 is the
  # coordinator's).
  emb = 'model/item_embedding/.ATTRIBUTES/VARIABLE_VALUE'
  assert shapes[emb] == [TINY.item_buckets, TINY.embedding_dim]
  assert checkpoints.slices_of(index, emb) == [((0, 20), (0, 4)), ((20, 20), (0, 4)),
                                               ((40, 20), (0, 4))]
  assert [entry.shard_id for _, entry in sorted(index.slices[emb])] == [1, 2, 1]
  assert not [n for n in shapes if 'part_' in n]
  # Each table is one MutableHashTable per PS task, holding the ids routed to it.
  reader = tf.train.load_checkpoint(trained['checkpoint'])
  table = 'model/%s/shard_%d/.ATTRIBUTES/table-%s'
  users, impressions = [], 0.0
  for k in range(NUM_PS):
    keys, values = (reader.get_tensor(table % ('user_stats', k, 'keys')),
                    reader.get_tensor(table % ('user_stats', k, 'values')))
    assert keys.dtype == np.int64 and values.shape == (len(keys), recsys_model.STATS_DIM)
    assert len(keys) and np.all(keys % NUM_PS == k), (k, keys[:10])
    assert index.entries[table % ('user_stats', k, 'keys')].shard_id == k + 1
    users += list(keys)
    impressions += values[:, 0].sum()
    categories = reader.get_tensor(table % ('category_stats', k, 'keys'))
    routed = tf.strings.to_hash_bucket_fast(categories, NUM_PS).numpy()
    assert len(categories) and np.all(routed == k), (k, categories, routed)
  assert len(set(users)) == len(users) > 50
  assert set(users) <= set(recsys_model.generate_examples(TINY)['user_id'])
  # One worker: each step counted each example of its batch once, in exactly one shard.
  assert impressions == pytest.approx(TINY.steps * TINY.batch_size)
  assert reader.get_tensor('optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == TINY.steps
  assert [n for n in shapes if n.startswith('model/hidden_0/')] == [
      'model/hidden_0/bias/.ATTRIBUTES/VARIABLE_VALUE',
      'model/hidden_0/kernel/.ATTRIBUTES/VARIABLE_VALUE']


def test_structure_mirrors_the_trained_model(trained, structure):
  fake = checkpoints.read_index(structure + '/variables/variables')
  reference = checkpoints.read_index(trained['saved_model'] + '/variables/variables')
  training = _shapes(checkpoints.read_index(trained['checkpoint']))
  # Same keys and shapes as the trained model's own SavedModel; tables empty.
  assert sorted(fake.entries) == sorted(reference.entries)
  emb = 'item_embedding/.ATTRIBUTES/VARIABLE_VALUE'
  assert checkpoints.slices_of(fake, emb) == checkpoints.slices_of(reference, emb)
  for name, shape in _shapes(fake).items():
    if name == '_CHECKPOINTABLE_OBJECT_GRAPH':
      continue
    assert 'model/' + name in training, name
    if '/table-' in name:
      assert shape[0] == 0, name
    else:
      assert training['model/' + name] == shape, name
  assert not [n for n in fake.entries if 'optimizer' in n or 'save_counter' in n]


def _feeds(checkpoint):
  """Half the user ids from the trained tables, half never seen; categories the same way."""
  reader = tf.train.load_checkpoint(checkpoint)
  seen = [reader.get_tensor('model/user_stats/shard_%d/.ATTRIBUTES/table-keys' % k)[:8]
          for k in range(NUM_PS)]
  users = np.concatenate(seen + [np.arange(16, dtype=np.int64) * 7919 + 3])
  n = len(users)
  rng = np.random.RandomState(0)
  categories = recsys_model.category_names(TINY)
  return {'user_id': users, 'item_id': rng.randint(0, 10**6, n).astype(np.int64),
          'category': np.concatenate([categories[rng.randint(0, len(categories), n // 2)],
                                      [b'unseen_%d' % i for i in range(n - n // 2)]]),
          'dense': rng.normal(size=(n, TINY.num_dense)).astype(np.float32)}


def _run(loaded, feeds):
  embeddings = {k: feeds[k] for k in ('item_id', 'user_id')}
  out = {}
  for key, inputs in (('serving_default', feeds), ('embeddings', embeddings)):
    result = loaded.signatures[key](**{k: tf.constant(v) for k, v in inputs.items()})
    out.update({'%s/%s' % (key, k): v.numpy() for k, v in result.items()})
  return out


def test_checkpoint_restores_into_the_structure(trained, structure):
  feeds = _feeds(trained['checkpoint'])
  expected = _run(tf.saved_model.load(trained['saved_model']), feeds)
  assert sorted(expected) == ['embeddings/item_embedding', 'embeddings/user_stats',
                              'serving_default/logit', 'serving_default/probability']
  model = tf.saved_model.load(structure)
  before = _run(model, feeds)
  assert np.abs(before['serving_default/logit'] - expected['serving_default/logit']).max() > 1e-3
  tf.train.Checkpoint(model=model).read(trained['checkpoint']).expect_partial()
  got = _run(model, feeds)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6, err_msg=name)
  stats = got['embeddings/user_stats']
  assert np.all(stats[:16, 0] > 0) and np.all(stats[16:] == 0)  # trained ids, then unseen


def test_cluster_checkpoint_becomes_a_serving_saved_model_equal_to_the_trained_model(
    trained, structure, tmp_path, capi):
  """README step 6 on the cluster's output: its fake structure + its tf.train.Checkpoint through
  optimize_from_ckpt.py (no TensorFlow in that process); the result answers as the trained
  model, through tf.saved_model.load, the TF1 loader and the C API."""
  serving = tmp_path / 'serving'
  proc = run_script('optimize_from_ckpt.py', '--saved_model_dir=' + structure,
                    '--checkpoint=' + str(pathlib.Path(trained['checkpoint']).parent),
                    '--output_saved_model_dir=%s' % serving)
  assert proc.returncode == 0, proc.stderr[-3000:]
  feeds = _feeds(trained['checkpoint'])
  expected = _run(tf.saved_model.load(trained['saved_model']), feeds)
  for name, value in _run(tf.saved_model.load(str(serving)), feeds).items():
    np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6, err_msg=name)
  by_signature = {'serving_default': feeds,
                  'embeddings': {k: feeds[k] for k in ('item_id', 'user_id')}}
  tf1_model = loaders.load_saved_model(str(serving))
  for key, inputs in by_signature.items():
    for out_key, value in tf1_model.run(key, inputs).items():
      np.testing.assert_allclose(value, expected['%s/%s' % (key, out_key)], rtol=0, atol=1e-6)
  tf1_model.close()
  served = capi_runner.run_signatures(capi, str(serving), by_signature)
  for key, outputs in served.items():
    for out_key, value in outputs.items():
      np.testing.assert_allclose(value, expected['%s/%s' % (key, out_key)], rtol=0, atol=1e-6)
  # Only the model's tensors: the Adam slots and the optimizer's second copy of the embedding
  # stay behind.
  exported = checkpoints.read_index(str(serving / 'variables' / 'variables'))
  assert not [n for n in exported.entries if n.startswith('optimizer/')]


def test_killed_ps_task_stops_the_cluster(tmp_path, monkeypatch, capsys):
  """The PS task killed once the coordinator has connected: one error line, nothing left."""
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # the launcher's logs go here
  killed = []

  def kill_ps_when_training():
    deadline = time.monotonic() + 40
    while not killed and time.monotonic() < deadline:
      logs = list(tmp_path.glob('model_gen_cluster_*/chief-0.log'))
      if logs and 'chief: connected' in logs[0].read_text():
        killed.extend(pid for pid, args in _cluster_processes(str(tmp_path))
                      if '--job_name=ps --task_index=0' in args)
        for pid in killed:
          os.kill(pid, signal.SIGKILL)
      time.sleep(0.05)

  killer = threading.Thread(target=kill_ps_when_training, daemon=True)
  killer.start()
  start = time.monotonic()
  code, _ = _main('--api=tf2', '--output_dir=%s' % (tmp_path / 'model'), '--num_ps=1',
                  '--num_workers=1', '--cluster_timeout_secs=60',
                  *[f for f in TINY_FLAGS if not f.startswith('--steps=')], '--steps=100000')
  killer.join()
  assert killed, 'the coordinator never connected'
  assert code == 1 and time.monotonic() - start < 45
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  lines = [l for l in err.splitlines() if l.startswith('model_gen.py: ')]
  assert len(lines) == 1, err[-3000:]
  assert lines[0].startswith('model_gen.py: error: ps 0 was killed by SIGKILL: '), lines
  assert 'all tasks stopped; logs in %s' % tmp_path in lines[0], lines
  assert _cluster_processes(str(tmp_path)) == []
  assert [p.name for p in tmp_path.iterdir() if not p.name.startswith('model_gen_cluster_')] == []


@pytest.mark.parametrize('flag_values, fragment', [
    (dict(api='tf2', num_ps=0), '--api=tf2 trains on a parameter-server cluster only'),
    (dict(api='tf2', fake_infer_graph=True), "mirrors a cluster's model: give its --num_ps"),
    (dict(api='tf2', job_name='ps', ps_hosts=['h:1'], worker_hosts=['h:2']),
     '--api=tf2 --job_name needs --chief_host'),
    (dict(api='tf2', num_ps=2, chief_host='h:3'), '--chief_host joins a cluster'),
    (dict(job_name='chief'), '--job_name=chief is the coordinator of an --api=tf2 cluster'),
    (dict(chief_host='h:3'), '--chief_host is for --api=tf2'),
], ids=['tf2_without_cluster', 'fake_without_num_ps', 'join_without_chief_host',
        'chief_host_with_num_ps', 'chief_in_tf1', 'chief_host_in_tf1'])
def test_flag_rules(flag_values, fragment):
  with flagsaver.flagsaver(**flag_values):
    with pytest.raises(errors.UserError, match=re.escape(fragment)):
      model_gen._check_api_flags()


def test_flag_rule_is_one_line_and_writes_nothing(tmp_path, capsys):
  code, printed = _main('--api=tf2', '--output_dir=%s' % (tmp_path / 'x'))
  assert (code, printed) == (1, '')
  assert capsys.readouterr().err == (
      'model_gen.py: error: --api=tf2 trains on a parameter-server cluster only: give --num_ps '
      '(and --num_workers) to start one here, or --job_name to join one\n')
  assert not (tmp_path / 'x').exists()


def test_cli_joins_a_cluster(tmp_path):
  """The module docstring's commands for real machines, on loopback: 1 PS, 2 workers, chief."""
  socks = cluster.reserve_ports(4)  # held until the tasks have bound them: no port race
  hosts = ['127.0.0.1:%d' % s.getsockname()[1] for s in socks]
  out = tmp_path / 'model'
  common = ['--api=tf2', '--output_dir=%s' % out, '--ps_hosts=%s' % hosts[0],
            '--worker_hosts=%s' % ','.join(hosts[1:3]), '--chief_host=%s' % hosts[3]]
  common += [f for f in TINY_FLAGS if not f.startswith('--steps=')] + ['--steps=20']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_GRPC_REUSE_PORT='1')
  tasks = [('ps', 0), ('worker', 0), ('worker', 1), ('chief', 0)]
  procs = [subprocess.Popen([sys.executable, 'model_gen.py', '--job_name=%s' % job,
                             '--task_index=%d' % index] + common,
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
           for job, index in tasks]
  try:
    outputs = [p.communicate(timeout=150) for p in procs]  # 12 s on idle cores
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for s in socks:
      s.close()
  logs = [err for _, err in outputs]
  assert [p.returncode for p in procs] == [0, 0, 0, 0], [log[-2000:] for log in logs]
  # Each serving task ended on its own, told by the coordinator.
  for (job, index), log in zip(tasks[:3], logs):
    assert '%s %d: training ended' % (job, index) in log, log[-2000:]
  assert 'chief: 20 steps' in logs[3] and 'chief: wrote ' in logs[3], logs[3][-2000:]
  # No error lines: the serving tasks outlived the coordinator's clean-up, which talks to them.
  assert not [line for log in logs for line in log.splitlines()
              if re.match(r'E\d{4} |Traceback', line)], logs
  assert sorted(os.listdir(out)) == ['ckpt', 'data', 'saved_model']
  assert sorted(f for f in os.listdir(out / 'ckpt') if '.data-' in f) == [
      'ckpt-20.data-00000-of-00002', 'ckpt-20.data-00001-of-00002']
  assert sorted(os.listdir(tmp_path)) == ['model']
  assert _cluster_processes(str(tmp_path)) == []
