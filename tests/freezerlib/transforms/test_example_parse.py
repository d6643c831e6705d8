"""transforms/example_parse: a parse op cut down to the features the signatures read, its
outputs renumbered for every consumer, for both ParseExample and ParseExampleV2."""

import numpy as np
import tensorflow as tf

from freezerlib.transforms import example_parse
import small_graphs

tf1 = tf.compat.v1


def _example(**features):
  feats = {}
  for name, values in features.items():
    if isinstance(values[0], bytes):
      feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    else:
      feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _run(graph_def, fetches, feeds):
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(graph_def, name='')
    with tf1.Session(graph=graph) as session:
      return session.run(fetches, feeds)


def _trim(graph_def, outputs, new_names):
  sigs = {'s': small_graphs.signature({'examples': 'serialized:0'}, outputs)}
  taken = {n.name for n in graph_def.node}
  return example_parse.trim(graph_def, sigs, new_names, 'serialized', taken)


def test_parse_example_v1_keeps_what_is_read():
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name='serialized')
    parsed = tf.raw_ops.ParseExample(
        serialized=serialized, names=tf.constant([], tf.string),
        sparse_keys=[tf.constant('a'), tf.constant('b')],
        dense_keys=[tf.constant('c'), tf.constant('d')],
        dense_defaults=[tf.constant([], tf.float32), tf.constant([0.0, 0.0])],
        sparse_types=[tf.float32, tf.string], dense_shapes=[[1], [2]], name='parse')
    tf.identity(parsed.sparse_values[1], name='b_values')
    tf.identity(parsed.sparse_indices[1], name='b_indices')
    tf.identity(parsed.dense_values[1], name='d')
    tf.identity(parsed.dense_values[0], name='c')  # the label: nothing serving reads
  graph_def = graph.as_graph_def()
  kept, dropped, required = _trim(graph_def, {'b': 'b_values:0', 'bi': 'b_indices:0', 'd': 'd:0'},
                                  {'parse', 'c'})
  assert (kept, dropped, required) == (['b', 'd'], ['a', 'c'], ['c'])  # c had no default
  nodes = {n.name: n for n in graph_def.node}
  assert 'c' not in nodes  # a copied node nothing needs goes
  parse = nodes['parse']
  assert (parse.attr['Nsparse'].i, parse.attr['Ndense'].i) == (1, 1)
  assert list(parse.attr['sparse_types'].list.type) == [tf.string.as_datatype_enum]
  assert [list(nodes[n].input) for n in ('b_values', 'b_indices', 'd')] == [
      ['parse:1'], ['parse:0'], ['parse:3']]
  got = _run(graph_def, ['b_values:0', 'b_indices:0', 'd:0'],
             {'serialized:0': [_example(b=[b'x', b'y'], d=[1.0, 2.0])]})  # no c: not required
  assert got[0].tolist() == [b'x', b'y'] and got[1].tolist() == [[0, 0], [0, 1]]
  assert got[2].tolist() == [[1.0, 2.0]]


def test_parse_example_v2_with_ragged_features():
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name='serialized')
    parsed = tf.io.parse_example(serialized, {
        'label': tf.io.FixedLenFeature([], tf.float32),
        'x': tf.io.FixedLenFeature([2], tf.float32),
        'r': tf.io.RaggedFeature(tf.string), 'unused': tf.io.RaggedFeature(tf.float32),
        's': tf.io.VarLenFeature(tf.float32)})
    tf.identity(parsed['x'], name='x')
    tf.identity(parsed['r'].flat_values, name='r_values')
    tf.identity(parsed['r'].row_splits, name='r_splits')
    tf.identity(parsed['s'].values, name='s_values')
  graph_def = graph.as_graph_def()
  parse = [n.name for n in graph_def.node if n.op == 'ParseExampleV2'][0]
  kept, dropped, required = _trim(
      graph_def, {'x': 'x:0', 'rv': 'r_values:0', 'rs': 'r_splits:0', 's': 's_values:0'},
      {parse})
  assert sorted(kept) == ['r', 's', 'x'] and sorted(dropped) == ['label', 'unused']
  assert required == ['label']
  nodes = {n.name: n for n in graph_def.node}
  served = [nodes[name].attr['value'].tensor.string_val for name in nodes[parse].input[2:5]]
  assert [list(s) for s in served] == [[b's'], [b'x'], [b'r']]
  got = _run(graph_def, ['x:0', 'r_values:0', 'r_splits:0', 's_values:0'],
             {'serialized:0': [_example(x=[1.0, 2.0], r=[b'a'], s=[5.0]),
                               _example(x=[3.0, 4.0], r=[b'b', b'c'], s=[6.0])]})
  np.testing.assert_array_equal(got[0], [[1.0, 2.0], [3.0, 4.0]])
  assert got[1].tolist() == [b'a', b'b', b'c'] and got[2].tolist() == [0, 1, 3]
  assert got[3].tolist() == [5.0, 6.0]


def test_a_parse_op_nobody_reads_or_with_computed_keys_is_left_alone():
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name='serialized')
    key = tf.strings.join(['a', 'b'])  # not a constant
    parsed = tf.raw_ops.ParseExample(
        serialized=serialized, names=tf.constant([], tf.string), sparse_keys=[],
        dense_keys=[key], dense_defaults=[tf.constant([0.0])], sparse_types=[],
        dense_shapes=[[1]], name='parse')
    tf.identity(parsed.dense_values[0], name='y')
  graph_def = graph.as_graph_def()
  before = graph.as_graph_def()
  assert _trim(graph_def, {'y': 'y:0'}, {'parse'}) == ([], [], [])
  assert graph_def == before
