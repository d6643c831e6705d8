"""core/lean_tf: TensorFlow's protos without TensorFlow, the same values TensorFlow gives.

(That `import tensorflow` after the lean modules works, and that the checkpoint path loads
no TensorFlow, needs a fresh interpreter: tests/test_lean.py.)
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import lean_tf


def test_protos_are_tensorflows_own_modules():
  assert lean_tf.graph_pb2.GraphDef is tf.compat.v1.GraphDef
  assert lean_tf.load('tensorflow.core.framework.graph_pb2') is lean_tf.graph_pb2
  assert lean_tf.meta_graph_pb2.MetaGraphDef is tf.compat.v1.MetaGraphDef
  assert lean_tf.NodeDef is tf.compat.v1.NodeDef
  assert sys.modules['tensorflow.core.protobuf.saver_pb2'] is lean_tf.saver_pb2


def test_lazy_modules_are_the_real_ones_once_loaded():
  assert lean_tf.tensorflow_loaded()
  assert lean_tf.tf1.Session is tf.compat.v1.Session
  assert lean_tf.tensorflow.constant is tf.constant
  assert lean_tf.numpy.float32 is np.float32
  with pytest.raises(AttributeError):
    lean_tf.tensorflow.__wrapped_no_such_dunder__  # noqa: B018  # the access is what raises
  called = []
  lean_tf.after_tensorflow_loads(called.append)  # loaded already: called now
  assert called == [tf]


def test_registered_op_defs_looks_ops_up():
  op_defs = lean_tf.registered_op_defs()
  const = op_defs.get('Const')
  assert const.name == 'Const' and [a.name for a in const.output_arg] == ['output']
  assert op_defs.get('NoSuchOp') is None and op_defs.get('NoSuchOp', 'x') == 'x'


def test_strings_and_dtypes_equal_tensorflows():
  for values in (['a', 'bé', ''], 'model'):
    proto = lean_tf.string_tensor(values)
    assert proto == tf.make_tensor_proto(values, dtype=tf.string)
    expected = np.ravel(tf.make_ndarray(proto))
    assert lean_tf.string_values(proto) == [v.decode('utf-8') for v in expected]
  broadcast = tf.make_tensor_proto('x', dtype=tf.string, shape=[3])
  assert lean_tf.string_values(broadcast) == ['x', 'x', 'x']
  for enum in [e for e in lean_tf.types_pb2.DataType.values() if 0 < e < 100]:
    try:
      real = tf.as_dtype(enum)
    except TypeError:
      continue
    ours = lean_tf.DType(enum)
    assert ours.name == real.name and ours == real and ours.as_datatype_enum == enum
    assert lean_tf.DType(enum + 100).name == tf.as_dtype(enum + 100).name


def test_string_values_refuses_what_is_not_names():
  with pytest.raises(ValueError, match='not a string tensor'):
    lean_tf.string_values(tf.make_tensor_proto([1, 2]))
  empty = tf.make_tensor_proto([], dtype=tf.string)
  empty.tensor_shape.dim[0].size = 2  # two elements, no value: TensorFlow reads ''
  assert lean_tf.string_values(empty) == ['', '']
  two_of_three = tf.make_tensor_proto(['a', 'b'], dtype=tf.string)
  two_of_three.tensor_shape.dim[0].size = 3
  with pytest.raises(ValueError, match='3 elements holds 2 values'):
    lean_tf.string_values(two_of_three)


def test_dtype_without_tensorflow():
  ref = lean_tf.DType(tf.float32.as_datatype_enum + 100)
  assert ref.name == 'float32_ref' and ref.base_dtype == tf.float32
  base = ref.base_dtype
  assert base.base_dtype is base and base.name == 'float32'
  assert lean_tf.DType(1) == 1 and lean_tf.DType(1) != 2 and lean_tf.DType(1) != 'float32'
  assert {lean_tf.DType(9), lean_tf.DType(9)} == {lean_tf.DType(9)}
  assert repr(lean_tf.DType(9)) == 'tf.int64'
  assert lean_tf.DType(99).name == 'dtype 99'
  assert lean_tf.as_dtype(1) is tf.float32  # TensorFlow is loaded: its own DType


def test_dtype_size():
  assert lean_tf.dtype_size(tf.float32.as_datatype_enum) == 4
  assert lean_tf.dtype_size(tf.float32.as_datatype_enum + 100) == 4
  assert lean_tf.dtype_size(tf.bfloat16.as_datatype_enum) == 2
  assert lean_tf.dtype_size(tf.complex128.as_datatype_enum) == 16
  for dtype in (tf.float16, tf.float64, tf.int8, tf.uint16, tf.int32, tf.uint64, tf.bool):
    assert lean_tf.dtype_size(dtype.as_datatype_enum) == dtype.size, dtype


def test_tensor_nbytes_is_the_values_size():
  for value, dtype in ((np.arange(12, dtype=np.float32).reshape(3, 4), tf.float32),
                       (np.arange(5, dtype=np.int64), tf.int64), (np.ones(7, np.bool_), tf.bool),
                       (np.float16(2.5), tf.float16), (np.array([b'ab', b'cde']), tf.string)):
    proto = tf.make_tensor_proto(value, dtype=dtype)
    expected = (sum(len(v) for v in value) if dtype == tf.string
                else tf.make_ndarray(proto).nbytes)
    assert lean_tf.tensor_nbytes(proto) == expected, (value, dtype)


def test_tensorflows_start_up_notices_are_kept_off_stderr(capfd):
  with lean_tf._quiet_stderr():
    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are '
                b'written to STDERR\n'
                b'I0000 00:00:1.2 123 port.cc:153] oneDNN custom operations are on.\n'
                b'I0000 00:00:1.2 123 cpu_feature_guard.cc:210] This TensorFlow binary\n'
                b'To enable the following instructions: AVX2 FMA, rebuild\n'
                b'a real error\n')
  assert capfd.readouterr().err == 'a real error\n'
