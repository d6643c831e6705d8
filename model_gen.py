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

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import cli_flags
import utils

tf1 = tf.compat.v1

_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None, 'Directory to create with data/, ckpt/ and saved_model/ inside.')
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
    'num_workers', None, 'Worker tasks of the cluster --num_ps starts (default 1); worker 0 is '
    'the chief.', lower_bound=1)
_JOB_NAME = flags.DEFINE_enum(
    'job_name', None, ['ps', 'worker'], 'Run one task of an existing cluster (with '
    '--task_index, --ps_hosts, --worker_hosts) instead of starting one.')
_TASK_INDEX = flags.DEFINE_integer(
    'task_index', 0, 'Index of this task in its --job_name; worker 0 is the chief, which writes '
    '--output_dir.', lower_bound=0)
_PS_HOSTS = flags.DEFINE_list(
    'ps_hosts', [], 'host:port of each PS task, comma-separated; the same list for every task.')
_WORKER_HOSTS = flags.DEFINE_list(
    'worker_hosts', [], 'host:port of each worker task, comma-separated; the same list for '
    'every task.')
_CLUSTER_TIMEOUT_SECS = flags.DEFINE_integer(
    'cluster_timeout_secs', 600, 'Stop every task of a cluster that has not finished training '
    'within this many seconds.', lower_bound=1)
_FAKE_INFER_GRAPH = flags.DEFINE_bool(
    'fake_infer_graph', False, 'Write only OUTPUT_DIR/saved_model: the model on placeholders, '
    'without optimizer, data or checkpoint, with the variable names, partitions and table '
    'shards of the training graph of the same --num_ps and --num_partitions.')
_TASK_WORK_DIR = flags.DEFINE_string(
    'task_work_dir', None, 'Internal, set by the --num_ps launcher for its tasks: the directory '
    'whose data/ workers read and where the chief writes ckpt/ and saved_model/.')

LABEL = 'label'
STATS_DIM = 2  # [impressions, clicks] per id
DEFAULT_NUM_PARTITIONS = 3
# A step that waits longer than this for a parameter server fails instead of hanging.
_OP_TIMEOUT_MS = 60 * 1000
# Tells a task started by the launcher the launcher's pid, so that it dies with the launcher.
_LAUNCHER_PID_ENV = 'MODEL_GEN_LAUNCHER_PID'
_SCRIPT = str(pathlib.Path(__file__).resolve())  # the tasks run this file


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes of the generated model; defaults make a model that trains in seconds."""
  num_examples: int = 4096
  num_users: int = 2000
  num_categories: int = 50
  item_buckets: int = 1000
  embedding_dim: int = 8
  num_partitions: int = 3
  num_dense: int = 4
  hidden_units: tuple = (32, 16)
  batch_size: int = 64
  steps: int = 100
  learning_rate: float = 0.01
  seed: int = 42
  num_data_files: int = 2
  # Shards of each hash table: one per PS task when distributed; shard k holds the keys that
  # route to k (int64: id mod N; string: to_hash_bucket_fast(key, N)).
  num_table_shards: int = 1


def _user_ids(config):
  # Realistic ids: sparse 63-bit values, not 0..N-1, so nothing can treat them as row indices.
  rng = np.random.RandomState(config.seed + 1)
  return rng.randint(1, 2**62, size=config.num_users, dtype=np.int64)


def category_names(config):
  return np.array([b'cat_%03d' % i for i in range(config.num_categories)], dtype=object)


def generate_examples(config):
  """The training data as numpy arrays: a seeded, learnable click model.

  Popular ids are drawn more often (Zipf-like), as in real logs.

  Returns:
    dict of feature name to array with `config.num_examples` rows.
  """
  rng = np.random.RandomState(config.seed)
  n = config.num_examples
  users = _user_ids(config)
  cats = category_names(config)
  zipf = lambda size, k: np.minimum(rng.zipf(1.3, size=size) - 1, k - 1)
  user_idx = zipf(n, config.num_users)
  cat_idx = zipf(n, config.num_categories)
  item_id = rng.randint(0, 10 * config.item_buckets, size=n).astype(np.int64)
  dense = rng.normal(size=(n, config.num_dense)).astype(np.float32)
  user_bias = rng.normal(scale=1.0, size=config.num_users)
  cat_bias = rng.normal(scale=1.0, size=config.num_categories)
  w = rng.normal(size=config.num_dense)
  logit = user_bias[user_idx] + cat_bias[cat_idx] + dense @ w + 0.3 * np.sin(item_id)
  label = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
  return {
      'user_id': users[user_idx],
      'item_id': item_id,
      'category': cats[cat_idx],
      'dense': dense,
      LABEL: label,
  }


def feature_spec(config):
  return {
      'user_id': tf.io.FixedLenFeature([], tf.int64),
      'item_id': tf.io.FixedLenFeature([], tf.int64),
      'category': tf.io.FixedLenFeature([], tf.string),
      'dense': tf.io.FixedLenFeature([config.num_dense], tf.float32),
      LABEL: tf.io.FixedLenFeature([], tf.float32),
  }


def make_example(row):
  """A tf.train.Example from a dict of one row's values."""
  feats = {}
  for name, value in row.items():
    value = np.atleast_1d(value)
    if value.dtype.kind in 'iu':
      feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value.tolist()))
    elif value.dtype.kind == 'f':
      feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))
    else:
      feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
  return tf.train.Example(features=tf.train.Features(feature=feats))


