"""verify/serving_check: TF Serving's C++ loader loads a SavedModel and runs each signature."""

import os
import struct

import pytest

from conftest import tf_serving_model
from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.verify import serving_check
import small_graphs


def test_a_model_with_variables_and_a_table_passes(tmp_path):
  path = small_graphs.stateful_model(tmp_path / 'm')
  assert serving_check.check_saved_model(path) > 0


def _static_table_model(export_dir, fill_at_load):
  """A TF1 SavedModel with a static table; its main op fills the table, or does nothing."""
  tf = lean_tf.tensorflow
  tf1 = tf.compat.v1

  def build():
    words = tf1.placeholder(tf.string, [None], name='words')
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(['a', 'b'], tf.constant([1, 2], tf.int64)), -1)
    return {'words': words}, {'ids': table.lookup(words)}

  main_op = tf1.tables_initializer if fill_at_load else tf.no_op
  return small_graphs.save_tf1(export_dir, build, main_op=main_op)


def test_a_table_nothing_fills_fails_naming_the_signature_and_the_error(tmp_path):
  assert serving_check.check_saved_model(_static_table_model(tmp_path / 'good', True)) > 0
  with pytest.raises(serving_check.ServingCheckFailed,
                     match=r"does not serve: TF Serving's loader .*signature 'serving_default' "
                     r'fails: Table not initialized.*--nocheck skips this check') as caught:
    serving_check.check_saved_model(_static_table_model(tmp_path / 'bad', False))
  assert isinstance(caught.value, errors.UserError) and '\n' not in str(caught.value)


def test_a_model_that_does_not_load_is_refused(tmp_path):
  path = small_graphs.stateful_model(tmp_path / 'm')
  data = [n for n in os.listdir(os.path.join(path, 'variables')) if '.data-' in n]
  os.remove(os.path.join(path, 'variables', data[0]))
  with pytest.raises(serving_check.ServingCheckFailed, match='it does not load: '):
    serving_check.check_saved_model(path)


@pytest.mark.parametrize('name', ['saved_model_half_plus_two_cpu', 'saved_model_half_plus_three',
                                  'saved_model_half_plus_two_tf2_cpu'])
def test_tf_serving_models_pass(name):
  """TF Serving's own test models pass, tf.Example inputs (half_plus_three's classify and
  regress, whose signatures declare the input a scalar) among them: the inputs fit them."""
  assert serving_check.check_saved_model(tf_serving_model(name)) > 0


class _Specs:
  """A stand-in for the loaded session: tensor name -> (TF_DataType, dims)."""

  def __init__(self, specs):
    self._specs = specs

  def spec(self, name):
    return self._specs[name]


def test_generated_inputs_are_zeros_in_the_graph_shapes_with_one_value_per_sparse_row():
  signature = lean_tf.meta_graph_pb2.SignatureDef()
  signature.inputs['x'].name = 'x:0'
  coo = signature.inputs['s'].coo_sparse
  coo.indices_tensor_name, coo.values_tensor_name, coo.dense_shape_tensor_name = (
      's/indices:0', 's/values:0', 's/shape:0')
  ragged = signature.inputs['r'].composite_tensor
  ragged.components.add().name = 'r/values:0'
  ragged.components.add().name = 'r/splits:0'
  signature.inputs['w'].name = 'w:0'
  feeds = serving_check._feeds(_Specs({
      'x:0': (1, [-1, 3]), 's/indices:0': (9, [-1, 2]), 's/values:0': (7, [-1]),
      's/shape:0': (9, [2]), 'r/values:0': (9, [-1]), 'r/splits:0': (9, [-1]),
      'w:0': (7, None)}), signature, None)
  x = feeds['x:0']
  assert (x.dtype, x.shape, x.payload) == (1, (2, 3), bytes(24))
  assert feeds['s/indices:0'].shape == (2, 2)
  assert struct.unpack('<4q', feeds['s/indices:0'].payload) == (0, 0, 1, 0)
  assert struct.unpack('<2q', feeds['s/shape:0'].payload) == (2, 1)
  assert feeds['s/values:0'].payload == [b'', b'']
  assert struct.unpack('<3q', feeds['r/splits:0'].payload) == (0, 1, 2)
  assert feeds['r/values:0'].shape == (2,)
  assert (feeds['w:0'].shape, feeds['w:0'].payload) == ((2,), [b'', b''])
