"""formats.checkpoint_files: a checkpoint's data files are named as TensorFlow names them."""

import tensorflow as tf

from freezerlib.formats import checkpoint_files


def test_data_path_is_tensorflows_name(tmp_path):
  assert checkpoint_files.data_path('a/model.ckpt-7', 11, 12) == (
      'a/model.ckpt-7.data-00011-of-00012')
  prefix = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).write(str(tmp_path / 'ckpt'))
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ['ckpt.index', checkpoint_files.data_path('ckpt', 0, 1)])
  assert prefix == str(tmp_path / 'ckpt')