def write_tfrecords(data, data_dir, num_files):
  """Writes `data` round-robin into `num_files` TFRecord files; returns their paths."""
  tf.io.gfile.makedirs(data_dir)
  n = len(data[LABEL])
  paths = [utils.join(data_dir, 'train-%05d-of-%05d.tfrecord' % (i, num_files))
           for i in range(num_files)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i in range(n):
    row = {k: v[i] for k, v in data.items()}
    writers[i % num_files].write(make_example(row).SerializeToString())
  for w in writers:
    w.close()
  return paths


def input_fn(paths, config, num_shards=1, shard_index=0):
  """The training reader: TFRecord -> batch -> parse_example; returns the features dict.

  Args:
    paths: TFRecord files.
    config: ModelConfig.
    num_shards: readers sharing the data (one per worker); each reads every num_shards-th record.
    shard_index: this reader's shard.
  """
  ds = tf.data.TFRecordDataset(paths)
  if num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  ds = ds.shuffle(1024, seed=config.seed).repeat().batch(config.batch_size)
  spec = feature_spec(config)
  ds = ds.map(lambda serialized: tf.io.parse_example(serialized, spec))
  return tf1.data.make_one_shot_iterator(ds).get_next()


def placeholder_features(config):
  """Placeholders with the names, dtypes and shapes of the reader's outputs (no label)."""
  return {
      'user_id': tf1.placeholder(tf.int64, [None], name='user_id'),
      'item_id': tf1.placeholder(tf.int64, [None], name='item_id'),
      'category': tf1.placeholder(tf.string, [None], name='category'),
      'dense': tf1.placeholder(tf.float32, [None, config.num_dense], name='dense'),
  }


def _stats_features(stats):
  """Turns [impressions, clicks] into model inputs: log volume and a smoothed click rate."""
  imps, clicks = stats[:, 0], stats[:, 1]
  return tf.stack([tf.math.log1p(imps), (clicks + 0.1) / (imps + 1.0)], axis=1)


class ShardedStatsTable:
  """A MutableHashTable of [impressions, clicks] per key, split into shards by key.

  One shard keeps the plain table (named `name`, as a single-machine model has it). N shards
  are tables `name/shard_k`, each holding the keys that route to k: `id mod N` for int64 keys,
  `to_hash_bucket_fast(key, N)` for strings. Their checkpoint keys are `name/shard_k-keys` and
  `name/shard_k-values`.
  """

  def __init__(self, key_dtype, name, num_shards, devices=None):
    """Creates the tables.

    Args:
      key_dtype: tf.int64 or tf.string.
      name: the table's name.
      num_shards: tables to split the keys over.
      devices: optional device of each shard (e.g. '/job:ps/task:k').
    """
    self._name = name
    self._key_dtype = key_dtype
    self._num_shards = num_shards
    self.tables = []
    for k in range(num_shards):
      device = tf.device(devices[k]) if devices else contextlib.nullcontext()
      with device:
        self.tables.append(tf.lookup.experimental.MutableHashTable(
            key_dtype, tf.float32, default_value=[0.0] * STATS_DIM,
            name=name if num_shards == 1 else '%s/shard_%d' % (name, k)))

  def shard_of(self, keys):
    """The shard index (int32) of each key."""
    if self._key_dtype == tf.string:
      shard = tf.strings.to_hash_bucket_fast(keys, self._num_shards)
    else:
      shard = tf.math.floormod(keys, self._num_shards)
    return tf.cast(shard, tf.int32)

  def lookup(self, keys):
    """[len(keys), STATS_DIM] stats, zeros for keys not in the table."""
    if self._num_shards == 1:
      return self.tables[0].lookup(keys)
    with tf.name_scope('%s_lookup' % self._name):
      shard = self.shard_of(keys)
      positions = tf.dynamic_partition(tf.range(tf.size(keys)), shard, self._num_shards)
      parts = tf.dynamic_partition(keys, shard, self._num_shards)
      found = [table.lookup(part) for table, part in zip(self.tables, parts)]
      return tf.dynamic_stitch(positions, found)

  def insert(self, keys, values):
    """Sets the stats of `keys` (unique) to `values`; returns the op."""
    if self._num_shards == 1:
      return self.tables[0].insert(keys, values)
    with tf.name_scope('%s_insert' % self._name):
      shard = self.shard_of(keys)
      key_parts = tf.dynamic_partition(keys, shard, self._num_shards)
      value_parts = tf.dynamic_partition(values, shard, self._num_shards)
      return tf.group(*[table.insert(k, v)
                        for table, k, v in zip(self.tables, key_parts, value_parts)])


def _stats_update(table, ids, labels, after):
  """Adds this batch's impressions and clicks to `table`; inserts ids seen for the first time."""
  unique, idx = tf.unique(ids)
  n = tf.shape(unique)[0]
  delta = tf.math.unsorted_segment_sum(
      tf.stack([tf.ones_like(labels), labels], axis=1), idx, n)
  with tf.control_dependencies(after):
    return table.insert(unique, table.lookup(unique) + delta)


def _dense(x, units, name, seed):
  """x @ kernel + bias, with variables named as tf.compat.v1.layers.dense names them."""
  with tf1.variable_scope(name):
    kernel = tf1.get_variable('kernel', [x.shape[-1], units],
                              initializer=tf1.glorot_uniform_initializer(seed=seed))
    bias = tf1.get_variable('bias', [units], initializer=tf1.zeros_initializer())
    return tf.matmul(x, kernel) + bias


def build_model(features, config, training, shard_devices=None):
  """The model, shared by training and the fake inference graph.

  Args:
    features: dict with 'user_id' [B] int64, 'item_id' [B] int64, 'category' [B] string,
      'dense' [B, num_dense] float32, and, when training, 'label' [B] float32.
    config: ModelConfig.
    training: also build the table updates, loss and Adam step.
    shard_devices: optional device of each of the `config.num_table_shards` table shards,
      e.g. '/job:ps/task:k'; without it the tables follow the caller's device scope.

  Returns:
    dict with 'logit', 'probability', 'item_embedding', 'user_stats' tensors, and
    'loss' and 'train_op' when training.
  """
  # The embedding comes first: replica_device_setter hands out PS tasks round-robin in creation
  # order, so part_k lands on task k mod num_ps.
  embedding = tf1.get_variable(
      'item_embedding', [config.item_buckets, config.embedding_dim],
      initializer=tf1.random_normal_initializer(stddev=0.1, seed=config.seed),
      partitioner=tf1.fixed_size_partitioner(config.num_partitions))
  user_stats = ShardedStatsTable(tf.int64, 'user_stats', config.num_table_shards,
                                 shard_devices)
  category_stats = ShardedStatsTable(tf.string, 'category_stats', config.num_table_shards,
                                     shard_devices)
  user_raw = user_stats.lookup(features['user_id'])
  cat_raw = category_stats.lookup(features['category'])
  item_emb = tf1.nn.embedding_lookup(
      embedding, tf.math.floormod(features['item_id'], config.item_buckets),
      name='item_embedding_lookup')

  net = tf.concat([item_emb, _stats_features(user_raw), _stats_features(cat_raw),
                   features['dense']], axis=1)
  for i, units in enumerate(config.hidden_units):
    net = tf.nn.relu(_dense(net, units, 'hidden_%d' % i, config.seed + i))
  logit = tf.squeeze(_dense(net, 1, 'logit', config.seed), axis=1)
  outputs = {
      'logit': logit,
      'probability': tf.sigmoid(logit, name='probability'),
      'item_embedding': item_emb,
      'user_stats': user_raw,
  }
  if training:
    labels = features[LABEL]
    loss = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logit), name='loss')
    tf1.summary.scalar('loss', loss)
    global_step = tf1.train.get_or_create_global_step()
    # The table updates wait for this batch's lookups, so each step sees the stats as they were
    # before it: the result does not depend on op scheduling.
    updates = [_stats_update(user_stats, features['user_id'], labels, [user_raw, cat_raw]),
               _stats_update(category_stats, features['category'], labels, [user_raw, cat_raw])]
    minimize = tf1.train.AdamOptimizer(config.learning_rate).minimize(
        loss, global_step=global_step)
    outputs['loss'] = loss
    outputs['train_op'] = tf.group(minimize, *updates, name='train_op')
  return outputs


