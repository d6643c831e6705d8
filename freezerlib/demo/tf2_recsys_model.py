"""recsys_model's recommendation model in TF2 form: a tf.Module that ParameterServerStrategy trains.

The same data (recsys_model's TFRecord files and ModelConfig), features and sizes: an item
embedding sharded over the PS tasks (a ShardedVariable made by the strategy's
`variable_partitioner`, `FixedShardsPartitioner(config.num_partitions)` applied to the embedding
only), per-user and per-category [impressions, clicks] in MutableHashTables that training fills
as new ids arrive (one table per PS task, `user_stats/shard_k` holding the ids routed to k:
`id mod N`, `to_hash_bucket_fast(key, N)` for strings), dense features, an MLP and Keras Adam.

`tf.train.Checkpoint(model=..., optimizer=...)` keys the embedding as one logical tensor
`model/item_embedding/.ATTRIBUTES/VARIABLE_VALUE` stored in slices (one per shard, each in the
data file of its PS task), and each table shard as `model/user_stats/shard_k/.ATTRIBUTES/
table-keys` and `table-values`. `build_model` without a partitioner builds the same objects on
one machine (the structure `write_fake_infer_graph` saves). tf2_cluster.py trains the model; no
flags here.
"""

import contextlib

from absl import logging
import tensorflow as tf

from freezerlib.core import atomic
from freezerlib.core import files
from freezerlib.demo import recsys_model
from freezerlib.demo.recsys_model import LABEL  # the data is recsys_model's
from freezerlib.demo.recsys_model import STATS_DIM
from freezerlib.demo.recsys_model import feature_spec

SIGNATURES = ('serving_default', 'embeddings')


def shard_rows(num_rows, num_shards):
  """(first row, rows) of each shard, as ParameterServerStrategy splits a variable ('div')."""
  num_shards = min(num_shards, num_rows)
  base, extra = divmod(num_rows, num_shards)
  out, start = [], 0
  for k in range(num_shards):
    rows = base + (1 if k < extra else 0)
    out.append((start, rows))
    start += rows
  return out


class EmbeddingPartitioner:
  """ParameterServerStrategy's `variable_partitioner`: shards the item embedding only.

  A strategy has one partitioner for every variable it creates; FixedShardsPartitioner alone
  would split the MLP's kernels and biases too, which the TF1 model keeps whole. This one
  applies `FixedShardsPartitioner(num_shards)` inside `sharding()` and leaves every other
  variable in one piece (placed round-robin on the PS tasks).
  """

  def __init__(self, num_shards):
    self._fixed = tf.distribute.experimental.partitioners.FixedShardsPartitioner(num_shards)
    self._active = False

  @contextlib.contextmanager
  def sharding(self):
    self._active = True
    try:
      yield
    finally:
      self._active = False

  def __call__(self, shape, dtype, axis=0):
    if self._active:
      return self._fixed(shape, dtype, axis)
    return [1] * len(shape)


def _item_embedding(config, partitioner):
  """The [item_buckets, embedding_dim] embedding in `config.num_partitions` shards."""
  shape = [config.item_buckets, config.embedding_dim]

  # Each shard's initial rows depend on its first row only: the strategy initialises each
  # shard on its own PS task, and one machine builds the same values shard by shard.
  def initial_value(partition_shape=None, partition_offset=None):
    rows = list(partition_shape or shape)
    first = partition_offset[0] if partition_offset else 0
    return 0.1 * tf.random.stateless_normal(rows, seed=[config.seed, first])

  if partitioner is not None:  # under ParameterServerStrategy's scope
    with partitioner.sharding():
      return tf.Variable(initial_value, shape=shape, dtype=tf.float32, name='item_embedding')
  spans = shard_rows(config.item_buckets, config.num_partitions)
  if len(spans) == 1:
    return tf.Variable(initial_value(), name='item_embedding')
  parts = [tf.Variable(initial_value([rows, config.embedding_dim], [first, 0]),
                       name='item_embedding/part_%d' % k)
           for k, (first, rows) in enumerate(spans)]
  # What the strategy builds from its shards; saved as slices of one variable.
  return tf.__internal__.distribute.ShardedVariable(parts)


