"""model_gen.py, distributed: a real PS cluster on loopback, its checkpoint and fake graph."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from test_lean import _export_in_fresh_process

from conftest import NUM_PS
from conftest import REPO
from conftest import TINY
from conftest import TINY_FLAGS
from conftest import run_script
from conftest import tree_digest
from freezerlib.core import errors
from freezerlib.demo import cluster
from freezerlib.demo import recsys_model
from freezerlib.export import from_checkpoint
from freezerlib.formats import checkpoint_index
from freezerlib.formats import saved_model
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders

OPTIMIZER_OPS = {'ResourceApplyAdam', 'ApplyAdam', 'ResourceSparseApplyAdam'}


def _processes():
  """(pid, ppid, args) of every process, from `ps` (psutil is not installed)."""
  rows = []
  # -ww: whole command lines (else ps cuts them at $COLUMNS, which is set under pytest).
  for line in os.popen('ps -ww -eo pid,ppid,args').read().splitlines()[1:]:
    parts = line.split(None, 2)
    if len(parts) == 3:
      rows.append((int(parts[0]), int(parts[1]), parts[2]))
  return rows


def _cluster_processes(marker):
  """model_gen.py processes that are this test's children or name `marker` (orphans too)."""
  rows = _processes()
  children, frontier = set(), {os.getpid()}
  while frontier:
    frontier = {pid for pid, ppid, _ in rows if ppid in frontier} - children
    children |= frontier
  return [(pid, args) for pid, _, args in rows
          if 'model_gen.py' in args and (pid in children or marker in args)]


def _meta_graph(export_dir):
  proto = saved_model.read_saved_model_proto(export_dir)
  return saved_model.select_meta_graph(proto, ['serve'], 'x')


def _shapes(prefix):
  return tf.train.load_checkpoint(prefix).get_variable_to_shape_map()


def test_cli_starts_a_cluster_that_is_fast_and_leaves_no_process(cluster_model):
  """README step 5's first command (the cluster_model fixture runs it, at TINY size)."""
  proc, root = cluster_model['proc'], cluster_model['root']
  assert cluster_model['seconds'] < 60
  assert proc.stdout.strip() == cluster_model['saved_model']
  assert _cluster_processes(root) == []
  # The launcher named its logs dir; each task logged, and the PS tasks heard from the worker.
  logs = os.path.join(root, 'logs')  # --cluster_log_dir
  assert 'logs in %s' % logs in proc.stderr
  assert sorted(os.listdir(logs)) == ['ps-0.log', 'ps-1.log', 'worker-0.log']
  assert '1 of 1 workers done' in open(os.path.join(logs, 'ps-1.log')).read()
  assert sorted(os.listdir(os.path.join(root, 'model'))) == ['ckpt', 'data', 'saved_model']
  assert sorted(os.listdir(root)) == ['logs', 'model']  # no temporary debris


def test_checkpoint_has_one_data_file_per_ps_task(cluster_model):
  prefix = cluster_model['checkpoint']
  ckpt_dir, name = prefix.rsplit('/', 1)
  assert name == 'model.ckpt-%d' % TINY.steps
  data = sorted(f for f in os.listdir(ckpt_dir) if '.data-' in f)
  assert data == ['%s.data-%05d-of-%05d' % (name, k, NUM_PS) for k in range(NUM_PS)]
  assert tf.train.get_checkpoint_state(ckpt_dir).model_checkpoint_path == prefix
  # Every PS task wrote something: a shard holds its task's variables and table shards.
  assert all(os.path.getsize(os.path.join(ckpt_dir, f)) > 100 for f in data)
  reader = tf.train.load_checkpoint(prefix)
  assert reader.get_tensor('global_step') == TINY.steps
  assert reader.get_tensor('item_embedding').shape == (TINY.item_buckets, TINY.embedding_dim)
  variables = os.listdir(os.path.join(cluster_model['saved_model'], 'variables'))
  assert sorted(variables) == ['variables.data-00000-of-00002', 'variables.data-00001-of-00002',
                               'variables.index']