def serving_signatures(features, outputs):
  """Signatures fed at the reader's outputs, as a training pipeline leaves them."""
  inputs = {k: v for k, v in features.items() if k != LABEL}
  info = tf1.saved_model.utils.build_tensor_info
  predict = tf1.saved_model.signature_def_utils.build_signature_def(
      inputs={k: info(v) for k, v in inputs.items()},
      outputs={'probability': info(outputs['probability']), 'logit': info(outputs['logit'])},
      method_name=tf1.saved_model.signature_constants.PREDICT_METHOD_NAME)
  embeddings = tf1.saved_model.signature_def_utils.build_signature_def(
      inputs={'item_id': info(features['item_id']), 'user_id': info(features['user_id'])},
      outputs={'item_embedding': info(outputs['item_embedding']),
               'user_stats': info(outputs['user_stats'])},
      method_name=tf1.saved_model.signature_constants.PREDICT_METHOD_NAME)
  return {'serving_default': predict, 'embeddings': embeddings}


def _save_checkpoint(sess, saver, work_dir, step):
  ckpt_dir = utils.join(work_dir, 'ckpt')
  tf.io.gfile.makedirs(ckpt_dir)
  return saver.save(sess, utils.join(ckpt_dir, 'model.ckpt'), global_step=step)


def _save_saved_model(sess, path, signatures, saver=None, clear_devices=False):
  """A TF1 SavedModel (tag 'serve') of the session's graph."""
  builder = tf1.saved_model.Builder(path)
  builder.add_meta_graph_and_variables(
      sess, [tf1.saved_model.tag_constants.SERVING], signature_def_map=signatures,
      strip_default_attrs=True, saver=saver, clear_devices=clear_devices)
  builder.save()