class StatsTable(tf.Module):
  """A MutableHashTable of [impressions, clicks] per key, in one table per shard.

  Shard k is attribute `shard_k` (checkpoint keys `.../shard_k/.ATTRIBUTES/table-keys` and
  `table-values`) and holds the keys that route to k: `id mod N` for int64 keys,
  `to_hash_bucket_fast(key, N)` for strings, as recsys_model.ShardedStatsTable routes them.
  """

  def __init__(self, key_dtype, num_shards, devices=None, name=None):
    """Creates the tables.

    Args:
      key_dtype: tf.int64 or tf.string.
      num_shards: tables to split the keys over.
      devices: optional device of each shard ('/job:ps/replica:0/task:k'): under
        ParameterServerStrategy a table created without one lives on the coordinator.
      name: the module's name, also the tables' name prefix.
    """
    super().__init__(name=name)
    self._key_dtype = key_dtype
    self._num_shards = num_shards
    for k in range(num_shards):
      with tf.device(devices[k]) if devices else contextlib.nullcontext():
        setattr(self, 'shard_%d' % k, tf.lookup.experimental.MutableHashTable(
            key_dtype, tf.float32, default_value=[0.0] * STATS_DIM,
            name='%s_shard_%d' % (name, k)))

  @property
  def tables(self):
    return [getattr(self, 'shard_%d' % k) for k in range(self._num_shards)]

  def _shard_of(self, keys):
    return recsys_model.shard_index(keys, self._key_dtype, self._num_shards)

  def lookup(self, keys):
    """[len(keys), STATS_DIM] stats, zeros for keys not in the table."""
    if self._num_shards == 1:
      return self.shard_0.lookup(keys)
    shard = self._shard_of(keys)
    positions = tf.dynamic_partition(tf.range(tf.size(keys)), shard, self._num_shards)
    parts = tf.dynamic_partition(keys, shard, self._num_shards)
    return tf.dynamic_stitch(
        positions, [table.lookup(part) for table, part in zip(self.tables, parts)])

  def insert(self, keys, values):
    """Sets the stats of `keys` (unique) to `values`."""
    if self._num_shards == 1:
      return self.shard_0.insert(keys, values)
    shard = self._shard_of(keys)
    key_parts = tf.dynamic_partition(keys, shard, self._num_shards)
    value_parts = tf.dynamic_partition(values, shard, self._num_shards)
    return tf.group(*[table.insert(k, v)
                      for table, k, v in zip(self.tables, key_parts, value_parts)])

  def add(self, keys, labels):
    """Adds one impression per key and its label as clicks; inserts keys seen the first time."""
    unique, idx = tf.unique(keys)
    delta = tf.math.unsorted_segment_sum(
        tf.stack([tf.ones_like(labels), labels], axis=1), idx, tf.shape(unique)[0])
    return self.insert(unique, self.lookup(unique) + delta)


class Dense(tf.Module):
  """x @ kernel + bias, Glorot-uniform kernel from a fixed seed."""

  def __init__(self, in_units, units, seed, name):
    super().__init__(name=name)
    limit = (6.0 / (in_units + units)) ** 0.5
    with self.name_scope:
      self.kernel = tf.Variable(tf.random.stateless_uniform(
          [in_units, units], seed=[seed, 1], minval=-limit, maxval=limit), name='kernel')
      self.bias = tf.Variable(tf.zeros([units]), name='bias')

  def __call__(self, x):
    return tf.matmul(x, self.kernel) + self.bias


def _stats_features(stats):
  """[impressions, clicks] -> log volume and a smoothed click rate (recsys_model's features)."""
  imps, clicks = stats[:, 0], stats[:, 1]
  return tf.stack([tf.math.log1p(imps), (clicks + 0.1) / (imps + 1.0)], axis=1)


class RecsysModel(tf.Module):
  """The model; its object paths are the checkpoint's keys under `model/`.

  `item_embedding`, `user_stats/shard_k`, `category_stats/shard_k`, `hidden_i/{kernel,bias}`,
  `logit/{kernel,bias}`; `serving_default` and `embeddings` are its signatures.
  """

  def __init__(self, config, partitioner=None, table_devices=None):
    super().__init__(name='recsys')
    # The embedding comes first: the strategy places variables round-robin in creation order,
    # so shard k lands on PS task k mod N.
    self.item_embedding = _item_embedding(config, partitioner)
    self.user_stats = StatsTable(tf.int64, config.num_table_shards, table_devices, 'user_stats')
    self.category_stats = StatsTable(tf.string, config.num_table_shards, table_devices,
                                     'category_stats')
    width = config.embedding_dim + 2 * 2 + config.num_dense
    for i, units in enumerate(config.hidden_units):
      setattr(self, 'hidden_%d' % i, Dense(width, units, config.seed + i, 'hidden_%d' % i))
      width = units
    self.logit = Dense(width, 1, config.seed, 'logit')
    self._num_hidden = len(config.hidden_units)
    self._item_buckets = config.item_buckets
    self.serving_default = tf.function(self._serving_default, input_signature=[
        tf.TensorSpec([None], tf.int64, name='user_id'),
        tf.TensorSpec([None], tf.int64, name='item_id'),
        tf.TensorSpec([None], tf.string, name='category'),
        tf.TensorSpec([None, config.num_dense], tf.float32, name='dense')])
    self.embeddings = tf.function(self._embeddings, input_signature=[
        tf.TensorSpec([None], tf.int64, name='item_id'),
        tf.TensorSpec([None], tf.int64, name='user_id')])

  def _lookup_item(self, item_id):
    return tf.nn.embedding_lookup(self.item_embedding,
                                  tf.math.floormod(item_id, self._item_buckets))

  def forward(self, features):
    """dict with 'logit', 'probability', 'item_embedding', 'user_stats' and 'category_stats'."""
    item_emb = self._lookup_item(features['item_id'])
    user_raw = self.user_stats.lookup(features['user_id'])
    cat_raw = self.category_stats.lookup(features['category'])
    net = tf.concat([item_emb, _stats_features(user_raw), _stats_features(cat_raw),
                     features['dense']], axis=1)
    for i in range(self._num_hidden):
      net = tf.nn.relu(getattr(self, 'hidden_%d' % i)(net))
    logit = tf.squeeze(self.logit(net), axis=1)
    return {'logit': logit, 'probability': tf.sigmoid(logit), 'item_embedding': item_emb,
            'user_stats': user_raw, 'category_stats': cat_raw}

  def _serving_default(self, user_id, item_id, category, dense):
    out = self.forward({'user_id': user_id, 'item_id': item_id, 'category': category,
                        'dense': dense})
    return {'logit': out['logit'], 'probability': out['probability']}

  def _embeddings(self, item_id, user_id):
    return {'item_embedding': self._lookup_item(item_id),
            'user_stats': self.user_stats.lookup(user_id)}

  def signatures(self):
    """The SavedModel signatures: the same keys and outputs as recsys_model's."""
    return {'serving_default': self.serving_default, 'embeddings': self.embeddings}


