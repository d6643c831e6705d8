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

Example:
  python model_gen.py --output_dir=/tmp/freezer_demo/model --steps=200 --seed=7
"""

import dataclasses
import os

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
    'num_partitions', 3, 'Partitions of the item embedding (fixed_size_partitioner).',
    lower_bound=1)
_NUM_DENSE = flags.DEFINE_integer(
    'num_dense', 4, 'Dense float features per example.', lower_bound=1)
_HIDDEN_UNITS = flags.DEFINE_list(
    'hidden_units', ['32', '16'], 'Widths of the MLP hidden layers.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Training batch size.', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 100, 'Training steps.', lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 0.01, 'Adam learning rate.', lower_bound=0)

LABEL = 'label'
STATS_DIM = 2  # [impressions, clicks] per id


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


def input_fn(paths, config):
  """The training reader: TFRecord -> batch -> parse_example; returns the features dict."""
  ds = tf.data.TFRecordDataset(paths)
  ds = ds.shuffle(1024, seed=config.seed).repeat().batch(config.batch_size)
  spec = feature_spec(config)
  ds = ds.map(lambda serialized: tf.io.parse_example(serialized, spec))
  return tf1.data.make_one_shot_iterator(ds).get_next()


def _stats_features(stats):
  """Turns [impressions, clicks] into model inputs: log volume and a smoothed click rate."""
  imps, clicks = stats[:, 0], stats[:, 1]
  return tf.stack([tf.math.log1p(imps), (clicks + 0.1) / (imps + 1.0)], axis=1)


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


def build_model(features, config, training):
  """The model, shared by training and (later) the fake inference graph.

  Args:
    features: dict with 'user_id' [B] int64, 'item_id' [B] int64, 'category' [B] string,
      'dense' [B, num_dense] float32, and, when training, 'label' [B] float32.
    config: ModelConfig.
    training: also build the table updates, loss and Adam step.

  Returns:
    dict with 'logit', 'probability', 'item_embedding', 'user_stats' tensors, and
    'train_op' when training.
  """
  user_stats = tf.lookup.experimental.MutableHashTable(
      tf.int64, tf.float32, default_value=[0.0] * STATS_DIM, name='user_stats')
  category_stats = tf.lookup.experimental.MutableHashTable(
      tf.string, tf.float32, default_value=[0.0] * STATS_DIM, name='category_stats')
  user_raw = user_stats.lookup(features['user_id'])
  cat_raw = category_stats.lookup(features['category'])

  embedding = tf1.get_variable(
      'item_embedding', [config.item_buckets, config.embedding_dim],
      initializer=tf1.random_normal_initializer(stddev=0.1, seed=config.seed),
      partitioner=tf1.fixed_size_partitioner(config.num_partitions))
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
        ckpt_dir = utils.join(tmp, 'ckpt')
        tf.io.gfile.makedirs(ckpt_dir)
        saver.save(sess, utils.join(ckpt_dir, 'model.ckpt'), global_step=config.steps)
        builder = tf1.saved_model.Builder(utils.join(tmp, 'saved_model'))
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map=serving_signatures(features, outputs),
            strip_default_attrs=True)
        builder.save()
  ckpt_dir = utils.join(output_dir, 'ckpt')
  return {
      'saved_model': utils.join(output_dir, 'saved_model'),
      'checkpoint': utils.join(ckpt_dir, 'model.ckpt-%d' % config.steps),
      'data': utils.join(output_dir, 'data'),
      'loss': float(loss),
  }


def _config_from_flags():
  try:
    hidden = tuple(int(u) for u in _HIDDEN_UNITS.value)
  except ValueError as e:
    raise utils.UserError('--hidden_units must be integers, got %s' % _HIDDEN_UNITS.value) from e
  if any(u < 1 for u in hidden):
    raise utils.UserError('--hidden_units must be positive, got %s' % _HIDDEN_UNITS.value)
  return ModelConfig(
      num_examples=cli_flags.value_or_default(cli_flags.NUM_EXAMPLES, 4096),
      num_users=_NUM_USERS.value,
      num_categories=_NUM_CATEGORIES.value, item_buckets=_ITEM_BUCKETS.value,
      embedding_dim=_EMBEDDING_DIM.value, num_partitions=_NUM_PARTITIONS.value,
      num_dense=_NUM_DENSE.value, hidden_units=hidden, batch_size=_BATCH_SIZE.value,
      steps=_STEPS.value, learning_rate=_LEARNING_RATE.value,
      seed=cli_flags.value_or_default(cli_flags.SEED, 42))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    config = _config_from_flags()
    if config.num_partitions > config.item_buckets:
      raise utils.UserError('--num_partitions (%d) exceeds --item_buckets (%d)'
                            % (config.num_partitions, config.item_buckets))
    result = train_and_export(_OUTPUT_DIR.value, config, cli_flags.OVERWRITE.value)
    logging.info('final loss %.4f', result['loss'])
    logging.info('checkpoint: %s', result['checkpoint'])
    logging.info('SavedModel: %s', result['saved_model'])
    print(result['saved_model'])

  return utils.run_cli('model_gen.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('output_dir')
  app.run(main)
