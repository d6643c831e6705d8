r"""Trains a small recommendation model and writes its checkpoint and training SavedModel.

The model is what freezer's users train, scaled down: a tf.data reader over TFRecord files of
tf.Example (written here), sparse ids whose statistics live in MutableHashTables that training
fills as new ids arrive (int64 user ids, string categories, vector values), a partitioned item
embedding, dense features, an MLP, Adam and a global step. The SavedModel's signatures are fed
at the reader's outputs (`IteratorGetNext:k`), exactly as the training pipeline left them:
turning those into placeholders is the toolkit's job, not this script's.

Output layout:
  OUTPUT_DIR/data/train-00000-of-00002.tfrecord ...   the training data
  OUTPUT_DIR/ckpt/model.ckpt-STEPS.{index,data-*}     checkpoint (Saver, max_to_keep=1)
  OUTPUT_DIR/saved_model/                            training SavedModel (tag 'serve')

Distributed training (`--num_ps=N`), as large models are trained: a TensorFlow parameter-server
cluster, one process per task. Variables are placed by `replica_device_setter` (the embedding's
`--num_partitions` parts, default N, round-robin over the PS tasks); each hash table is split
into N shards, `user_stats/shard_k` on PS task k holding the ids with `id mod N == k` (strings
routed by `to_hash_bucket_fast`). Worker 0, the chief, writes a sharded checkpoint (one data
file per PS task) and the SavedModel, whose graph keeps its `/job:ps/task:k` devices as a real
cluster's export does. Without `--job_name`, this script starts the whole cluster on 127.0.0.1
(ports chosen at run time; gRPC servers listen on all interfaces, as TensorFlow's always do),
waits for it, and stops every task when training ends, when any task fails, or after
`--cluster_timeout_secs`. With `--job_name` it runs one task of a cluster on real machines: run
the same command with the same flags on each machine, changing only `--job_name` and
`--task_index`; OUTPUT_DIR must be on storage every task can write (each PS task writes its own
checkpoint shard), e.g. an NFS mount or gs://. PS tasks end when every worker reports it is done, or
after `--cluster_timeout_secs` if one never does. With several workers training is asynchronous:
the final global step may pass --steps by a step or two, and names the checkpoint.

`--fake_infer_graph` writes only OUTPUT_DIR/saved_model: the same model code on one machine with
placeholders as inputs, no optimizer and no devices, with the training graph's variable names,
partitions and table shards (give the same --num_ps and --num_partitions). Its values are never
used: `optimize_from_ckpt.py` takes it as the structure and the training checkpoint as values.

`--api=tf2` trains the same model in TF2 form (tf2_recsys_model.py: a tf.Module reading the same
data) on a real tf.distribute.ParameterServerStrategy cluster: PS and worker tasks that only
serve, and a coordinator (job 'chief', a task of its own) that creates the variables and
tables on the PS tasks (the item embedding in --num_partitions shards, each table in one
MutableHashTable per PS task) and drives training with ClusterCoordinator, each worker reading
every M-th record. It writes OUTPUT_DIR/ckpt/ckpt-STEPS with tf.train.Checkpoint(model=...,
optimizer=...) (keys `model/item_embedding/.ATTRIBUTES/VARIABLE_VALUE`, one tensor in slices,
`model/user_stats/shard_k/.ATTRIBUTES/table-keys`, ...; a data file per PS task and one for the
coordinator) and OUTPUT_DIR/saved_model (tf.saved_model.save of the trained model). With
--job_name each machine runs one task, as for TF1, plus `--chief_host` (the coordinator's
host:port) on every machine; the coordinator writes OUTPUT_DIR, which the workers must read
(data/) and the PS tasks write (their checkpoint files), and tells every task when training
has ended. `--api=tf2 --fake_infer_graph --num_ps=N` writes the TF2 structure: the model's
SavedModel with the same object paths, shapes and shards, initial values, no optimizer.

Examples:
  python model_gen.py --output_dir=/tmp/freezer_demo/model --steps=200 --seed=7

  # a 2 PS + 1 worker cluster on this machine
  python model_gen.py --output_dir=/tmp/freezer_demo/ps_model --num_ps=2 --num_workers=1

  # the same cluster on three machines; OUTPUT_DIR on storage all of them write (NFS, gs://)
  FLAGS="--output_dir=/shared/ps_model --ps_hosts=ps0.example.com:2222,ps1.example.com:2222
      --worker_hosts=worker0.example.com:2222"
  python model_gen.py $FLAGS --job_name=ps --task_index=0      # on ps0.example.com
  python model_gen.py $FLAGS --job_name=ps --task_index=1      # on ps1.example.com
  python model_gen.py $FLAGS --job_name=worker --task_index=0  # on worker0.example.com

  # its fake inference graph
  python model_gen.py --output_dir=/tmp/freezer_demo/fake_infer --fake_infer_graph --num_ps=2

  # TF2: a ParameterServerStrategy cluster of 2 PS, 1 worker and a coordinator on this machine,
  # and its structure
  python model_gen.py --api=tf2 --output_dir=/tmp/freezer_demo/tf2_model --num_ps=2 --num_workers=1
  python model_gen.py --api=tf2 --output_dir=/tmp/freezer_demo/tf2_fake --fake_infer_graph \
      --num_ps=2

  # the same TF2 cluster on four machines
  FLAGS="--api=tf2 --output_dir=/shared/tf2_model --chief_host=chief.example.com:2222
      --ps_hosts=ps0.example.com:2222,ps1.example.com:2222 --worker_hosts=worker0.example.com:2222"
  python model_gen.py $FLAGS --job_name=ps --task_index=0      # on ps0.example.com
  python model_gen.py $FLAGS --job_name=ps --task_index=1      # on ps1.example.com
  python model_gen.py $FLAGS --job_name=worker --task_index=0  # on worker0.example.com
  python model_gen.py $FLAGS --job_name=chief                  # on chief.example.com
"""

