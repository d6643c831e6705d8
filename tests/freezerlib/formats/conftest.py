"""Fixtures shared by the checkpoint format tests."""

import numpy as np
import pytest
import tensorflow as tf

tf1 = tf.compat.v1


@pytest.fixture(scope='module')
def saver_checkpoint(tmp_path_factory):
  """A tf.compat.v1 Saver's checkpoint: `emb` [200, 3] in 3 partitions, `w`, `other`.

  Returns:
    (prefix, {name: value}, partition specs of emb, {spec: partition value}).
  """
  directory = tmp_path_factory.mktemp('saver')
  graph = tf.Graph()
  with graph.as_default():
    emb = tf1.get_variable('emb', [200, 3], partitioner=tf1.fixed_size_partitioner(3),
                           initializer=tf1.random_normal_initializer(seed=1))
    w = tf1.get_variable('w', initializer=tf.constant([[1.0, 2.0]]))
    other = tf1.get_variable('other', initializer=tf.constant(7, tf.int64))
    saver = tf1.train.Saver()
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      prefix = saver.save(session, str(directory / 'model.ckpt'))
      parts = {v._save_slice_info.spec: session.run(v) for v in emb}
      values = {'emb': np.concatenate(list(parts.values())), 'w': session.run(w),
                'other': session.run(other)}
  return prefix, values, sorted(parts), parts