def train_and_export(output_dir, config, overwrite=False):
  """Writes data, trains `config.steps` steps, saves a checkpoint and a SavedModel.

  Args:
    output_dir: directory to create (atomically: it appears complete or not at all).
    config: ModelConfig.
    overwrite: replace an existing `output_dir`.

  Returns:
    dict with 'saved_model', 'checkpoint' (prefix) and 'data' paths, and 'loss', the last
    training loss.

  Raises:
    utils.UserError: `output_dir` exists (without `overwrite`) or cannot be written.
  """
  tf.config.experimental.enable_op_determinism()
  with utils.atomic_output(output_dir, overwrite) as tmp:
    data_paths = write_tfrecords(generate_examples(config), utils.join(tmp, 'data'),
                                 config.num_data_files)
    graph = tf.Graph()
    with graph.as_default():
      tf1.set_random_seed(config.seed)
      features = input_fn(data_paths, config)
      outputs = build_model(features, config, training=True)
      saver = tf1.train.Saver(max_to_keep=1, save_relative_paths=True)
      session_config = tf1.ConfigProto(intra_op_parallelism_threads=1,
                                       inter_op_parallelism_threads=1)
      with tf1.Session(graph=graph, config=session_config) as sess:
        sess.run([tf1.global_variables_initializer(), tf1.local_variables_initializer()])
        loss = None
        for step in range(config.steps):
          _, loss = sess.run([outputs['train_op'], outputs['loss']])
          if step % 50 == 0 or step == config.steps - 1:
            logging.info('step %d: loss %.4f', step + 1, loss)
        _save_checkpoint(sess, saver, tmp, config.steps)
        _save_saved_model(sess, utils.join(tmp, 'saved_model'),
                          serving_signatures(features, outputs))
  ckpt_dir = utils.join(output_dir, 'ckpt')
  return {
      'saved_model': utils.join(output_dir, 'saved_model'),
      'checkpoint': utils.join(ckpt_dir, 'model.ckpt-%d' % config.steps),
      'data': utils.join(output_dir, 'data'),
      'loss': float(loss),
  }