import utils  # first: Ctrl-C during start-up is one line

from absl import app
from absl import flags
from absl import logging

import cli_flags

_OVERWRITE = cli_flags.overwrite()
_SEED = cli_flags.seed('Random seed: the same seed gives the same data and model (default 42).')
_NUM_EXAMPLES = cli_flags.num_examples('Training examples to write (default 4096).')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, '(required, but for PS tasks and workers other than 0 of --job_name) '
    'Directory to create with data/, ckpt/ and saved_model/ inside.')
_NUM_USERS = flags.DEFINE_integer(
    'num_users', 2000, 'Distinct user ids in the data (keys of the user_stats table).',
    lower_bound=1)
_NUM_CATEGORIES = flags.DEFINE_integer(
    'num_categories', 50, 'Distinct category strings (keys of the category_stats table).',
    lower_bound=1)
_ITEM_BUCKETS = flags.DEFINE_integer(
    'item_buckets', 1000, 'Rows of the item embedding (item ids are taken modulo this).',
    lower_bound=1)
_EMBEDDING_DIM = flags.DEFINE_integer(
    'embedding_dim', 8, 'Width of the item embedding.', lower_bound=1)
_NUM_PARTITIONS = flags.DEFINE_integer(
    'num_partitions', None, 'Partitions of the item embedding (fixed_size_partitioner); '
    'default 3, or the number of PS tasks when distributed.', lower_bound=1)
_NUM_DENSE = flags.DEFINE_integer(
    'num_dense', 4, 'Dense float features per example.', lower_bound=1)
_HIDDEN_UNITS = flags.DEFINE_list(
    'hidden_units', ['32', '16'], 'Widths of the MLP hidden layers.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Training batch size.', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 100, 'Training steps.', lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 0.01, 'Adam learning rate.', lower_bound=0)
_NUM_PS = flags.DEFINE_integer(
    'num_ps', 0, 'Parameter-server tasks: start a cluster on this machine with this many PS '
    'tasks (the tables get one shard per PS task). With --fake_infer_graph: the PS count of the '
    'training run to mirror.', lower_bound=0)
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'Worker tasks of the cluster --num_ps starts (default 1); with '
    '--api=tf1 worker 0 is the chief.', lower_bound=1)