def test_tables_are_sharded_by_key(cluster_model):
  reader = tf.train.load_checkpoint(cluster_model['checkpoint'])
  names = reader.get_variable_to_shape_map()
  assert 'user_stats-keys' not in names and 'category_stats-keys' not in names
  users, impressions = [], 0.0
  for k in range(NUM_PS):
    keys = reader.get_tensor('user_stats/shard_%d-keys' % k)
    values = reader.get_tensor('user_stats/shard_%d-values' % k)
    assert keys.dtype == np.int64 and values.shape == (len(keys), recsys_model.STATS_DIM)
    assert len(keys) and np.all(keys % NUM_PS == k), (k, keys[:10])
    users += list(keys)
    impressions += values[:, 0].sum()
    categories = reader.get_tensor('category_stats/shard_%d-keys' % k)
    routed = tf.strings.to_hash_bucket_fast(categories, NUM_PS).numpy()
    assert len(categories) and np.all(routed == k), (k, categories, routed)
  assert len(set(users)) == len(users) > 50
  assert set(users) <= set(recsys_model.generate_examples(TINY)['user_id'])
  # One worker, each step counted each example of its batch once, in exactly one shard.
  assert impressions == pytest.approx(TINY.steps * TINY.batch_size)


def test_variables_are_placed_on_both_ps_tasks(cluster_model):
  graph_def = _meta_graph(cluster_model['saved_model']).graph_def
  devices = {n.name: n.device for n in graph_def.node}
  for k in range(TINY.num_partitions):
    assert devices['item_embedding/part_%d' % k] == '/job:ps/task:%d' % (k % NUM_PS)
  for table in ('user_stats', 'category_stats'):
    for k in range(NUM_PS):
      assert devices['%s/shard_%d' % (table, k)] == '/job:ps/task:%d' % k
  assert devices['IteratorGetNext'] == '/job:worker/task:0'


def test_saved_model_is_fed_at_the_reader(cluster_model):
  meta_graph = _meta_graph(cluster_model['saved_model'])
  sig = meta_graph.signature_def['serving_default']
  assert sorted(sig.inputs) == ['category', 'dense', 'item_id', 'user_id']
  assert all(i.name.startswith('IteratorGetNext:') for i in sig.inputs.values())
  assert sorted(sig.outputs) == ['logit', 'probability']
  assert sorted(meta_graph.signature_def) == ['embeddings', 'serving_default']


def test_fake_infer_graph_mirrors_the_training_graph(fake_graph, cluster_model):
  meta_graph = _meta_graph(fake_graph)
  nodes = {n.name: n for n in meta_graph.graph_def.node}
  sig = meta_graph.signature_def['serving_default']
  assert {k: v.name for k, v in sig.inputs.items()} == {
      'user_id': 'user_id:0', 'item_id': 'item_id:0', 'category': 'category:0',
      'dense': 'dense:0'}
  assert {nodes[k].op for k in sig.inputs} == {'Placeholder'}
  assert nodes['category'].attr['dtype'].type == tf.string.as_datatype_enum
  assert sorted(meta_graph.signature_def['embeddings'].outputs) == ['item_embedding',
                                                                    'user_stats']
  ops = {n.op for n in nodes.values()}
  assert not ops & OPTIMIZER_OPS and 'IteratorGetNext' not in ops
  assert not [n for n in nodes if 'Adam' in n or n == 'global_step']
  assert {n.device for n in nodes.values()} == {''}
  # Same variables and partitions (name and shape) as the training graph, optimizer aside.
  def variables(graph_def):
    return {n.name: tf.TensorShape(n.attr['shape'].shape).as_list() for n in graph_def.node
            if n.op == 'VarHandleOp' and 'Adam' not in n.name
            and n.name not in ('global_step', 'beta1_power', 'beta2_power')}
  trained = variables(_meta_graph(cluster_model['saved_model']).graph_def)
  assert variables(meta_graph.graph_def) == trained
  assert 'item_embedding/part_2' in trained
  # Every tensor the fake graph saves is in the training checkpoint with that shape (tables:
  # the same keys and values tensors; their lengths are what training put in them).
  fake = _shapes(fake_graph + '/variables/variables')
  ckpt = _shapes(cluster_model['checkpoint'])
  assert 'user_stats/shard_1-keys' in fake and 'category_stats/shard_0-values' in fake
  for name, shape in fake.items():
    assert name in ckpt, name
    if '_stats/shard_' not in name:
      assert ckpt[name] == shape, name