def write_fake_infer_graph(output_dir, config, overwrite=False):
  """Writes the fake inference graph: OUTPUT_DIR/saved_model, a structure without values.

  The model is built as the (distributed) training graph builds it, with the same variable
  names, partitions and table shards, but on one machine, without devices, on placeholders
  named like the reader's outputs, without the optimizer. Variables hold their initial
  values and the tables are empty: only the structure is meant to be used, with a training
  checkpoint's values (optimize_from_ckpt.py).

  Args:
    output_dir: directory to create (atomically), holding saved_model/.
    config: ModelConfig; `num_table_shards` and `num_partitions` as in training.
    overwrite: replace an existing `output_dir`.

  Returns:
    dict with the 'saved_model' path.

  Raises:
    utils.UserError: `output_dir` exists (without `overwrite`) or cannot be written.
  """
  with utils.atomic_output(output_dir, overwrite) as tmp:
    graph = tf.Graph()
    with graph.as_default():
      tf1.set_random_seed(config.seed)
      features = placeholder_features(config)
      outputs = build_model(features, config, training=False)
      with tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        # No devices at all, not even the CPU pins of the saver's ops.
        _save_saved_model(sess, utils.join(tmp, 'saved_model'),
                          serving_signatures(features, outputs), clear_devices=True)
  return {'saved_model': utils.join(output_dir, 'saved_model')}


# ---------------------------------------------------------------------------------------------
# Distributed training: the tasks.


def _task_session_config(device_filters, timeout_ms=_OP_TIMEOUT_MS):
  # A cluster's tasks share the machine's cores: small thread pools keep them from fighting.
  # The servers' default session config would also impose its timeout on every session.
  return tf1.ConfigProto(device_filters=device_filters, operation_timeout_in_ms=timeout_ms,
                         intra_op_parallelism_threads=1, inter_op_parallelism_threads=2)


def _start_server(cluster, job_name, task_index):
  try:
    return tf.distribute.Server(
        cluster, job_name=job_name, task_index=task_index, start=True,
        config=tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=2))
  except (tf.errors.OpError, ValueError) as e:
    raise utils.UserError('cannot start %s task %d at %s: %s' % (
        job_name, task_index, cluster.task_address(job_name, task_index),
        utils.tf_error_message(e))) from e


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
    utils.UserError: a worker did not report within `timeout_secs`.
  """
  server = _start_server(cluster, 'ps', task_index)
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
          raise utils.UserError('ps %d: %d of %d workers did not finish within %d s '
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
      raise utils.UserError('chief: the other workers did not stop training within %d s '
                            '(--cluster_timeout_secs)' % timeout_secs) from e


def _export_from_cluster(target, graph, saver, session_config, work_dir, signatures):
  """The chief's final checkpoint and SavedModel, from the variables on the PS tasks."""
  with tf1.Session(target, graph=graph, config=session_config) as sess:
    step = int(sess.run(tf1.train.get_global_step(graph)))
    checkpoint = _save_checkpoint(sess, saver, work_dir, step)
    # The same sharded saver: each PS task writes its variables' shard of variables/ too.
    _save_saved_model(sess, utils.join(work_dir, 'saved_model'), signatures, saver=saver)
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
    utils.UserError: no data, or the cluster cannot be reached.
  """
  data_paths = sorted(tf.io.gfile.glob(utils.join(work_dir, 'data', '*.tfrecord')))
  if not data_paths:
    raise utils.UserError('no training data: %s matches no file'
                          % utils.join(work_dir, 'data', '*.tfrecord'))
  num_ps, num_workers = cluster.num_tasks('ps'), cluster.num_tasks('worker')
  is_chief = task_index == 0
  server = _start_server(cluster, 'worker', task_index)
  session_config = _task_session_config(['/job:ps', '/job:worker/task:%d' % task_index])
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(config.seed)
    setter = tf1.train.replica_device_setter(
        cluster=cluster, worker_device='/job:worker/task:%d' % task_index)
    with tf1.device(setter):
      features = input_fn(data_paths, config, num_workers, task_index)
      outputs = build_model(features, config, training=True,
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
                                        serving_signatures(features, outputs))
    else:
      _run_in_cluster(server.target, task_index,
                      lambda: _stopped_queue(num_workers).enqueue(task_index))
  _report_done(server.target, cluster, task_index)
  return checkpoint


def _die_with_launcher():
  """A task started by the launcher ends when the launcher does, even if it is killed."""
  launcher = os.environ.get(_LAUNCHER_PID_ENV)
  if not launcher or not sys.platform.startswith('linux'):
    return
  import ctypes  # pylint: disable=g-import-not-at-top
  pr_set_pdeathsig = 1
  ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
  if os.getppid() != int(launcher):  # the launcher ended before prctl took effect
    os._exit(utils.EXIT_FAILURE)  # pylint: disable=protected-access


def _start_watchdog(timeout_secs, what):
  """Ends this process with one error line if it is still running after `timeout_secs`."""
  def expire():
    sys.stderr.write('model_gen.py: error: %s did not finish within %d s '
                     '(--cluster_timeout_secs)\n' % (what, timeout_secs))
    sys.stderr.flush()
    os._exit(utils.EXIT_FAILURE)  # pylint: disable=protected-access
  timer = threading.Timer(timeout_secs, expire)
  timer.daemon = True
  timer.start()
  return timer


def _write_training_data(config, work_dir):
  write_tfrecords(generate_examples(config), utils.join(work_dir, 'data'), config.num_data_files)


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
    utils.UserError: on the user's mistakes and unreachable clusters.
  """
  watchdog = _start_watchdog(timeout_secs, '%s task %d' % (job_name, task_index))
  try:
    with _tf_errors_as_user_errors('%s task %d' % (job_name, task_index)):
      return _run_task(job_name, task_index, cluster, config, output_dir, overwrite,
                       timeout_secs, work_dir)
  finally:
    watchdog.cancel()


