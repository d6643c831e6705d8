"""The recommendation model model_gen.py trains, as functions: data, reader, model, training.

A tf.data reader over TFRecord files of tf.Example, sparse ids whose statistics live in
MutableHashTables that training fills as new ids arrive (sharded over parameter servers when
distributed), a partitioned item embedding, dense features, an MLP, Adam and a global step.
model_gen.py is the command line over it; cluster.py trains it on a parameter-server cluster;
benchmarks and tests build it at other sizes. No flags here, so any of them can import it.
"""

import contextlib
import dataclasses

from absl import logging
import numpy as np

from freezerlib.core import atomic
from freezerlib.core import files
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use

tf1 = lean_tf.tf1

LABEL = 'label'
STATS_DIM = 2  # [impressions, clicks] per id
DEFAULT_NUM_PARTITIONS = 3


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
  # Floats per key in the stats tables: [impressions, clicks], then zeros (benchmarks widen
  # the tables to the size real per-id features have).
  stats_dim: int = STATS_DIM


def _user_ids(config):
  # Realistic ids: sparse 63-bit values, not 0..N-1, so nothing can treat them as row indices.
  rng = np.random.RandomState(config.seed + 1)
  return rng.randint(1, 2**62, size=config.num_users, dtype=np.int64)


def category_names(config):
  return np.array([b'cat_%03d' % i for i in range(config.num_categories)], dtype=object)


@contextlib.contextmanager
def deterministic_ops():
  """TensorFlow's deterministic kernels while the block runs (the same seed, the same model),
  then the process's previous setting back."""
  from tensorflow.python.framework import config as tf_config
  before = tf_config.is_op_determinism_enabled()
  tf_config.enable_op_determinism()
  try:
    yield
  finally:
    if not before:
      tf_config.disable_op_determinism()


def shard_index(keys, key_dtype, num_shards):
  """The hash-table shard (int32) of each key: id mod N for integers, to_hash_bucket_fast for
  strings (the routing of both the TF1 and the TF2 model, so their checkpoints agree)."""
  if key_dtype == tf.string:
    shard = tf.strings.to_hash_bucket_fast(keys, num_shards)
  else:
    shard = tf.math.floormod(keys, num_shards)
  return tf.cast(shard, tf.int32)


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
  files.makedirs(data_dir)
  n = len(data[LABEL])
  paths = [files.join(data_dir, 'train-%05d-of-%05d.tfrecord' % (i, num_files))
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

  def __init__(self, key_dtype, name, num_shards, devices=None, dim=STATS_DIM):
    """Creates the tables.

    Args:
      key_dtype: tf.int64 or tf.string.
      name: the table's name.
      num_shards: tables to split the keys over.
      devices: optional device of each shard (e.g. '/job:ps/task:k').
      dim: floats per key ([impressions, clicks] first).
    """
    self._name = name
    self.dim = dim
    self._key_dtype = key_dtype
    self._num_shards = num_shards
    self.tables = []
    for k in range(num_shards):
      device = tf.device(devices[k]) if devices else contextlib.nullcontext()
      with device:
        self.tables.append(tf.lookup.experimental.MutableHashTable(
            key_dtype, tf.float32, default_value=[0.0] * dim,
            name=name if num_shards == 1 else '%s/shard_%d' % (name, k)))

  def shard_of(self, keys):
    """The shard index (int32) of each key."""
    return shard_index(keys, self._key_dtype, self._num_shards)

  def lookup(self, keys):
    """[len(keys), dim] stats, zeros for keys not in the table."""
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
  counts = tf.stack([tf.ones_like(labels), labels], axis=1)
  if table.dim > STATS_DIM:
    counts = tf.pad(counts, [[0, 0], [0, table.dim - STATS_DIM]])
  delta = tf.math.unsorted_segment_sum(counts, idx, n)
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
                                 shard_devices, config.stats_dim)
  category_stats = ShardedStatsTable(tf.string, 'category_stats', config.num_table_shards,
                                     shard_devices, config.stats_dim)
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
  ckpt_dir = files.join(work_dir, 'ckpt')
  files.makedirs(ckpt_dir)
  return saver.save(sess, files.join(ckpt_dir, 'model.ckpt'), global_step=step)


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
    errors.UserError: `output_dir` exists (without `overwrite`) or cannot be written.
  """
  with atomic.atomic_output(output_dir, overwrite) as tmp:
    data_paths = write_tfrecords(generate_examples(config), files.join(tmp, 'data'),
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
        _save_saved_model(sess, files.join(tmp, 'saved_model'),
                          serving_signatures(features, outputs))
  ckpt_dir = files.join(output_dir, 'ckpt')
  return {
      'saved_model': files.join(output_dir, 'saved_model'),
      'checkpoint': files.join(ckpt_dir, 'model.ckpt-%d' % config.steps),
      'data': files.join(output_dir, 'data'),
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
    errors.UserError: `output_dir` exists (without `overwrite`) or cannot be written.
  """
  with atomic.atomic_output(output_dir, overwrite) as tmp:
    graph = tf.Graph()
    with graph.as_default():
      tf1.set_random_seed(config.seed)
      features = placeholder_features(config)
      outputs = build_model(features, config, training=False)
      with tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        # No devices at all, not even the CPU pins of the saver's ops.
        _save_saved_model(sess, files.join(tmp, 'saved_model'),
                          serving_signatures(features, outputs), clear_devices=True)
  return {'saved_model': files.join(output_dir, 'saved_model')}
