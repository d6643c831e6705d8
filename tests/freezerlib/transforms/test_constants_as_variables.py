"""transforms/constants_as_variables: big Consts become variables a saver restores, and back.

(The serving SavedModel this makes, through every loader: tests/test_constants_as_variables.py.)
"""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.formats import frozen_graph
from freezerlib.transforms import constants_as_variables as cav
import small_graphs

tf1 = tf.compat.v1
W = np.arange(6, dtype=np.float32).reshape(3, 2)  # 24 bytes


def _frozen():
  """y = x @ w + b, w (24 bytes) after NoOp c, names (18 bytes of strings), b (8 bytes)."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 3], name='x')
    c = tf.no_op(name='c')
    with tf.control_dependencies([c]):
      w = tf.constant(W, name='w')
    b = tf.constant([0.5, -0.5], name='b')
    tf.add(tf.matmul(x, w), b, name='y')
    tf.constant(['a' * 9, 'b' * 9], name='names')
    tf.constant(np.zeros(1000, np.float32), name='w/variable')  # takes the first choice
  sig = small_graphs.signature({'x': 'x:0'}, {'y': 'y:0', 'names': 'names:0'})
  return frozen_graph.FrozenModel(graph_def=graph.as_graph_def(), signatures={'s': sig},
                                  tags=['serve'])


@pytest.mark.parametrize('text,expected', [
    ('1MiB', 1 << 20), ('64', 64), (None, None), ('', None), ('off', None), (' None ', None)])
def test_parse_threshold(text, expected):
  assert cav.parse_threshold(text) == expected


def test_parse_threshold_refuses_what_is_not_a_size():
  with pytest.raises(errors.UserError, match="--constants_as_variables=big is not a size .*, "
                                             "or 'off'"):
    cav.parse_threshold('big')


def test_split_turns_big_constants_into_restored_variables():
  frozen = _frozen()
  split = cav.split(frozen, 16)
  assert sorted(split.values) == ['names', 'w', 'w/variable']
  assert split.values['w'][0] == 'w/variable_1'
  assert split.values['w'][1] is [n for n in frozen.graph_def.node
                                  if n.name == 'w'][0].attr['value'].tensor  # not copied
  nodes = {n.name: n for n in split.frozen.graph_def.node}
  assert nodes['w'].op == 'ReadVariableOp' and list(nodes['w'].input) == ['w/variable_1', '^c']
  handle = nodes['w/variable_1']
  assert handle.op == 'VarHandleOp' and handle.attr['shared_name'].s == b'w/variable_1'
  assert tf.TensorShape(handle.attr['shape'].shape).as_list() == [3, 2]
  assert nodes['b'].op == 'Const' and nodes['names'].op == 'ReadVariableOp'
  assert split.frozen.saver_def.restore_op_name == 'save/restore_all'
  assert split.frozen.signatures == frozen.signatures and frozen.saver_def is None
  assert cav.split(frozen, 4001) is None  # nothing that big


def test_inline_gives_the_constants_back():
  frozen = _frozen()
  inlined = cav.inline(cav.split(frozen, 16))
  assert inlined.saver_def is None
  assert {n.name: n for n in inlined.graph_def.node} == {
      n.name: n for n in frozen.graph_def.node}


def test_variables_are_written_and_restored_as_the_constants(tmp_path):
  split = cav.split(_frozen(), 16)
  cav.variables_writer(split)(str(tmp_path))
  reader = tf.train.load_checkpoint(str(tmp_path / 'variables'))
  assert reader.get_variable_to_shape_map() == {'w': [3, 2], 'names': [2], 'w/variable': [1000]}
  np.testing.assert_array_equal(reader.get_tensor('w'), W)
  assert reader.get_tensor('names').tolist() == [b'a' * 9, b'b' * 9]
  saver_def = split.frozen.saver_def
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(split.frozen.graph_def, name='')
    with tf1.Session(graph=graph) as session:
      session.run(saver_def.restore_op_name,
                  {saver_def.filename_tensor_name: str(tmp_path / 'variables')})
      y, names = session.run(['y:0', 'names:0'], {'x:0': [[1.0, 0.0, 2.0]]})
  np.testing.assert_array_equal(y, [[8.5, 10.5]])
  assert names.tolist() == [b'a' * 9, b'b' * 9]


def test_array_views_tensor_content_and_reads_values():
  for value in (W, np.float32(2.5), np.array([1, 2, 3], np.int64)):
    proto = tf.make_tensor_proto(value)
    np.testing.assert_array_equal(cav._array(proto), value)
  proto = tf.make_tensor_proto(W)
  assert proto.tensor_content  # the view's case
  assert cav._array(proto).base is not None
