"""The parameter-server cluster that trains model_gen.py's model: tasks, launcher, joining.

`run_local_cluster` / `train_distributed` start a whole TensorFlow cluster on this machine, one
process per task (each runs model_gen.py with --job_name and --task_index), and stop every task
when training ends, when one fails, or at the deadline; `join_cluster` runs one task of a
cluster on real machines. The model itself, and the flags, are model_gen.py's. The launcher
also starts tf2_cluster.py's TF2 clusters, whose coordinator is a task of its own.
"""

import contextlib
import dataclasses
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

from absl import logging

from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.demo import recsys_model

tf1 = lean_tf.tf1

_OP_TIMEOUT_MS = 60 * 1000
_LAUNCHER_PID_ENV = 'MODEL_GEN_LAUNCHER_PID'
# What each task runs: the command line at the repository's root (this package never imports
# it; flags are a script's business).
_SCRIPT = str(pathlib.Path(__file__).resolve().parents[2] / 'model_gen.py')


def _task_session_config(device_filters, timeout_ms=_OP_TIMEOUT_MS):
  # A cluster's tasks share the machine's cores: small thread pools keep them from fighting.
  # The servers' default session config would also impose its timeout on every session.
  return tf1.ConfigProto(device_filters=device_filters, operation_timeout_in_ms=timeout_ms,
                         intra_op_parallelism_threads=1, inter_op_parallelism_threads=2)


def start_server(cluster, job_name, task_index):
  try:
    return tf.distribute.Server(
        cluster, job_name=job_name, task_index=task_index, start=True,
        config=tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=2))
  except (tf.errors.OpError, ValueError) as e:
    raise errors.UserError('cannot start %s task %d at %s: %s' % (
        job_name, task_index, cluster.task_address(job_name, task_index),
        errors.tf_error_message(e))) from e


def _token_queue(name, ps_index, num_workers):
  """A queue on PS task `ps_index`, shared by name by every task, for one token per worker."""
  with tf.device('/job:ps/task:%d' % ps_index):
    return tf1.FIFOQueue(num_workers, tf.int32, shapes=[[]],
                         shared_name='model_gen_%s_%d' % (name, ps_index),
                         name='%s_queue_%d' % (name, ps_index))


def _done_queue(ps_index, num_workers):
  # Each worker puts a token in each PS task's queue when it needs the PS tasks no more.
  return _token_queue('done', ps_index, num_workers)


def _stopped_queue(num_workers):
  # Each non-chief worker puts a token here when it has stopped training.
  return _token_queue('stopped', 0, num_workers)


def _run_in_cluster(target, task_index, fetches_fn, timeout_ms=_OP_TIMEOUT_MS):
  """Runs the ops `fetches_fn()` builds, in a graph and session of their own."""
  with tf.Graph().as_default():
    fetches = fetches_fn()
    config = _task_session_config(['/job:ps', '/job:worker/task:%d' % task_index], timeout_ms)
    with tf1.Session(target, config=config) as sess:
      return sess.run(fetches)


def run_ps_task(cluster, task_index, timeout_secs=600):
  """Serves PS task `task_index` until every worker has reported that it is done.

  Args:
    cluster: tf.train.ClusterSpec with jobs 'ps' and 'worker'.
    task_index: this PS task.
    timeout_secs: how long to wait for the workers.

  Raises:
    errors.UserError: a worker did not report within `timeout_secs`.
  """
  server = start_server(cluster, 'ps', task_index)
  logging.info('ps %d serving at %s', task_index, server.target)
  num_workers = cluster.num_tasks('worker')
  with tf.Graph().as_default():
    dequeue = _done_queue(task_index, num_workers).dequeue()
    config = _task_session_config(['/job:ps/task:%d' % task_index], timeout_secs * 1000)
    with tf1.Session(server.target, config=config) as sess:
      for i in range(num_workers):
        try:
          sess.run(dequeue)
        except tf.errors.DeadlineExceededError as e:
          raise errors.UserError('ps %d: %d of %d workers did not finish within %d s '
                                '(--cluster_timeout_secs)' % (
                                    task_index, num_workers - i, num_workers,
                                    timeout_secs)) from e
        logging.info('ps %d: %d of %d workers done', task_index, i + 1, num_workers)