_API = flags.DEFINE_enum(
    'api', 'tf1', ['tf1', 'tf2'], 'tf1: the tf.compat.v1 graph model (Saver checkpoint, '
    'replica_device_setter when distributed). tf2: the tf.Module model trained by '
    'ParameterServerStrategy with a coordinator (tf.train.Checkpoint); needs --num_ps (or '
    '--job_name).')
_JOB_NAME = flags.DEFINE_enum(
    'job_name', None, ['ps', 'worker', 'chief'], 'Run one task of an existing cluster (with '
    '--task_index, --ps_hosts, --worker_hosts) instead of starting one; chief: the '
    'coordinator of an --api=tf2 cluster.')
_TASK_INDEX = flags.DEFINE_integer(
    'task_index', 0, 'Index of this task in its --job_name; with --api=tf1 worker 0 is the '
    'chief, which writes --output_dir.', lower_bound=0)
_PS_HOSTS = flags.DEFINE_list(
    'ps_hosts', [], 'host:port of each PS task, comma-separated; the same list for every task.')
_WORKER_HOSTS = flags.DEFINE_list(
    'worker_hosts', [], 'host:port of each worker task, comma-separated; the same list for '
    'every task.')
_CHIEF_HOST = flags.DEFINE_string(
    'chief_host', None, '--api=tf2: host:port of the coordinator (job chief, task 0), which '
    'drives training and writes --output_dir; the same for every task.')
_CLUSTER_TIMEOUT_SECS = flags.DEFINE_integer(
    'cluster_timeout_secs', 600, 'Stop every task of a cluster that has not finished training '
    'within this many seconds.', lower_bound=1)
_CLUSTER_LOG_DIR = flags.DEFINE_string(
    'cluster_log_dir', None, 'With --num_ps: write each task\'s output to DIR/<job>-<index>.log '
    'and keep it; by default the logs go to a temporary directory, removed when training '
    'succeeds (and named in the error when it does not).')
_FAKE_INFER_GRAPH = flags.DEFINE_bool(
    'fake_infer_graph', False, 'Write only OUTPUT_DIR/saved_model: the model on placeholders, '
    'without optimizer, data or checkpoint, with the variable names, partitions and table '
    'shards of the training graph of the same --num_ps and --num_partitions.')
_TASK_WORK_DIR = flags.DEFINE_string(
    'task_work_dir', None, 'Internal, set by the --num_ps launcher for its tasks: the directory '
    'whose data/ workers read and where the chief writes ckpt/ and saved_model/.')


def _config_from_flags(num_ps):
  from freezerlib.core import errors  # --help fast
  from freezerlib.demo import recsys_model
  try:
    hidden = tuple(int(u) for u in _HIDDEN_UNITS.value)
  except ValueError as e:
    raise errors.UserError('--hidden_units must be integers, got %s' % _HIDDEN_UNITS.value) from e
  if any(u < 1 for u in hidden):
    raise errors.UserError('--hidden_units must be positive, got %s' % _HIDDEN_UNITS.value)
  config = recsys_model.ModelConfig(
      num_examples=cli_flags.value_or_default(_NUM_EXAMPLES, 4096),
      num_users=_NUM_USERS.value,
      num_categories=_NUM_CATEGORIES.value, item_buckets=_ITEM_BUCKETS.value,
      embedding_dim=_EMBEDDING_DIM.value,
      num_partitions=cli_flags.value_or_default(
          _NUM_PARTITIONS, num_ps if num_ps else recsys_model.DEFAULT_NUM_PARTITIONS),
      num_dense=_NUM_DENSE.value, hidden_units=hidden, batch_size=_BATCH_SIZE.value,
      steps=_STEPS.value, learning_rate=_LEARNING_RATE.value,
      seed=cli_flags.value_or_default(_SEED, 42), num_table_shards=max(1, num_ps))
  if config.num_partitions > config.item_buckets:
    raise errors.UserError('--num_partitions (%d) exceeds --item_buckets (%d)'
                          % (config.num_partitions, config.item_buckets))
  return config