def build_model(config, partitioner=None, table_devices=None):
  """The model: under ParameterServerStrategy's scope with its partitioner, or on one machine.

  Args:
    config: recsys_model.ModelConfig; `num_partitions` embedding shards, `num_table_shards`
      table shards.
    partitioner: the strategy's EmbeddingPartitioner (None: build the same shards directly).
    table_devices: device of each table shard, e.g. '/job:ps/replica:0/task:k'.
  """
  return RecsysModel(config, partitioner, table_devices)


def make_optimizer(config, model):
  """Keras Adam with its slots built for the model's variables (call in the strategy's scope).

  Building it here, not in the first training step, creates the slots on the coordinator: the
  strategy places each beside its variable's shard.
  """
  import keras  # only the trainer needs Keras
  optimizer = keras.optimizers.Adam(config.learning_rate)
  optimizer.build(model.trainable_variables)
  return optimizer


def train_step(model, optimizer, features):
  """One step: the loss, Adam on every variable, then this batch's stats into the tables.

  The table updates follow the forward lookups in program order (tf.function orders stateful
  ops on one resource), so each step sees the stats as they were before it, as in the TF1 model.
  """
  labels = features[LABEL]
  with tf.GradientTape() as tape:
    out = model.forward(features)
    loss = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=out['logit']))
  variables = model.trainable_variables
  optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  model.user_stats.add(features['user_id'], labels)
  model.category_stats.add(features['category'], labels)
  return loss


def dataset(paths, config, num_workers=1):
  """A worker's training data: TFRecord -> shard -> shuffle -> batch -> parse_example.

  Call inside a dataset_fn given to ClusterCoordinator.create_per_worker_dataset: each worker
  reads every num_workers-th record, from its own index.
  """
  ds = tf.data.TFRecordDataset(paths)
  if num_workers > 1:
    ds = ds.shard(num_workers,
                  tf.distribute.coordinator.experimental_get_current_worker_index())
  spec = feature_spec(config)
  ds = ds.shuffle(1024, seed=config.seed).repeat().batch(config.batch_size)
  return ds.map(lambda serialized: tf.io.parse_example(serialized, spec))


def save_model(model, path):
  """tf.saved_model.save of the model with its two signatures (devices are not kept)."""
  tf.saved_model.save(model, path, signatures=model.signatures())


def write_fake_infer_graph(output_dir, config, overwrite=False):
  """Writes OUTPUT_DIR/saved_model: the TF2 model's structure on one machine, without values.

  The same object paths, variable shapes, embedding shards and table shards as the model
  tf2_cluster trains with `config.num_table_shards` PS tasks and `config.num_partitions`
  embedding shards, no optimizer; variables hold their initial values and the tables are
  empty. tf.train.Checkpoint(model=...) of the loaded SavedModel reads the training
  checkpoint (with expect_partial: the optimizer's part is not used).

  Args:
    output_dir: directory to create (atomically), holding saved_model/.
    config: recsys_model.ModelConfig as in training.
    overwrite: replace an existing `output_dir`.

  Returns:
    dict with the 'saved_model' path.

  Raises:
    errors.UserError: `output_dir` exists (without `overwrite`) or cannot be written.
  """
  with atomic.atomic_output(output_dir, overwrite) as tmp:
    model = build_model(config)
    save_model(model, files.join(tmp, 'saved_model'))
  logging.info('structure of %d embedding shards and %d table shards written',
               len(shard_rows(config.item_buckets, config.num_partitions)),
               config.num_table_shards)
  return {'saved_model': files.join(output_dir, 'saved_model')}