def _run_failing(tmp_path, **kwargs):
  """Runs train_distributed that must fail: (message, seconds); checks it left nothing."""
  out = tmp_path / 'model'
  start = time.monotonic()
  with pytest.raises(errors.UserError) as e:
    cluster.train_distributed(str(out), TINY, num_ps=NUM_PS, log_dir=str(tmp_path / 'logs'),
                                **kwargs)
  seconds = time.monotonic() - start
  assert _cluster_processes(str(tmp_path)) == []
  assert sorted(p.name for p in tmp_path.iterdir()) == ['logs']  # no output, no temp dir
  return str(e.value), seconds


def test_worker_failure_stops_the_cluster(tmp_path):
  message, seconds = _run_failing(
      tmp_path, extra_flags=['--task_work_dir=%s' % (tmp_path / 'missing')])
  assert seconds < 25
  assert message.startswith('worker 0 exited with code 1: no training data: ')
  assert str(tmp_path / 'missing') in message and str(tmp_path / 'logs') in message


def test_deadline_stops_the_cluster(tmp_path):
  message, seconds = _run_failing(tmp_path, timeout_secs=2)
  assert seconds < 6
  assert 'did not finish within 2 s' in message and '--cluster_timeout_secs' in message


def test_killed_ps_task_stops_the_cluster(tmp_path):
  outcome = {}

  def launch():
    try:
      outcome['message'], _ = _run_failing(tmp_path, timeout_secs=60)
    except BaseException as e:
      outcome['error'] = e

  thread = threading.Thread(target=launch)
  start = time.monotonic()
  thread.start()
  victim = None
  while victim is None and time.monotonic() - start < 20:
    victim = next((pid for pid, args in _cluster_processes(str(tmp_path))
                   if '--job_name=ps --task_index=1' in args), None)
    time.sleep(0.05)
  assert victim, 'ps 1 never started'
  time.sleep(1)  # let it get going
  os.kill(victim, signal.SIGKILL)
  thread.join(30)
  assert not thread.is_alive()
  assert time.monotonic() - start < 15
  # _run_failing checked that it raised UserError and that nothing was left behind.
  assert 'error' not in outcome, outcome
  assert outcome['message'].startswith('ps 1 was killed by SIGKILL: '), outcome


def _tiny_flags(steps):
  return [f for f in TINY_FLAGS if not f.startswith('--steps')] + ['--steps=%d' % steps]


def test_cli_flag_rules(tmp_path):
  proc = run_script('model_gen.py', '--output_dir=%s' % (tmp_path / 'x'), '--num_workers=2')
  assert proc.returncode == 2  # a usage error
  assert '--num_workers needs --num_ps>=1' in proc.stderr
  assert not (tmp_path / 'x').exists()


