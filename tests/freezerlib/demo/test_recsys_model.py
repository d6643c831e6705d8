"""demo/recsys_model: the demo model's data, reader, tables and graph, without training it.

(Training and exporting it: tests/test_model_gen.py; on a cluster: test_model_gen_distributed.)
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.demo import recsys_model

tf1 = tf.compat.v1
SMALL = recsys_model.ModelConfig(num_examples=40, num_users=7, num_categories=5,
                                 item_buckets=11, num_dense=3, batch_size=8, seed=5)


def test_config_is_frozen_and_its_defaults_train_in_seconds():
  config = recsys_model.ModelConfig()
  assert (config.num_examples, config.steps, config.num_partitions) == (4096, 100, 3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.steps = 1


def test_examples_are_seeded_and_in_range():
  data = recsys_model.generate_examples(SMALL)
  assert sorted(data) == ['category', 'dense', 'item_id', 'label', 'user_id']
  assert {k: (v.shape, v.dtype) for k, v in data.items()} == {
      'user_id': ((40,), np.int64), 'item_id': ((40,), np.int64), 'category': ((40,), object),
      'dense': ((40, 3), np.float32), 'label': ((40,), np.float32)}
  users = recsys_model._user_ids(SMALL)
  assert set(data['user_id']) <= set(users) and users.min() > 2**31  # ids, not row numbers
  assert set(data['category']) <= set(recsys_model.category_names(SMALL))
  assert recsys_model.category_names(SMALL).tolist() == [b'cat_%03d' % i for i in range(5)]
  assert 0 <= data['item_id'].min() and data['item_id'].max() < 110
  assert set(data['label']) <= {0.0, 1.0}
  again = recsys_model.generate_examples(SMALL)
  assert all(np.array_equal(data[k], again[k]) for k in data)
  other = recsys_model.generate_examples(dataclasses.replace(SMALL, seed=6))
  assert not np.array_equal(data['dense'], other['dense'])


def test_examples_round_trip_through_tfrecords(tmp_path):
  data = recsys_model.generate_examples(SMALL)
  paths = recsys_model.write_tfrecords(data, str(tmp_path / 'data'), 3)
  assert [p.rsplit('/', 1)[-1] for p in paths] == ['train-%05d-of-00003.tfrecord' % i
                                                   for i in range(3)]
  spec = recsys_model.feature_spec(SMALL)
  for k, path in enumerate(paths):  # round robin: file k holds rows k, k + 3, ...
    rows = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(path)]
    assert [int(r['user_id']) for r in rows] == data['user_id'][k::3].tolist()
    np.testing.assert_array_equal(np.stack([r['dense'] for r in rows]), data['dense'][k::3])
    assert [r['category'].numpy() for r in rows] == data['category'][k::3].tolist()
  example = recsys_model.make_example({'i': np.int64(3), 'f': np.float32(0.5), 's': b'x'})
  kinds = {k: v.WhichOneof('kind') for k, v in example.features.feature.items()}
  assert kinds == {'i': 'int64_list', 'f': 'float_list', 's': 'bytes_list'}


def test_reader_batches_and_parses(tmp_path):
  paths = recsys_model.write_tfrecords(recsys_model.generate_examples(SMALL),
                                       str(tmp_path / 'data'), 2)
  with tf.Graph().as_default():
    features = recsys_model.input_fn(paths, SMALL)
    assert features['user_id'].op.type == 'IteratorGetNext'
    with tf1.Session() as session:
      batch = session.run(features)
  assert {k: v.shape for k, v in batch.items()} == {
      'user_id': (8,), 'item_id': (8,), 'category': (8,), 'dense': (8, 3), 'label': (8,)}
  with tf.Graph().as_default():
    placeholders = recsys_model.placeholder_features(SMALL)
    assert {k: (v.op.name, v.dtype, v.shape.as_list()) for k, v in placeholders.items()} == {
        'user_id': ('user_id', tf.int64, [None]), 'item_id': ('item_id', tf.int64, [None]),
        'category': ('category', tf.string, [None]), 'dense': ('dense', tf.float32, [None, 3])}


@pytest.mark.parametrize('key_dtype,keys', [
    (tf.int64, [4, 7, 10, 3, 8]), (tf.string, [b'a', b'bb', b'ccc', b'dddd', b'e'])])
def test_sharded_stats_table_routes_keys_to_shards(key_dtype, keys):
  with tf.Graph().as_default():
    table = recsys_model.ShardedStatsTable(key_dtype, 'stats', 2)
    one = recsys_model.ShardedStatsTable(key_dtype, 'single', 1)
    assert [t.resource_handle.op.name for t in table.tables] == ['stats/shard_0', 'stats/shard_1']
    assert one.tables[0].resource_handle.op.name == 'single'
    keys_t = tf.constant(keys, key_dtype)
    values = tf.constant([[i, 10.0 * i] for i in range(5)], tf.float32)
    inserts = [table.insert(keys_t[:3], values[:3]), one.insert(keys_t[:3], values[:3])]
    lookups = [table.lookup(keys_t), one.lookup(keys_t)]
    shards = table.shard_of(keys_t)
    per_shard = [t.export()[0] for t in table.tables]
    with tf1.Session() as session:
      session.run(inserts)
      sharded, single = session.run(lookups)
      shard_of, exported = session.run([shards, per_shard])
  expected = [[0, 0], [1, 10], [2, 20], [0, 0], [0, 0]]  # unseen keys: zeros
  assert sharded.tolist() == expected and single.tolist() == expected
  if key_dtype == tf.int64:
    assert shard_of.tolist() == [k % 2 for k in keys]
  for k in range(2):  # each shard holds exactly the keys routed to it
    assert sorted(exported[k].tolist()) == sorted(
        key for key, s in zip(keys[:3], shard_of[:3]) if s == k)


def test_deterministic_ops_restores_the_setting():
  from tensorflow.python.framework import config as tf_config
  before = tf_config.is_op_determinism_enabled()
  with recsys_model.deterministic_ops():
    assert tf_config.is_op_determinism_enabled()
  assert tf_config.is_op_determinism_enabled() == before


def test_the_serving_graph_and_its_signatures():
  with tf.Graph().as_default():
    features = recsys_model.placeholder_features(SMALL)
    outputs = recsys_model.build_model(features, SMALL, training=False)
    assert sorted(outputs) == ['item_embedding', 'logit', 'probability', 'user_stats']
    assert outputs['user_stats'].shape.as_list() == [None, recsys_model.STATS_DIM]
    parts = [v.op.name for v in tf1.global_variables() if v.op.name.startswith('item_embedding')]
    assert parts == ['item_embedding/part_%d' % k for k in range(3)]
    sigs = recsys_model.serving_signatures(features, outputs)
  assert sorted(sigs) == ['embeddings', 'serving_default']
  assert sorted(sigs['serving_default'].inputs) == ['category', 'dense', 'item_id', 'user_id']
  assert sorted(sigs['serving_default'].outputs) == ['logit', 'probability']
  assert sorted(sigs['embeddings'].outputs) == ['item_embedding', 'user_stats']