def _report_done(target, cluster, task_index):
  """Puts this worker's token in every PS task's done queue (they end when all have one)."""
  num_workers = cluster.num_tasks('worker')
  _run_in_cluster(target, task_index, lambda: [
      _done_queue(k, num_workers).enqueue(0) for k in range(cluster.num_tasks('ps'))])


def _wait_for_other_workers(target, num_workers, timeout_secs):
  """The chief waits until every other worker has stopped training, so it saves one state."""
  if num_workers > 1:
    try:
      _run_in_cluster(target, 0, lambda: _stopped_queue(num_workers).dequeue_many(
          num_workers - 1), timeout_ms=timeout_secs * 1000)
    except tf.errors.DeadlineExceededError as e:
      raise errors.UserError('chief: the other workers did not stop training within %d s '
                            '(--cluster_timeout_secs)' % timeout_secs) from e


def _export_from_cluster(target, graph, saver, session_config, work_dir, signatures):
  """The chief's final checkpoint and SavedModel, from the variables on the PS tasks."""
  with tf1.Session(target, graph=graph, config=session_config) as sess:
    step = int(sess.run(tf1.train.get_global_step(graph)))
    checkpoint = recsys_model._save_checkpoint(sess, saver, work_dir, step)
    # The same sharded saver: each PS task writes its variables' shard of variables/ too.
    recsys_model._save_saved_model(sess, files.join(work_dir, 'saved_model'), signatures,
                                   saver=saver)
  logging.info('chief: wrote %s and the SavedModel at global step %d', checkpoint, step)
  return checkpoint


def _wait_for_chief(target, session_config, timeout_secs):
  """Returns when the chief has initialised every variable (call in the training graph)."""
  # A non-chief MonitoredTrainingSession checks for that only every 30 s; this checks twice a
  # second. The check op joins this worker's graph only, which nobody exports.
  uninitialized = tf1.report_uninitialized_variables()
  deadline = time.monotonic() + timeout_secs
  while time.monotonic() < deadline:
    with tf1.Session(target, config=session_config) as sess:
      if not sess.run(uninitialized).size:
        return
    time.sleep(0.5)


def run_worker_task(cluster, task_index, config, work_dir, timeout_secs=600):
  """Trains as worker `task_index`; worker 0 (the chief) also writes ckpt/ and saved_model/.

  Args:
    cluster: tf.train.ClusterSpec with jobs 'ps' and 'worker'.
    task_index: this worker.
    config: ModelConfig; `num_table_shards` must equal the number of PS tasks.
    work_dir: directory with the training data in data/*.tfrecord; the chief writes
      ckpt/model.ckpt-STEP (one data file per PS task) and saved_model/ into it.
    timeout_secs: how long to wait for the other workers: a non-chief worker for the chief
      to initialise the model, the chief for the others to stop training before it saves.

  Returns:
    The checkpoint prefix (chief) or None.

  Raises:
    errors.UserError: no data, or the cluster cannot be reached.
  """
  data_paths = files.glob(files.join(work_dir, 'data', '*.tfrecord'))
  if not data_paths:
    raise errors.UserError('no training data: %s matches no file'
                          % files.join(work_dir, 'data', '*.tfrecord'))
  num_ps, num_workers = cluster.num_tasks('ps'), cluster.num_tasks('worker')
  is_chief = task_index == 0
  server = start_server(cluster, 'worker', task_index)
  session_config = _task_session_config(['/job:ps', '/job:worker/task:%d' % task_index])
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(config.seed)
    setter = tf1.train.replica_device_setter(
        cluster=cluster, worker_device='/job:worker/task:%d' % task_index)
    with tf1.device(setter):
      features = recsys_model.input_fn(data_paths, config, num_workers, task_index)
      outputs = recsys_model.build_model(features, config, training=True,
                            shard_devices=['/job:ps/task:%d' % k for k in range(num_ps)])
      saver = tf1.train.Saver(sharded=True, max_to_keep=1, save_relative_paths=True)
    global_step = tf1.train.get_global_step()
    if not is_chief:
      _wait_for_chief(server.target, session_config, timeout_secs)
    steps, loss = 0, float('nan')
    with tf1.train.MonitoredTrainingSession(
        master=server.target, is_chief=is_chief, scaffold=tf1.train.Scaffold(saver=saver),
        hooks=[tf1.train.StopAtStepHook(last_step=config.steps)], config=session_config,
        log_step_count_steps=None) as sess:
      # StopAtStepHook looks at the global step only after a run: a worker that comes late
      # would otherwise train one step past the end.
      sess.run(global_step)
      while not sess.should_stop():
        _, loss = sess.run([outputs['train_op'], outputs['loss']])
        steps += 1
        if steps % 50 == 1:
          logging.info('worker %d, step %d: loss %.4f', task_index, steps, loss)
    logging.info('worker %d stopped training: %d steps, last loss %.4f', task_index, steps,
                 loss)
    checkpoint = None
    if is_chief:
      _wait_for_other_workers(server.target, num_workers, timeout_secs)
      checkpoint = _export_from_cluster(server.target, graph, saver, session_config, work_dir,
                                        recsys_model.serving_signatures(features, outputs))
    else:
      _run_in_cluster(server.target, task_index,
                      lambda: _stopped_queue(num_workers).enqueue(task_index))
  _report_done(server.target, cluster, task_index)
  return checkpoint