@contextlib.contextmanager
def _tf_errors_as_user_errors(task):
  """A TensorFlow error in a task becomes one line naming the task."""
  try:
    yield
  except tf.errors.OpError as e:
    # An error raised on another task starts with a line 'From /job:ps/replica:0/task:0:'.
    text = '\n'.join(line for line in (e.message or str(e)).splitlines()
                     if not re.fullmatch(r'\s*From /job:\S*:\s*', line))
    raise utils.UserError('%s: %s' % (
        task, utils.tf_error_message(types.SimpleNamespace(message=text)))) from e


def _run_task(job_name, task_index, cluster, config, output_dir, overwrite, timeout_secs,
              work_dir):
  """join_cluster's work, without the watchdog."""
  if job_name == 'ps':
    return run_ps_task(cluster, task_index, timeout_secs)
  if work_dir:
    return run_worker_task(cluster, task_index, config, work_dir, timeout_secs)
  if task_index == 0:
    with utils.atomic_output(output_dir, overwrite) as tmp:
      _write_training_data(config, tmp)
      with _tf_errors_as_user_errors('worker 0'):  # before atomic_output words it otherwise
        prefix = run_worker_task(cluster, task_index, config, tmp, timeout_secs)
    return utils.join(output_dir, 'ckpt', prefix.rstrip('/').rsplit('/', 1)[-1])
  # The data is generated from the seed: each worker writes its own copy, locally.
  local = tempfile.mkdtemp(prefix='model_gen_worker_')
  try:
    _write_training_data(config, local)
    return run_worker_task(cluster, task_index, config, local, timeout_secs)
  finally:
    tf.io.gfile.rmtree(local)


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
  """Copies a task's output into its log, through gfile: logs may go to any filesystem."""
  with tf.io.gfile.GFile(log, 'wb') as out:
    for line in iter(stream.readline, b''):
      out.write(line)
      out.flush()
  stream.close()


def _start_task(job, index, args, log_dir):
  log = utils.join(log_dir, '%s-%d.log' % (job, index))
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
    with tf.io.gfile.GFile(task.log, 'rb') as f:
      text = f.read().decode('utf-8', 'replace')
  except tf.errors.OpError:
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


