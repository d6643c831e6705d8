"""TF2 parameter-server training of tf2_recsys_model: serving tasks, the coordinator, the launcher.

A TF2 cluster (tf.distribute.ParameterServerStrategy) has PS and worker tasks that only serve
(a tf.distribute.Server each) and a coordinator, task 0 of job 'chief', which creates the
variables and tables on the PS tasks and schedules training steps on the workers with
tf.distribute.coordinator.ClusterCoordinator; it writes the checkpoint (each PS task writes the
data file of its own variables) and the SavedModel. `train_distributed` starts one process per
task on loopback with cluster.py's launcher (the coordinator is a task of its own: the strategy
connects its process's eager context to the cluster for good, which the launcher's caller
should not share); `join_cluster` runs one task on a real machine.

The PS and worker tasks end when the coordinator tells them: it puts a token in a queue on each
task (0 when training is done, 1 when it failed), and each task waits for it, then for the
coordinator to go away, so that the coordinator's clean-up finds them. A task that hears
nothing ends after --cluster_timeout_secs. ClusterCoordinator waits for a failed worker to
come back (a worker restarted with the same flags rejoins); a failed PS task fails training.
"""

import re
import socket
import threading
import time

from absl import logging
import tensorflow as tf

from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.demo import cluster as cluster_lib
from freezerlib.demo import tf2_recsys_model

tf1 = tf.compat.v1

_END_QUEUE = 'freezer_tf2_end_of_training'  # shared name of each task's end-of-training queue
TRAINING_DONE, TRAINING_FAILED = 0, 1


def cluster_spec(ps_hosts, worker_hosts, chief_host):
  """The ClusterSpec of a TF2 PS cluster: jobs 'ps', 'worker' and 'chief' (the coordinator)."""
  return tf.train.ClusterSpec({'ps': list(ps_hosts), 'worker': list(worker_hosts),
                               'chief': [chief_host]})


def _device(job, index):
  return '/job:%s/replica:0/task:%d/device:CPU:0' % (job, index)


def _coordinator_gone(address, timeout_secs):
  """Waits until nothing accepts connections at `address` (host:port) any more."""
  host, port = address.rsplit(':', 1)
  deadline = time.monotonic() + timeout_secs
  while time.monotonic() < deadline:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=1):
        pass
    except OSError:
      return
    time.sleep(0.1)


def run_server_task(cluster, job_name, task_index, timeout_secs=600):
  """Serves PS or worker task `task_index` until the coordinator says training has ended.

  Args:
    cluster: cluster_spec(...).
    job_name: 'ps' or 'worker'.
    task_index: this task.
    timeout_secs: how long to wait for the coordinator's word.

  Raises:
    errors.UserError: the coordinator reported a failure, or said nothing within
      `timeout_secs`.
  """
  server = cluster_lib.start_server(cluster, job_name, task_index)
  task = '%s %d' % (job_name, task_index)
  logging.info('%s serving at %s', task, server.target)
  with tf.Graph().as_default():
    with tf.device(_device(job_name, task_index)):
      dequeue = tf1.FIFOQueue(2, tf.int32, shapes=[[]], shared_name=_END_QUEUE).dequeue()
    config = tf1.ConfigProto(device_filters=['/job:%s/task:%d' % (job_name, task_index)],
                             operation_timeout_in_ms=timeout_secs * 1000)
    with tf1.Session(server.target, config=config) as sess:
      try:
        token = sess.run(dequeue)
      except tf.errors.DeadlineExceededError as e:
        raise errors.UserError('%s: no word from the coordinator within %d s '
                              '(--cluster_timeout_secs)' % (task, timeout_secs)) from e
  chief = cluster.task_address('chief', 0)
  _coordinator_gone(chief, 30)
  if token != TRAINING_DONE:
    raise errors.UserError('%s: the coordinator at %s reported that training failed (see its '
                          'output)' % (task, chief))
  logging.info('%s: training ended', task)


