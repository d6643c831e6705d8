"""demo/tf2_recsys_model: the TF2 form of the demo model, its shards and tables, untrained.

(Trained by a ParameterServerStrategy cluster and exported: tests/test_model_gen_tf2.py.)
"""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.demo import recsys_model
from freezerlib.demo import tf2_recsys_model

CONFIG = recsys_model.ModelConfig(item_buckets=11, embedding_dim=2, num_partitions=3,
                                  num_dense=2, hidden_units=(4,), num_table_shards=2, seed=9)


@pytest.mark.parametrize('rows,shards,spans', [
    (11, 3, [(0, 4), (4, 4), (8, 3)]), (9, 3, [(0, 3), (3, 3), (6, 3)]), (2, 5, [(0, 1), (1, 1)]),
    (5, 1, [(0, 5)])])
def test_shard_rows_as_the_strategy_splits(rows, shards, spans):
  assert tf2_recsys_model.shard_rows(rows, shards) == spans


def test_partitioner_shards_the_embedding_only():
  partitioner = tf2_recsys_model.EmbeddingPartitioner(3)
  shape = tf.TensorShape([11, 2])
  assert partitioner(shape, tf.float32) == [1, 1]
  with partitioner.sharding():
    assert list(partitioner(shape, tf.float32)) == [3, 1]
  assert partitioner(shape, tf.float32) == [1, 1]


def test_model_on_one_machine_has_the_clusters_shards(tmp_path):
  model = tf2_recsys_model.build_model(CONFIG)
  parts = model.item_embedding.variables
  assert [p.shape.as_list() for p in parts] == [[4, 2], [4, 2], [3, 2]]
  # Each shard's initial rows depend on its first row only, as each PS task makes its own.
  expected = 0.1 * tf.random.stateless_normal([4, 2], seed=[CONFIG.seed, 4])
  np.testing.assert_array_equal(parts[1].numpy(), expected.numpy())
  prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / 'c'))
  keys = dict(tf.train.list_variables(prefix))
  # The embedding is one logical tensor, saved in slices; a table per shard.
  assert keys['model/item_embedding/.ATTRIBUTES/VARIABLE_VALUE'] == [11, 2]
  assert {'model/user_stats/shard_1/.ATTRIBUTES/table-keys',
          'model/category_stats/shard_0/.ATTRIBUTES/table-values'} <= set(keys)


def test_stats_tables_route_keys_and_add_counts():
  table = tf2_recsys_model.StatsTable(tf.int64, 2, name='s')
  keys = tf.constant([4, 7, 4, 9], tf.int64)
  table.add(keys, tf.constant([1.0, 0.0, 1.0, 1.0]))
  got = table.lookup(tf.constant([4, 7, 9, 2], tf.int64)).numpy()
  assert got.tolist() == [[2.0, 2.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
  held = [sorted(t.export()[0].numpy().tolist()) for t in table.tables]
  assert held == [[4], [7, 9]]  # id mod 2


def test_signatures_answer_for_any_ids():
  model = tf2_recsys_model.build_model(CONFIG)
  out = model.serving_default(
      user_id=tf.constant([1, 2**62], tf.int64), item_id=tf.constant([5, 10**9], tf.int64),
      category=tf.constant([b'a', b'b']), dense=tf.zeros([2, 2]))
  assert sorted(out) == ['logit', 'probability'] and out['probability'].shape == [2]
  assert np.all((out['probability'].numpy() > 0) & (out['probability'].numpy() < 1))
  emb = model.embeddings(item_id=tf.constant([16], tf.int64), user_id=tf.constant([3], tf.int64))
  np.testing.assert_array_equal(emb['item_embedding'].numpy()[0],
                                model.item_embedding.variables[1].numpy()[1])  # row 16 % 11
  assert sorted(model.signatures()) == sorted(tf2_recsys_model.SIGNATURES)