def test_cli_joins_a_cluster(tmp_path):
  """The module docstring's commands for real machines, on loopback: 1 PS, 2 workers."""
  socks = cluster.reserve_ports(3)  # held until the tasks have bound them: no port race
  hosts = ['127.0.0.1:%d' % s.getsockname()[1] for s in socks]
  out = tmp_path / 'model'
  common = ['--output_dir=%s' % out, '--ps_hosts=%s' % hosts[0],
            '--worker_hosts=%s' % ','.join(hosts[1:])] + _tiny_flags(20)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_GRPC_REUSE_PORT='1')
  procs = [subprocess.Popen([sys.executable, 'model_gen.py', '--job_name=%s' % job,
                             '--task_index=%d' % index] + common,
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
           for job, index in (('ps', 0), ('worker', 1), ('worker', 0))]
  try:
    logs = [p.communicate(timeout=90)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for s in socks:
      s.close()
  assert [p.returncode for p in procs] == [0, 0, 0], [log[-2000:] for log in logs]
  # The PS task ended on its own, once both workers had reported.
  assert 'ps 0: 2 of 2 workers done' in logs[0], logs[0][-2000:]
  assert 'worker 1 stopped training: ' in logs[1] and 'chief: wrote ' in logs[2], logs[1:]
  prefix = tf.train.latest_checkpoint(str(out / 'ckpt'))
  step = tf.train.load_checkpoint(prefix).get_tensor('global_step')
  # Asynchronous workers: the last steps of both may land together.
  assert 20 <= step <= 22 and prefix.endswith('model.ckpt-%d' % step), (step, logs[1:])
  assert sorted(f for f in os.listdir(out / 'ckpt') if '.data-' in f) == [
      'model.ckpt-%d.data-00000-of-00001' % step]
  assert sorted(os.listdir(out)) == ['ckpt', 'data', 'saved_model']
  assert _cluster_processes(str(tmp_path)) == []


# ---------------------------------------------------------------------------------------------
# The cluster's checkpoint through the checkpoint path (here, with the other tests that use the
# cluster's model, so that pytest-xdist's --dist=loadfile trains the cluster once)


def test_cluster_checkpoint_serves_through_the_fake_inference_graph(cluster_model, fake_graph,
                                                                    tmp_path, capi):
  """The checkpoint path: a real 2-PS cluster's sharded checkpoint, the fake graph's structure."""
  import capi_runner
  ckpt_dir = cluster_model['checkpoint'].rsplit('/', 1)[0]
  index = checkpoint_index.read_index(cluster_model['checkpoint'])
  assert index.num_shards == 2
  out = str(tmp_path / 'serving')
  report = from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt_dir, output_dir=out,
                                    saved_model_dir=fake_graph)
  assert report.bytes_exported < report.bytes_in_checkpoint
  names = set(tf.train.load_checkpoint(out + '/variables/variables').get_variable_to_shape_map())
  assert {'user_stats/shard_0-keys', 'user_stats/shard_1-keys', 'item_embedding'} <= names
  assert not [n for n in names if 'Adam' in n or n == 'global_step']
  # The training SavedModel, restored from the same checkpoint, is the reference; its graph
  # keeps /job:ps devices (the loader clears them), the export has none.
  reference = loaders.load_saved_model(cluster_model['saved_model'])
  new = loaders.load_saved_model(out)
  assert not any(n.device for n in new.graph_def.node)
  maker = inputs.InputMaker(reference, seed=4)
  feeds = {k: maker.make(k, 120) for k in reference.signatures}
  results = compare.compare(reference, new, feeds, atol=1e-6, rtol=0)
  assert len(results) == 4 and all(r.passed for r in results), results
  stats = reference.run('embeddings', feeds['embeddings'])['user_stats']
  assert 10 < np.count_nonzero(stats[:, 0]) < 110  # ids from both shards' keys, and unseen
  served = capi_runner.run_signatures(capi, out, feeds)
  for key, feed in feeds.items():
    for name, value in reference.run(key, feed).items():
      np.testing.assert_allclose(served[key][name], value, atol=1e-6, rtol=0, err_msg=name)


def test_fake_graph_export_runs_without_tensorflow(cluster_model, fake_graph, tmp_path):
  """A fake inference graph, whose inputs are placeholders, as the structure: the script
  loads neither TensorFlow's Python API nor its runtime, nor numpy, and writes byte for byte
  what the in-process export (TensorFlow loaded) writes."""
  ckpt = cluster_model['checkpoint'].rsplit('/', 1)[0]
  assert _export_in_fresh_process(fake_graph, ckpt, tmp_path / 'lean') == '[]'
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt, output_dir=str(tmp_path / 'heavy'),
                           saved_model_dir=fake_graph)
  assert tree_digest(tmp_path / 'lean') == tree_digest(tmp_path / 'heavy')