def _tell_tasks(cluster, token, timeout_secs=10):
  """Puts `token` in every PS and worker task's end queue; a task that is gone is skipped."""
  def tell():
    for job in ('ps', 'worker'):
      for index in range(cluster.num_tasks(job)):
        try:
          with tf.device(_device(job, index)):
            queue = tf.raw_ops.FIFOQueueV2(component_types=[tf.int32], shapes=[[]],
                                           capacity=2, shared_name=_END_QUEUE)
            tf.raw_ops.QueueEnqueueV2(handle=queue, components=[tf.constant(token)])
        except (tf.errors.OpError, ValueError) as e:
          logging.warning('could not tell %s %d that training ended: %s', job, index,
                          errors.tf_error_message(e))
  # A task that is unreachable can hold an op for long: the coordinator does not wait for it.
  thread = threading.Thread(target=tell, daemon=True)
  thread.start()
  thread.join(timeout_secs)


def _unreachable_task(error):
  """'ps 1 is unreachable (REASON)' from an UnavailableError, whose first line says little."""
  text = error.message or str(error)
  # A lost PS task is named after the workers that could not reach it.
  target = (re.search(r'remote target /job:(ps)/replica:\d+/task:(\d+)', text) or
            re.search(r'remote target /job:(\w+)/replica:\d+/task:(\d+)', text))
  reason = re.search(r'UNAVAILABLE:\s*(.+)', text)
  return '%s is unreachable (%s)' % (
      '%s %s' % target.groups() if target else 'a task',
      reason.group(1).strip() if reason else errors.tf_error_message(error))


def train(cluster, config, work_dir):
  """The coordinator's work: trains `config.steps` steps on the cluster, writes the outputs.

  Args:
    cluster: cluster_spec(...); this process is its 'chief' task.
    config: recsys_model.ModelConfig; `num_table_shards` must equal the number of PS tasks.
    work_dir: holds the training data in data/*.tfrecord, which every worker reads; gets
      ckpt/ckpt-STEPS (tf.train.Checkpoint(model=, optimizer=); each PS task writes the data
      file of its variables) and saved_model/.

  Returns:
    (checkpoint prefix, last loss).

  Raises:
    errors.UserError: no data.
  """
  paths = files.glob(files.join(work_dir, 'data', '*.tfrecord'))
  if not paths:
    raise errors.UserError('no training data: %s matches no file'
                          % files.join(work_dir, 'data', '*.tfrecord'))
  num_ps, num_workers = cluster.num_tasks('ps'), cluster.num_tasks('worker')
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      cluster, task_type='chief', task_id=0, rpc_layer='grpc')
  partitioner = tf2_recsys_model.EmbeddingPartitioner(config.num_partitions)
  strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
  coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
  logging.info('chief: connected to %d PS and %d workers', num_ps, num_workers)
  with strategy.scope():
    model = tf2_recsys_model.build_model(
        config, partitioner, [_device('ps', k) for k in range(num_ps)])
    optimizer = tf2_recsys_model.make_optimizer(config, model)
  per_worker = coordinator.create_per_worker_dataset(
      lambda: tf2_recsys_model.dataset(paths, config, num_workers))
  iterator = iter(per_worker)

  @tf.function
  def step(iterator):
    return strategy.run(lambda features: tf2_recsys_model.train_step(model, optimizer, features),
                        args=(next(iterator),))

  start = time.monotonic()
  try:
    for _ in range(config.steps):
      last = coordinator.schedule(step, args=(iterator,))
    coordinator.join()  # every step has run (a step that failed on a worker ran again)
  except tf.errors.UnavailableError as e:
    raise errors.UserError('training stopped: %s' % _unreachable_task(e)) from e
  loss = float(last.fetch())
  # The checkpoint is numbered by the steps run, not by Keras's `iterations`: Keras 3 adds 1
  # to it by reading and assigning, so with several workers at once some additions are lost.
  logging.info('chief: %d steps in %.1f s (optimizer iterations %d), last loss %.4f',
               config.steps, time.monotonic() - start, int(optimizer.iterations.numpy()), loss)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  manager = tf.train.CheckpointManager(checkpoint, files.join(work_dir, 'ckpt'), max_to_keep=1)
  prefix = manager.save(checkpoint_number=config.steps)
  tf2_recsys_model.save_model(model, files.join(work_dir, 'saved_model'))
  logging.info('chief: wrote %s and the SavedModel', prefix)
  return prefix, loss


