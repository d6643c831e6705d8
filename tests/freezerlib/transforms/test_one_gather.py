"""transforms.one_gather: a partitioned embedding lookup becomes one gather, exactly.

Small frozen graphs (embedding_lookup over a partitioned variable, frozen with TensorFlow's own
convert_variables_to_constants) answer every id in range the same before and after, and refuse
the same ids out of range.
"""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.transforms import one_gather

tf1 = tf.compat.v1


def _frozen_lookup(rows, parts, strategy, resource=True, ids_shape=(None,), extra_read=False):
  """(frozen GraphDef, output node name) of embedding_lookup(ids) over a [rows, 3] variable
  of `parts` parts."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, ids_shape, name='ids')
    emb = tf1.get_variable('emb', [rows, 3], initializer=tf1.random_normal_initializer(seed=1),
                           partitioner=tf1.fixed_size_partitioner(parts),
                           use_resource=resource)
    out = tf1.nn.embedding_lookup(emb, ids, partition_strategy=strategy, name='lookup')
    out = tf.identity(out, name='out')
    outputs = ['out']
    if extra_read:  # a part read by something else too
      tf.reduce_sum(emb._get_variable_list()[0], name='part_sum')
      outputs.append('part_sum')
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      frozen = tf1.graph_util.convert_variables_to_constants(
          session, graph.as_graph_def(), outputs)
  return frozen


def _run(graph_def, ids, fetch='out:0'):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  with tf1.Session(graph=graph) as session:
    return session.run(fetch, {'ids:0': ids})


def _outcome(graph_def, ids):
  try:
    return _run(graph_def, ids)
  except tf.errors.InvalidArgumentError:
    return 'refused'


@pytest.mark.parametrize('strategy', ['mod', 'div'])
@pytest.mark.parametrize('rows,parts', [(10, 3), (12, 4), (7, 2)])
def test_every_id_answers_and_every_bad_id_fails_as_before(strategy, rows, parts):
  frozen = _frozen_lookup(rows, parts, strategy, resource=(rows != 7))
  merged = tf1.GraphDef()
  merged.CopyFrom(frozen)
  done = one_gather.merge_partitioned_lookups(merged, keep=['out', 'ids'])
  assert [(d.strategy, d.parts, d.rows) for d in done] == [(strategy, parts, rows)]
  ops = [n.op for n in merged.node]
  assert 'DynamicPartition' not in ops and 'ParallelDynamicStitch' not in ops
  assert ops.count('GatherV2') == 1
  # Every node the old lookup alone needed is gone: the parts, the split, the stitch.
  assert not [n.name for n in merged.node if '/part_' in n.name]
  ids = np.arange(rows, dtype=np.int64)
  np.testing.assert_array_equal(_run(merged, ids), _run(frozen, ids))  # bit for bit
  shuffled = np.random.RandomState(0).permutation(np.repeat(ids, 3))
  np.testing.assert_array_equal(_run(merged, shuffled), _run(frozen, shuffled))
  np.testing.assert_array_equal(_run(merged, ids[:0]), _run(frozen, ids[:0]))  # no ids
  for bad in (-1, -parts, rows, rows + 1, rows + parts, 2**31, -2**31):
    assert _outcome(frozen, np.array([1, bad], np.int64)) == 'refused', bad
    assert _outcome(merged, np.array([1, bad], np.int64)) == 'refused', bad
  far = np.array([1, 2**62, -2**63 + 1], np.int64)
  assert _outcome(merged, far) == 'refused'
  if strategy == 'mod':
    assert _outcome(frozen, far) == 'refused'
  # (`div` casts its part to int32: TensorFlow's own lookup wraps around for such ids; see
  # one_gather's doc.)


def test_div_wraps_around_far_out_where_the_one_gather_refuses():
  frozen = _frozen_lookup(10, 3, 'div')
  far = np.array([-2**63 + 1], np.int64)
  np.testing.assert_array_equal(_run(frozen, far), _run(frozen, np.array([1], np.int64)))


def test_ids_of_any_shape_keep_their_shape():
  frozen = _frozen_lookup(10, 3, 'mod', ids_shape=(None, None))
  merged = tf1.GraphDef()
  merged.CopyFrom(frozen)
  assert one_gather.merge_partitioned_lookups(merged, keep=['out', 'ids'])
  ids = np.array([[0, 9, 4], [5, 5, 1]], np.int64)
  got = _run(merged, ids)
  assert got.shape == (2, 3, 3)
  np.testing.assert_array_equal(got, _run(frozen, ids))


def test_a_part_read_elsewhere_is_left_as_it_is():
  frozen = _frozen_lookup(10, 3, 'mod', extra_read=True)
  merged = tf1.GraphDef()
  merged.CopyFrom(frozen)
  assert one_gather.merge_partitioned_lookups(merged, keep=['out', 'ids', 'part_sum']) == []
  assert merged == frozen


def test_other_assignments_are_not_taken_for_mod_or_div():
  """A lookup whose partition assignment is neither strategy (here: ids clipped into range
  before the split, so out-of-range ids find rows) is verified and left alone."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    parts = [tf.constant(np.arange(12, dtype=np.float32).reshape(6, 2) + 100 * k,
                         name='emb/part_%d' % k) for k in range(2)]
    flat = tf.reshape(ids, [-1])
    clipped = tf.clip_by_value(flat, 0, 11)
    assignment = tf.cast(clipped % 2, tf.int32)
    rows = tf.dynamic_partition(clipped // 2, assignment, 2)
    positions = tf.dynamic_partition(tf.range(tf.size(flat)), assignment, 2)
    gathered = [tf.gather(p, r) for p, r in zip(parts, rows)]
    tf.identity(tf.dynamic_stitch(positions, gathered), name='out')
  graph_def = graph.as_graph_def()
  before = tf1.GraphDef()
  before.CopyFrom(graph_def)
  assert one_gather.merge_partitioned_lookups(graph_def, keep=['out', 'ids']) == []
  assert graph_def == before