def _wait_for_workers(tasks, deadline, timeout_secs, log_dir):
  """Returns when every worker has exited 0; raises UserError when any task fails first."""
  workers = [t for t in tasks if t.job == 'worker']
  while True:
    for task in tasks:
      code = task.proc.poll()
      if code:
        raise utils.UserError('%s %s: %s (all tasks stopped; logs in %s)' % (
            task.name, _exit_text(code), _error_line(task), log_dir))
    if all(w.proc.returncode == 0 for w in workers):
      return
    if time.monotonic() > deadline:
      raise utils.UserError(
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
                      extra_flags=()):
  """Runs a cluster of local processes, one per task, until the workers have finished.

  Args:
    config: ModelConfig.
    num_ps: PS tasks.
    num_workers: worker tasks.
    work_dir: holds data/ (written already); the chief writes ckpt/ and saved_model/ in it.
    timeout_secs: stop everything after this.
    log_dir: directory for each task's output, `ps-0.log`, `worker-0.log`, ...
    extra_flags: more flags for every task (they come last, so they win).

  Raises:
    utils.UserError: a task failed or the deadline passed; every task is stopped first.
  """
  deadline = time.monotonic() + timeout_secs
  socks = reserve_ports(num_ps + num_workers)
  hosts = ['127.0.0.1:%d' % s.getsockname()[1] for s in socks]
  args = ['--ps_hosts=' + ','.join(hosts[:num_ps]),
          '--worker_hosts=' + ','.join(hosts[num_ps:]),
          '--task_work_dir=' + work_dir, '--cluster_timeout_secs=%d' % timeout_secs]
  args += task_flags(config) + list(extra_flags)
  tasks = []
  try:
    with _sigterm_as_exit():
      for job, count in (('ps', num_ps), ('worker', num_workers)):
        for index in range(count):
          tasks.append(_start_task(job, index, args, log_dir))
      logging.info('started %d PS and %d worker tasks at %s; logs in %s',
                   num_ps, num_workers, ', '.join(hosts), log_dir)
      _wait_for_workers(tasks, deadline, timeout_secs, log_dir)
      # Each PS task ends once every worker has reported; give them a moment, then stop them.
      grace = time.monotonic() + 10
      while time.monotonic() < grace and any(t.proc.poll() is None for t in tasks):
        time.sleep(0.1)
  finally:
    _stop(tasks)
    for s in socks:
      s.close()


def train_distributed(output_dir, config, num_ps, num_workers=1, overwrite=False,
                      timeout_secs=600, log_dir=None, extra_flags=()):
  """Trains on a local PS cluster: one process per task, on free loopback ports.

  Writes the data once, starts `num_ps` PS and `num_workers` worker tasks (this script with
  --job_name), and waits. Every task is stopped when the workers are done, when any task
  fails, or at the deadline; `output_dir` then appears complete or not at all.

  Args:
    output_dir: directory to create, laid out as `train_and_export` lays it out.
    config: ModelConfig; its tables get one shard per PS task whatever `num_table_shards` says.
    num_ps: PS tasks (>= 1).
    num_workers: worker tasks (>= 1); worker 0 is the chief.
    overwrite: replace an existing `output_dir`.
    timeout_secs: stop the cluster and fail if it has not finished by then.
    log_dir: directory for the tasks' logs; by default a local temporary one, removed on
      success and named in the error otherwise.
    extra_flags: more flags for every task.

  Returns:
    dict with 'saved_model', 'checkpoint' (prefix) and 'data' paths, and 'global_step'.

  Raises:
    utils.UserError: a task failed, the deadline passed, or `output_dir` cannot be written.
  """
  if num_ps < 1 or num_workers < 1:
    raise utils.UserError('a cluster needs --num_ps>=1 and --num_workers>=1, got %d and %d'
                          % (num_ps, num_workers))
  if output_dir.startswith('ram://'):
    raise utils.UserError('%s: ram:// lives in one process, and a cluster is several; use '
                          'a directory every task can write' % output_dir)
  config = dataclasses.replace(config, num_table_shards=num_ps)
  own_log_dir = log_dir is None
  keep_logs = False  # only when an error message names them
  start = time.monotonic()
  try:
    with utils.atomic_output(output_dir, overwrite) as tmp:
      log_dir = log_dir or tempfile.mkdtemp(prefix='model_gen_cluster_')
      tf.io.gfile.makedirs(log_dir)
      _write_training_data(config, tmp)
      keep_logs = True
      run_local_cluster(config, num_ps, num_workers, tmp, timeout_secs, log_dir, extra_flags)
      prefix = tf.train.latest_checkpoint(utils.join(tmp, 'ckpt'))
      if not prefix or not tf.io.gfile.exists(utils.join(tmp, 'saved_model', 'saved_model.pb')):
        raise utils.UserError('the chief ended without writing its checkpoint and SavedModel '
                              '(logs in %s)' % log_dir)
      keep_logs = False
  except utils.UserError:
    raise
  except BaseException:  # Ctrl-C, SIGTERM: no message names the logs
    keep_logs = False
    raise
  finally:
    if own_log_dir and log_dir and not keep_logs:
      tf.io.gfile.rmtree(log_dir)
  name = prefix.rstrip('/').rsplit('/', 1)[-1]
  logging.info('cluster of %d PS and %d workers trained in %.1f s', num_ps, num_workers,
               time.monotonic() - start)
  return {
      'saved_model': utils.join(output_dir, 'saved_model'),
      'checkpoint': utils.join(output_dir, 'ckpt', name),
      'data': utils.join(output_dir, 'data'),
      'global_step': int(name.rsplit('-', 1)[1]),
  }