def die_with_launcher():
  """A task started by the launcher ends when the launcher does, even if it is killed."""
  launcher = os.environ.get(_LAUNCHER_PID_ENV)
  if not launcher or not sys.platform.startswith('linux'):
    return
  import ctypes
  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
  if os.getppid() != int(launcher):  # the launcher ended before prctl took effect
    os._exit(1)


def start_watchdog(timeout_secs, what):
  """Ends this process with one error line if it is still running after `timeout_secs`."""
  def expire():
    sys.stderr.write('model_gen.py: error: %s did not finish within %d s '
                     '(--cluster_timeout_secs)\n' % (what, timeout_secs))
    sys.stderr.flush()
    os._exit(1)
  timer = threading.Timer(timeout_secs, expire)
  timer.daemon = True
  timer.start()
  return timer


def write_training_data(config, work_dir):
  recsys_model.write_tfrecords(recsys_model.generate_examples(config),
                               files.join(work_dir, 'data'), config.num_data_files)


def join_cluster(job_name, task_index, cluster, config, output_dir=None, overwrite=False,
                 timeout_secs=600, work_dir=None):
  """Runs one task of a cluster: what each machine of a real cluster runs.

  Args:
    job_name: 'ps' or 'worker'.
    task_index: the task within its job; worker 0 is the chief.
    cluster: tf.train.ClusterSpec with jobs 'ps' and 'worker'.
    config: ModelConfig (ignored by PS tasks).
    output_dir: what the chief creates (atomically), when there is no `work_dir`; it must be
      writable by every PS task, which write their checkpoint shards into it.
    overwrite: replace an existing `output_dir`.
    timeout_secs: end the task (exit 1) if it is still running after this.
    work_dir: set by the launcher: data is there already and the chief writes into it.

  Returns:
    The checkpoint prefix (chief) or None.

  Raises:
    errors.UserError: on the user's mistakes and unreachable clusters.
  """
  watchdog = start_watchdog(timeout_secs, '%s task %d' % (job_name, task_index))
  try:
    with tf_errors_as_user_errors('%s task %d' % (job_name, task_index)):
      return _run_task(job_name, task_index, cluster, config, output_dir, overwrite,
                       timeout_secs, work_dir)
  finally:
    watchdog.cancel()


