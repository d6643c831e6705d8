"""object_graph: which index keys each object of a TF2 checkpoint's object graph owns."""


import tensorflow as tf

from freezerlib.core import graphs
from freezerlib.formats import checkpoint_index as ci
from freezerlib.formats import object_graph

tf1 = tf.compat.v1


def test_keys_by_object_gives_each_variable_and_table_its_keys(tmp_path):
  table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=0.0)
  table.insert(tf.constant([1, 2], tf.int64), tf.constant([0.5, 1.5]))
  prefix = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0]), t=table).write(str(tmp_path / 'c'))
  index = ci.read_index(prefix)
  graph = object_graph.read_object_graph(index)
  paths = {p: i for i, p in graphs.object_paths(graph).items()}
  owned, stray = object_graph.keys_by_object(graph, index)
  assert stray == []
  assert dict(owned[paths['v']]) == {
      'VARIABLE_VALUE': [('v/.ATTRIBUTES/VARIABLE_VALUE', '')]}
  assert dict(owned[paths['t']]) == {'table': [('t/.ATTRIBUTES/table-keys', '-keys'),
                                               ('t/.ATTRIBUTES/table-values', '-values')]}