# ---------------------------------------------------------------------------------------------
# Flags.


def _config_from_flags(num_ps):
  try:
    hidden = tuple(int(u) for u in _HIDDEN_UNITS.value)
  except ValueError as e:
    raise utils.UserError('--hidden_units must be integers, got %s' % _HIDDEN_UNITS.value) from e
  if any(u < 1 for u in hidden):
    raise utils.UserError('--hidden_units must be positive, got %s' % _HIDDEN_UNITS.value)
  config = ModelConfig(
      num_examples=cli_flags.value_or_default(cli_flags.NUM_EXAMPLES, 4096),
      num_users=_NUM_USERS.value,
      num_categories=_NUM_CATEGORIES.value, item_buckets=_ITEM_BUCKETS.value,
      embedding_dim=_EMBEDDING_DIM.value,
      num_partitions=cli_flags.value_or_default(
          _NUM_PARTITIONS, num_ps if num_ps else DEFAULT_NUM_PARTITIONS),
      num_dense=_NUM_DENSE.value, hidden_units=hidden, batch_size=_BATCH_SIZE.value,
      steps=_STEPS.value, learning_rate=_LEARNING_RATE.value,
      seed=cli_flags.value_or_default(cli_flags.SEED, 42), num_table_shards=max(1, num_ps))
  if config.num_partitions > config.item_buckets:
    raise utils.UserError('--num_partitions (%d) exceeds --item_buckets (%d)'
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
      lambda f: not f['job_name'] or f['task_index'] < len(f['%s_hosts' % f['job_name']]),
      '--task_index must index the hosts of --job_name (--ps_hosts or --worker_hosts)')
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
      ['job_name', 'task_index', 'task_work_dir', 'output_dir'],
      lambda f: bool(f['output_dir']) or (f['job_name'] is not None and (
          f['job_name'] == 'ps' or f['task_index'] > 0 or bool(f['task_work_dir']))),
      '--output_dir is required (except for PS tasks and non-chief workers)')
  flags.register_multi_flags_validator(
      ['task_work_dir', 'job_name'], lambda f: f['task_work_dir'] is None or f['job_name'],
      '--task_work_dir is set by the --num_ps launcher for its tasks only')


def _cluster_from_flags():
  return tf.train.ClusterSpec({'ps': _PS_HOSTS.value, 'worker': _WORKER_HOSTS.value})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    if _JOB_NAME.value:
      _die_with_launcher()
      config = _config_from_flags(len(_PS_HOSTS.value))
      join_cluster(_JOB_NAME.value, _TASK_INDEX.value, _cluster_from_flags(), config,
                   output_dir=_OUTPUT_DIR.value, overwrite=cli_flags.OVERWRITE.value,
                   timeout_secs=_CLUSTER_TIMEOUT_SECS.value, work_dir=_TASK_WORK_DIR.value)
      return
    config = _config_from_flags(_NUM_PS.value)
    if _FAKE_INFER_GRAPH.value:
      result = write_fake_infer_graph(_OUTPUT_DIR.value, config, cli_flags.OVERWRITE.value)
    elif _NUM_PS.value:
      num_workers = cli_flags.value_or_default(_NUM_WORKERS, 1)
      result = train_distributed(_OUTPUT_DIR.value, config, _NUM_PS.value, num_workers,
                                 cli_flags.OVERWRITE.value, _CLUSTER_TIMEOUT_SECS.value)
      logging.info('checkpoint: %s', result['checkpoint'])
    else:
      result = train_and_export(_OUTPUT_DIR.value, config, cli_flags.OVERWRITE.value)
      logging.info('final loss %.4f', result['loss'])
      logging.info('checkpoint: %s', result['checkpoint'])
    logging.info('SavedModel: %s', result['saved_model'])
    print(result['saved_model'])

  return utils.run_cli('model_gen.py', work)


if __name__ == '__main__':
  _register_flag_validators()
  app.run(main)