@contextlib.contextmanager
def tf_errors_as_user_errors(task):
  """A TensorFlow error in a task becomes one line naming the task."""
  try:
    yield
  except tf.errors.OpError as e:
    # An error raised on another task starts with a line 'From /job:ps/replica:0/task:0:'.
    text = '\n'.join(line for line in (e.message or str(e)).splitlines()
                     if not re.fullmatch(r'\s*From /job:\S*:\s*', line))
    raise errors.UserError('%s: %s' % (
        task, errors.tf_error_message(types.SimpleNamespace(message=text)))) from e


def _run_task(job_name, task_index, cluster, config, output_dir, overwrite, timeout_secs,
              work_dir):
  """join_cluster's work, without the watchdog."""
  if job_name == 'ps':
    return run_ps_task(cluster, task_index, timeout_secs)
  if work_dir:
    return run_worker_task(cluster, task_index, config, work_dir, timeout_secs)
  if task_index == 0:
    with atomic.atomic_output(output_dir, overwrite) as tmp:
      write_training_data(config, tmp)
      with tf_errors_as_user_errors('worker 0'):  # before atomic_output words it otherwise
        prefix = run_worker_task(cluster, task_index, config, tmp, timeout_secs)
    return files.join(output_dir, 'ckpt', prefix.rstrip('/').rsplit('/', 1)[-1])
  # The data is generated from the seed: each worker writes its own copy, locally.
  local = tempfile.mkdtemp(prefix='model_gen_worker_')
  try:
    write_training_data(config, local)
    return run_worker_task(cluster, task_index, config, local, timeout_secs)
  finally:
    files.rmtree(local)


# ---------------------------------------------------------------------------------------------
# Distributed training: the launcher, a cluster of local processes.


def reserve_ports(count):
  """Binds `count` free loopback ports and keeps them bound.

  Each socket is bound to port 0 (the kernel picks a free port) with SO_REUSEPORT and never
  listens: the tasks' gRPC servers, started with TF_GRPC_REUSE_PORT=1, can bind the port too,
  while nothing else can take it in the seconds before they start.

  Returns:
    The bound sockets; close them when the cluster has ended.
  """
  socks = []
  for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(('127.0.0.1', 0))
    socks.append(s)
  return socks


def task_flags(config):
  """The flags that rebuild `config` in a task (the shard count comes from --ps_hosts)."""
  return ['--num_examples=%d' % config.num_examples, '--num_users=%d' % config.num_users,
          '--num_categories=%d' % config.num_categories,
          '--item_buckets=%d' % config.item_buckets, '--embedding_dim=%d' % config.embedding_dim,
          '--num_partitions=%d' % config.num_partitions, '--num_dense=%d' % config.num_dense,
          '--hidden_units=%s' % ','.join(str(u) for u in config.hidden_units),
          '--batch_size=%d' % config.batch_size, '--steps=%d' % config.steps,
          '--learning_rate=%r' % config.learning_rate, '--seed=%d' % config.seed]


@dataclasses.dataclass
class _Task:
  job: str
  index: int
  proc: subprocess.Popen
  log: str
  copier: threading.Thread

  @property
  def name(self):
    return '%s %d' % (self.job, self.index)


def _copy_output(stream, log):
  """Copies a task's output into its log, through the file layer: logs may go to any file
  system (on an object store the log appears when the task ends)."""
  with files.open_file(log, 'wb') as out:
    for line in iter(stream.readline, b''):
      out.write(line)
      out.flush()
  stream.close()


def _start_task(job, index, args, log_dir):
  log = files.join(log_dir, '%s-%d.log' % (job, index))
  env = dict(os.environ, TF_GRPC_REUSE_PORT='1', **{_LAUNCHER_PID_ENV: str(os.getpid())})
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # A session (and process group) of its own: a Ctrl-C at the terminal reaches only the
  # launcher, which then stops the tasks itself, and each task is stopped as a group.
  proc = subprocess.Popen(
      [sys.executable, _SCRIPT, '--job_name=%s' % job, '--task_index=%d' % index] + args,
      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
      start_new_session=True)
  copier = threading.Thread(target=_copy_output, args=(proc.stdout, log), daemon=True)
  copier.start()
  return _Task(job, index, proc, log, copier)