def _register_flag_validators():
  """Rules between flags, checked when the flags are parsed."""
  flags.register_multi_flags_validator(
      ['job_name', 'ps_hosts', 'worker_hosts'],
      lambda f: not f['job_name'] or (f['ps_hosts'] and f['worker_hosts']),
      '--job_name needs --ps_hosts and --worker_hosts (host:port,... of every task)')
  flags.register_multi_flags_validator(
      ['job_name', 'task_index', 'ps_hosts', 'worker_hosts'],
      lambda f: not f['job_name'] or f['task_index'] < (
          1 if f['job_name'] == 'chief' else len(f['%s_hosts' % f['job_name']])),
      '--task_index must index the hosts of --job_name (--ps_hosts or --worker_hosts; 0 for '
      'the chief)')
  flags.register_multi_flags_validator(
      ['job_name', 'num_ps', 'num_workers', 'fake_infer_graph'],
      lambda f: not f['job_name'] or not (f['num_ps'] or f['num_workers'] or
                                          f['fake_infer_graph']),
      '--job_name joins a cluster described by --ps_hosts and --worker_hosts: do not give '
      '--num_ps, --num_workers or --fake_infer_graph with it')
  flags.register_multi_flags_validator(
      ['num_ps', 'num_workers', 'fake_infer_graph'],
      lambda f: f['num_workers'] is None or (f['num_ps'] > 0 and not f['fake_infer_graph']),
      '--num_workers needs --num_ps>=1 (the cluster to start) and no --fake_infer_graph')
  flags.register_multi_flags_validator(
      ['job_name', 'task_index', 'task_work_dir', 'output_dir', 'api'],
      lambda f: bool(f['output_dir']) or (f['job_name'] is not None and (
          f['job_name'] == 'ps' or bool(f['task_work_dir']) or
          (f['job_name'] == 'worker' and (f['task_index'] > 0 or f['api'] == 'tf2')))),
      '--output_dir is required (except for PS tasks and non-chief workers)')
  flags.register_multi_flags_validator(
      ['task_work_dir', 'job_name'], lambda f: f['task_work_dir'] is None or f['job_name'],
      '--task_work_dir is set by the --num_ps launcher for its tasks only')


def _cluster_from_flags():
  import tensorflow as tf  # after freezerlib: quiet start-up
  return tf.train.ClusterSpec({'ps': _PS_HOSTS.value, 'worker': _WORKER_HOSTS.value})


def _check_api_flags():
  """The rules of --api between flags (one-line errors)."""
  from freezerlib.core import errors
  if _API.value == 'tf1':
    if _JOB_NAME.value == 'chief':
      raise errors.UserError('--job_name=chief is the coordinator of an --api=tf2 cluster; a '
                            'TF1 cluster\'s chief is --job_name=worker --task_index=0')
    if _CHIEF_HOST.value:
      raise errors.UserError('--chief_host is for --api=tf2 (a TF1 cluster\'s chief is worker 0)')
    return
  if _JOB_NAME.value:
    if not _CHIEF_HOST.value:
      raise errors.UserError('--api=tf2 --job_name needs --chief_host (host:port of the '
                            'coordinator, --job_name=chief), the same for every task')
  elif _NUM_PS.value < 1:
    raise errors.UserError(
        '--api=tf2 trains on a parameter-server cluster only: give --num_ps (and '
        '--num_workers) to start one here, or --job_name to join one'
        if not _FAKE_INFER_GRAPH.value else
        '--api=tf2 --fake_infer_graph mirrors a cluster\'s model: give its --num_ps')
  elif _CHIEF_HOST.value:
    raise errors.UserError('--chief_host joins a cluster: give it with --job_name, not --num_ps')


