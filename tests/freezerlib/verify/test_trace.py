"""verify/trace: where a signature input's values go (tables, a parser's features, the rows of
an embedding), through pass-through ops and into library functions."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.verify import trace
import small_graphs

tf1 = tf.compat.v1


@pytest.fixture(scope='module')
def tracer():
  graph = tf.Graph()
  with graph.as_default():
    small_graphs.lookups()
  return trace.Tracer(graph.as_graph_def())


def test_ids_reach_both_table_shards_and_an_embedding(tracer):
  found = tracer.trace('ids:0')
  assert sorted(t.name for t in found.tables) == ['shard_a', 'shard_b']
  assert found.bound == 40 and found.features is None
  found = tracer.trace('words:0')
  assert [t.name for t in found.tables] == ['vocab'] and found.bound is None
  assert tracer.trace('dense:0') == trace.Trace()


def test_a_parser_is_followed_to_its_features(tracer):
  features = tracer.trace('serialized:0').features
  assert sorted(features) == ['age', 'tags']
  age, tags = features['age'], features['tags']
  assert (age.kind, age.dtype, age.shape, age.required) == ('dense', tf.float32, (2,), True)
  assert (tags.kind, tags.dtype, tags.shape, tags.required) == ('sparse', tf.string, None, False)
  assert age.trace == trace.Trace() and tags.trace == trace.Trace()


def test_features_of_every_kind_and_where_they_go():
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name='serialized')
    parsed = tf.io.parse_example(serialized, {
        'r': tf.io.RaggedFeature(tf.int64), 'd': tf.io.FixedLenFeature([], tf.int64, 0),
        's': tf.io.VarLenFeature(tf.int64)})
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant([1], tf.int64), tf.constant([1.0])), 0.0, name='table')
    table.lookup(parsed['r'].values)
    tf.gather(tf.zeros([9]), parsed['d'])
    table.lookup(tf.sparse.fill_empty_rows(parsed['s'], tf.constant(0, tf.int64))[0].values)
  features = trace.Tracer(graph.as_graph_def()).trace('serialized:0').features
  assert {k: (f.kind, f.required) for k, f in features.items()} == {
      'r': ('ragged', False), 'd': ('dense', False), 's': ('sparse', False)}
  assert [t.name for t in features['r'].trace.tables] == ['table']
  assert features['d'].trace.bound == 9
  assert [t.name for t in features['s'].trace.tables] == ['table']  # through SparseFillEmptyRows


def test_into_the_functions_of_a_tf2_saved_model(tmp_path):
  module = tf.Module()
  module.emb = tf.Variable(np.ones((7, 2), np.float32))
  module.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant([3], tf.int64), tf.constant([1.0])), 0.0)
  module.f = tf.function(
      lambda ids: {'y': module.table.lookup(ids) + tf.gather(module.emb, ids)[:, 0]},
      input_signature=[tf.TensorSpec([None], tf.int64, name='ids')])
  tf.saved_model.save(module, str(tmp_path / 'm'), signatures=module.f)
  meta_graph = meta_graph_of(str(tmp_path / 'm'))
  name = meta_graph.signature_def['serving_default'].inputs['ids'].name
  found = trace.Tracer(meta_graph.graph_def).trace(name)
  # The table and the variable are found where the graph makes them, outside the function.
  assert [t.op for t in found.tables] == ['HashTableV2']
  assert found.tables[0].name in {n.name for n in meta_graph.graph_def.node}
  assert found.bound == 7


def test_source_through_identities():
  graph_def = small_graphs.graph_def('''
      node { name: "v" op: "VarHandleOp" }
      node { name: "a" op: "Identity" input: "v" }
      node { name: "r" op: "ReadVariableOp" input: "a" }
      node { name: "b" op: "Identity" input: "gone" }''')
  tracer = trace.Tracer(graph_def)
  top = tracer._top
  assert tracer.source(top, 'r:0')[1].name == 'v'
  assert tracer.source(top, 'b') is None


@pytest.mark.parametrize('strategy', ['div', 'mod'])
def test_ids_of_a_partitioned_embedding_are_bounded_by_its_rows(strategy):
  """embedding_lookup over 3 partitions of 10 rows together: the ids reach no gather as they
  are, only through the partition arithmetic; ids past 10 make a partition index no partition
  has (div) or a row past a partition (mod)."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    parts = [tf1.get_variable('emb/part_%d' % i, [r, 2]) for i, r in enumerate((4, 3, 3))]
    tf.identity(tf1.nn.embedding_lookup(parts, ids, partition_strategy=strategy), name='out')
    small = tf1.placeholder(tf.int64, [None], name='small')
    tf.debugging.assert_less(small, tf.constant(7, tf.int64))
  tracer = trace.Tracer(graph.as_graph_def())
  assert tracer.trace('ids:0').bound == 10
  assert tracer.trace('small:0').bound == 7