def _stop(tasks):
  """Kills every task still running (its whole process group) and reaps them all."""
  for task in tasks:
    if task.proc.poll() is None:
      try:
        os.killpg(task.proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  for task in tasks:
    task.proc.wait()
    task.copier.join(10)


def _error_line(task):
  """The line of a finished task's log that says why it failed."""
  task.copier.join(10)  # the end of its output
  try:
    text = files.read(task.log).decode('utf-8', 'replace')
  except OSError:
    return 'no log'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  for line in reversed(lines):
    if line.startswith('model_gen.py: error:'):
      return line[len('model_gen.py: error:'):].strip()
  # Else the end of a traceback or a fatal message: the last line that is not absl's or
  # TensorFlow's INFO or WARNING chatter.
  for line in reversed(lines):
    if not re.match(r'[IW]\d{4} ', line):
      return line[:300]
  return 'no error message in its log'


def _exit_text(code):
  if code < 0:
    return 'was killed by %s' % signal.Signals(-code).name
  return 'exited with code %d' % code


def _wait_for_tasks(tasks, jobs, deadline, timeout_secs, log_dir):
  """Returns when every task of `jobs` has exited 0; raises UserError when any task fails first."""
  waited = [t for t in tasks if t.job in jobs]
  while True:
    for task in tasks:
      code = task.proc.poll()
      if code:
        raise errors.UserError('%s %s: %s (all tasks stopped; logs in %s)' % (
            task.name, _exit_text(code), _error_line(task), log_dir))
    if all(w.proc.returncode == 0 for w in waited):
      return
    if time.monotonic() > deadline:
      raise errors.UserError(
          'the cluster did not finish within %d s; pass a larger --cluster_timeout_secs '
          '(all tasks stopped; logs in %s)' % (timeout_secs, log_dir))
    time.sleep(0.1)


@contextlib.contextmanager
def _sigterm_as_exit():
  """Turns SIGTERM into SystemExit, so that the launcher's clean-up runs (main thread only)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  def handler(signum, frame):
    del frame
    raise SystemExit(128 + signum)
  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def run_local_cluster(config, num_ps, num_workers, work_dir, timeout_secs, log_dir,
                      extra_flags=(), coordinator=False):
  """Runs a cluster of local processes, one per task, until training has finished.

  Args:
    config: ModelConfig.
    num_ps: PS tasks.
    num_workers: worker tasks.
    work_dir: holds data/ (written already); the chief writes ckpt/ and saved_model/ in it.
    timeout_secs: stop everything after this.
    log_dir: directory for each task's output, `ps-0.log`, `worker-0.log`, ...
    extra_flags: more flags for every task (they come last, so they win).
    coordinator: also start task 0 of job 'chief' (TF2's coordinator, given to every task as
      --chief_host): training has finished when it exits 0, and the PS and worker tasks end
      by themselves then. Without it, when every worker has exited 0 (worker 0 is the chief).

  Raises:
    errors.UserError: a task failed or the deadline passed; every task is stopped first.
  """
  deadline = time.monotonic() + timeout_secs
  jobs = [('ps', num_ps), ('worker', num_workers)] + ([('chief', 1)] if coordinator else [])
  socks = reserve_ports(sum(count for _, count in jobs))
  hosts = ['127.0.0.1:%d' % s.getsockname()[1] for s in socks]
  args = ['--ps_hosts=' + ','.join(hosts[:num_ps]),
          '--worker_hosts=' + ','.join(hosts[num_ps:num_ps + num_workers]),
          '--task_work_dir=' + work_dir, '--cluster_timeout_secs=%d' % timeout_secs]
  if coordinator:
    args.append('--chief_host=' + hosts[-1])
  args += task_flags(config) + list(extra_flags)
  tasks = []
  try:
    with _sigterm_as_exit():
      for job, count in jobs:
        for index in range(count):
          tasks.append(_start_task(job, index, args, log_dir))
      logging.info('started %d PS and %d worker tasks%s at %s; logs in %s',
                   num_ps, num_workers, ' and a coordinator' if coordinator else '',
                   ', '.join(hosts), log_dir)
      _wait_for_tasks(tasks, ['chief'] if coordinator else ['worker'], deadline,
                      timeout_secs, log_dir)
      # The other tasks end once the workers or the coordinator have told them; give them a
      # moment, then stop them.
      grace = time.monotonic() + 10
      while time.monotonic() < grace and any(t.proc.poll() is None for t in tasks):
        time.sleep(0.1)
  finally:
    _stop(tasks)
    for s in socks:
      s.close()


def train_distributed(output_dir, config, num_ps, num_workers=1, overwrite=False,
                      timeout_secs=600, log_dir=None, extra_flags=(), coordinator=False):
  """Trains on a local PS cluster: one process per task, on free loopback ports.

  Writes the data once, starts `num_ps` PS and `num_workers` worker tasks (this script with
  --job_name), and a coordinator task if asked, and waits. Every task is stopped when training
  is done, when any task fails, or at the deadline; `output_dir` then appears complete or not
  at all.

  Args:
    output_dir: directory to create, laid out as `train_and_export` lays it out.
    config: ModelConfig; its tables get one shard per PS task whatever `num_table_shards` says.
    num_ps: PS tasks (>= 1).
    num_workers: worker tasks (>= 1); worker 0 is the chief, unless `coordinator`.
    overwrite: replace an existing `output_dir`.
    timeout_secs: stop the cluster and fail if it has not finished by then.
    log_dir: directory for the tasks' logs; by default a local temporary one, removed on
      success and named in the error otherwise.
    extra_flags: more flags for every task.
    coordinator: start a 'chief' task of its own that drives training (TF2; see
      run_local_cluster); it writes ckpt/ and saved_model/.

  Returns:
    dict with 'saved_model', 'checkpoint' (prefix) and 'data' paths, and 'global_step'.

  Raises:
    errors.UserError: a task failed, the deadline passed, or `output_dir` cannot be written.
  """
  if num_ps < 1 or num_workers < 1:
    raise errors.UserError('a cluster needs --num_ps>=1 and --num_workers>=1, got %d and %d'
                          % (num_ps, num_workers))
  if output_dir.startswith('ram://'):
    raise errors.UserError('%s: ram:// lives in one process, and a cluster is several; use '
                          'a directory every task can write' % output_dir)
  config = dataclasses.replace(config, num_table_shards=num_ps)
  own_log_dir = log_dir is None
  keep_logs = False  # only when an error message names them
  start = time.monotonic()
  try:
    with atomic.atomic_output(output_dir, overwrite) as tmp:
      log_dir = log_dir or tempfile.mkdtemp(prefix='model_gen_cluster_')
      files.makedirs(log_dir)
      write_training_data(config, tmp)
      keep_logs = True
      run_local_cluster(config, num_ps, num_workers, tmp, timeout_secs, log_dir, extra_flags,
                        coordinator)
      prefix = tf.train.latest_checkpoint(files.join(tmp, 'ckpt'))
      if not prefix or not files.exists(files.join(tmp, 'saved_model', 'saved_model.pb')):
        raise errors.UserError('the chief ended without writing its checkpoint and SavedModel '
                              '(logs in %s)' % log_dir)
      keep_logs = False
  except errors.UserError:
    raise
  except BaseException:  # Ctrl-C, SIGTERM: no message names the logs
    keep_logs = False
    raise
  finally:
    if own_log_dir and log_dir and not keep_logs:
      files.rmtree(log_dir)
  name = prefix.rstrip('/').rsplit('/', 1)[-1]
  logging.info('cluster of %d PS and %d workers trained in %.1f s', num_ps, num_workers,
               time.monotonic() - start)
  return {
      'saved_model': files.join(output_dir, 'saved_model'),
      'checkpoint': files.join(output_dir, 'ckpt', name),
      'data': files.join(output_dir, 'data'),
      'global_step': int(name.rsplit('-', 1)[1]),
  }


# ---------------------------------------------------------------------------------------------
# Flags.