def _coordinate(cluster, config, work_dir, tell_failure):
  """train(), then the end-of-training token to every task."""
  try:
    prefix, _ = train(cluster, config, work_dir)
  except BaseException:
    if tell_failure:
      _tell_tasks(cluster, TRAINING_FAILED)
    raise
  _tell_tasks(cluster, TRAINING_DONE)
  return prefix


def join_cluster(job_name, task_index, cluster, config, output_dir=None, overwrite=False,
                 timeout_secs=600, work_dir=None):
  """Runs one task of a TF2 cluster: what each machine runs.

  Args:
    job_name: 'ps', 'worker' or 'chief' (the coordinator, task 0).
    task_index: the task within its job.
    cluster: cluster_spec(...).
    config: recsys_model.ModelConfig (used by the coordinator only).
    output_dir: what the coordinator creates (atomically) when there is no `work_dir`; it
      must be readable by every worker (data/) and writable by every PS task (their
      checkpoint and SavedModel data files).
    overwrite: replace an existing `output_dir`.
    timeout_secs: end the task (exit 1) if it is still running after this.
    work_dir: set by the launcher: data is there already and the coordinator writes into it.

  Returns:
    The checkpoint prefix (coordinator) or None.

  Raises:
    errors.UserError: on the user's mistakes, unreachable clusters and failed training.
  """
  task = '%s task %d' % (job_name, task_index)
  watchdog = cluster_lib.start_watchdog(timeout_secs, task)
  try:
    with cluster_lib.tf_errors_as_user_errors(task):
      if job_name != 'chief':
        return run_server_task(cluster, job_name, task_index, timeout_secs)
      if work_dir:
        # Under the launcher, which stops every task when this one fails: a failure token
        # would only race this task's own error line to the launcher.
        return _coordinate(cluster, config, work_dir, tell_failure=False)
      with atomic.atomic_output(output_dir, overwrite) as tmp:
        cluster_lib.write_training_data(config, tmp)
        with cluster_lib.tf_errors_as_user_errors('chief'):  # before atomic_output words it
          prefix = _coordinate(cluster, config, tmp, tell_failure=True)
      return files.join(output_dir, 'ckpt', prefix.rstrip('/').rsplit('/', 1)[-1])
  finally:
    watchdog.cancel()


def train_distributed(output_dir, config, num_ps, num_workers=1, overwrite=False,
                      timeout_secs=600, log_dir=None, extra_flags=()):
  """Trains the TF2 model on a local cluster: a process per PS, worker and the coordinator.

  cluster.train_distributed's launcher with a coordinator task: ports chosen at run time on
  127.0.0.1, every task stopped when the coordinator is done, when any task fails, or at the
  deadline; `output_dir` appears complete or not at all.

  Args:
    output_dir: directory to create with data/, ckpt/ (ckpt-STEPS) and saved_model/.
    config: recsys_model.ModelConfig; the tables get one shard per PS task.
    num_ps: PS tasks (>= 1).
    num_workers: worker tasks (>= 1).
    overwrite: replace an existing `output_dir`.
    timeout_secs: stop the cluster and fail if it has not finished by then.
    log_dir: directory for the tasks' logs (ps-0.log, ..., chief-0.log); by default a
      temporary one, removed on success and named in the error otherwise.
    extra_flags: more flags for every task.

  Returns:
    dict with 'saved_model', 'checkpoint' (prefix) and 'data' paths, and 'global_step'.

  Raises:
    errors.UserError: a task failed, the deadline passed, or `output_dir` cannot be written.
  """
  return cluster_lib.train_distributed(
      output_dir, config, num_ps, num_workers, overwrite, timeout_secs, log_dir,
      ['--api=tf2'] + list(extra_flags), coordinator=True)