def _work_tf2():
  """--api=tf2: join a cluster, write the fake inference graph, or start a cluster here."""
  from freezerlib.demo import cluster
  from freezerlib.demo import tf2_cluster  # TF2 only
  from freezerlib.demo import tf2_recsys_model
  if _JOB_NAME.value:
    cluster.die_with_launcher()
    config = _config_from_flags(len(_PS_HOSTS.value))
    spec = tf2_cluster.cluster_spec(_PS_HOSTS.value, _WORKER_HOSTS.value, _CHIEF_HOST.value)
    tf2_cluster.join_cluster(_JOB_NAME.value, _TASK_INDEX.value, spec, config,
                             output_dir=_OUTPUT_DIR.value, overwrite=_OVERWRITE.value,
                             timeout_secs=_CLUSTER_TIMEOUT_SECS.value,
                             work_dir=_TASK_WORK_DIR.value)
    return None
  config = _config_from_flags(_NUM_PS.value)
  if _FAKE_INFER_GRAPH.value:
    return tf2_recsys_model.write_fake_infer_graph(_OUTPUT_DIR.value, config,
                                                   _OVERWRITE.value)
  result = tf2_cluster.train_distributed(
      _OUTPUT_DIR.value, config, _NUM_PS.value, cli_flags.value_or_default(_NUM_WORKERS, 1),
      _OVERWRITE.value, _CLUSTER_TIMEOUT_SECS.value, log_dir=_CLUSTER_LOG_DIR.value)
  logging.info('checkpoint: %s', result['checkpoint'])
  return result


def main(argv):
  del argv  # flags only: utils.parse_flags refuses stray arguments

  def work():
    _check_api_flags()
    if _API.value == 'tf2':
      result = _work_tf2()
      if result:
        logging.info('SavedModel: %s', result['saved_model'])
        print(result['saved_model'])
      return
    from freezerlib.demo import cluster  # --help fast
    from freezerlib.demo import recsys_model
    if _JOB_NAME.value:
      cluster.die_with_launcher()
      config = _config_from_flags(len(_PS_HOSTS.value))
      with recsys_model.deterministic_ops():  # the same --seed, the same model
        cluster.join_cluster(_JOB_NAME.value, _TASK_INDEX.value, _cluster_from_flags(), config,
                             output_dir=_OUTPUT_DIR.value, overwrite=_OVERWRITE.value,
                             timeout_secs=_CLUSTER_TIMEOUT_SECS.value,
                             work_dir=_TASK_WORK_DIR.value)
      return
    config = _config_from_flags(_NUM_PS.value)
    if _FAKE_INFER_GRAPH.value:
      result = recsys_model.write_fake_infer_graph(_OUTPUT_DIR.value, config, _OVERWRITE.value)
    elif _NUM_PS.value:
      num_workers = cli_flags.value_or_default(_NUM_WORKERS, 1)
      result = cluster.train_distributed(_OUTPUT_DIR.value, config, _NUM_PS.value, num_workers,
                                         _OVERWRITE.value, _CLUSTER_TIMEOUT_SECS.value,
                                         log_dir=_CLUSTER_LOG_DIR.value)
      logging.info('checkpoint: %s', result['checkpoint'])
    else:
      from freezerlib.core import atomic
      atomic.check_output_free(_OUTPUT_DIR.value, _OVERWRITE.value)  # before TensorFlow loads
      with recsys_model.deterministic_ops():  # the same --seed, the same model
        result = recsys_model.train_and_export(_OUTPUT_DIR.value, config, _OVERWRITE.value)
      logging.info('final loss %.4f', result['loss'])
      logging.info('checkpoint: %s', result['checkpoint'])
    logging.info('SavedModel: %s', result['saved_model'])
    print(result['saved_model'])

  # A cluster task (--job_name) ends the usual way: see utils.run_cli's end_process.
  return utils.run_cli('model_gen.py', work, end_process=not _JOB_NAME.value)


if __name__ == '__main__':
  _register_flag_validators()
  app.run(main, flags_parser=utils.parse_flags)
