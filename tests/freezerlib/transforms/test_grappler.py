"""transforms/grappler: Grappler's inference passes keep the named nodes and the answers."""

import numpy as np
import tensorflow as tf

from freezerlib.transforms import grappler

tf1 = tf.compat.v1


def test_constants_fold_and_kept_nodes_survive():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    scale = tf.add(tf.constant(2.0), tf.constant(3.0), name='scale')
    tf.identity(tf.identity(x * scale), name='y')
    tf.no_op(name='init')
    tf.multiply(x, 7.0, name='unused')
  graph_def = graph.as_graph_def()
  graph_def.versions.producer = 555
  out = grappler.grappler_optimize(graph_def, ['x', 'y', 'init'])
  names = {n.name: n.op for n in out.node}
  assert names['x'] == 'Placeholder' and names['y'] == 'Identity' and names['init'] == 'NoOp'
  assert names['scale'] == 'Const' and 'AddV2' not in names.values()  # folded: 5.0
  scale = [n for n in out.node if n.name == 'scale'][0]
  assert tf.make_ndarray(scale.attr['value'].tensor) == 5.0
  assert 'unused' not in names  # nothing kept needs it
  assert len(out.node) < len(graph_def.node)
  assert out.versions.producer == 555
  with tf.Graph().as_default() as optimized:
    tf.graph_util.import_graph_def(out, name='')
    with tf1.Session(graph=optimized) as session:
      got = session.run('y:0', {'x:0': np.array([1.0, -2.0], np.float32)})
  np.testing.assert_array_equal(got, [5.0, -10.0])
