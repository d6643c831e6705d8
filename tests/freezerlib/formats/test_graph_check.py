"""formats/graph_check: the graphs TensorFlow would refuse, each found with one line naming
the node (the scripts' side of it, one case per kind and script: tests/test_corrupt_graphs.py)."""

import pytest
import tensorflow as tf

import small_graphs
from freezerlib.core import lean_tf
from freezerlib.formats import graph_check

tf1 = tf.compat.v1
OP_DEFS = lean_tf.registered_op_defs()


def _graph():
  """y = MatMul(x, w) + c, built by TensorFlow (every attribute as its op wants it)."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 2], name='x')
    w = tf.constant([[1.0], [2.0]], name='w')
    tf.add(tf.matmul(x, w, name='MatMul'), tf.constant(0.5, name='c'), name='y')
  return graph.as_graph_def()


def _nodes(graph_def):
  return {n.name: n for n in graph_def.node}


def _check(graph_def, op_defs=OP_DEFS):
  graph_check.check_graph_def(graph_def, 'g.pb', op_defs)


def test_tensorflows_own_graphs_pass():
  _check(_graph())
  graph = tf.Graph()
  with graph.as_default():  # a v1 while loop: NextIteration feeds Merge, a back edge
    tf1.disable_control_flow_v2()
    try:
      tf1.while_loop(lambda i: i < 10, lambda i: i + 1, [tf.constant(0)])
    finally:
      tf1.enable_control_flow_v2()
    assert 'NextIteration' in {n.op for n in graph.as_graph_def().node}
    tf.function(lambda a: a * 2.0)(tf.constant(1.0))  # a call of a library function
  graph_def = graph.as_graph_def()
  assert graph_def.library.function
  _check(graph_def)


def _corrupted(change):
  graph_def = _graph()
  change(_nodes(graph_def), graph_def)
  return graph_def


@pytest.mark.parametrize('change,message', [
    (lambda n, g: g.node.add().CopyFrom(n['c']), "two nodes are named 'c'"),
    (lambda n, g: n['c'].attr['dtype'].__setattr__('type', tf.int32.as_datatype_enum),
     "node 'c' \\(Const\\) holds a float32 value but its dtype attribute says int32"),
    (lambda n, g: n['x'].attr['shape'].shape.dim.add().__setattr__('size', -2),
     "node 'x' \\(Placeholder\\) has a negative dimension \\(-2\\) in attribute 'shape'"),
    (lambda n, g: n['w'].attr['value'].tensor.tensor_shape.dim[0].__setattr__('size', -1),
     "node 'w' \\(Const\\) has a negative dimension \\(-1\\) in attribute 'value'"),
    (lambda n, g: n['y'].attr.pop('T'), "node 'y' \\(AddV2\\) lacks attribute 'T', which op "
                                        'AddV2 requires'),
    (lambda n, g: n['MatMul'].attr['transpose_a'].__setattr__('i', 1),
     "node 'MatMul' \\(MatMul\\) has attribute 'transpose_a' holding an int, where op MatMul "
     'wants a bool'),
    (lambda n, g: n['MatMul'].attr['T'].__setattr__('type', tf.string.as_datatype_enum),
     "node 'MatMul' \\(MatMul\\) has attribute 'T' = string, which op MatMul does not allow"),
    (lambda n, g: n['y'].input.append('^nowhere'),
     "node 'y' takes input '\\^nowhere', which is not a node of the graph"),
])
def test_each_corruption_is_one_line_naming_the_node(change, message):
  with pytest.raises(graph_check.CorruptGraphError, match='^g.pb is corrupt: ' + message):
    _check(_corrupted(change))


def test_attribute_types_need_op_definitions():
  graph_def = _corrupted(lambda n, g: n['MatMul'].attr['transpose_a'].__setattr__('i', 1))
  _check(graph_def, op_defs=None)  # without them, attribute types are not checked
  graph_def = _corrupted(lambda n, g: n['c'].attr.pop('value'))
  with pytest.raises(graph_check.CorruptGraphError, match="node 'c' \\(Const\\) has no value"):
    _check(graph_def, op_defs=None)


def test_a_long_cycle_is_shortened():
  text = ''.join('node { name: "n%d" op: "Identity" input: "n%d" }' % (i, (i + 1) % 8)
                 for i in range(8))
  text += 'node { name: "outside" op: "Identity" input: "n0" }'
  with pytest.raises(graph_check.CorruptGraphError) as caught:
    _check(small_graphs.graph_def(text), op_defs=None)
  # In the direction data flows (n1 feeds n0), the node outside the cycle not named.
  assert str(caught.value) == ("g.pb is corrupt: node 'n7' is in a cycle (n7 -> n6 -> n5 -> n4 "
                               '-> n3 -> ... (8 nodes))')


def test_functions_are_checked_with_their_arguments():
  text = '''
      node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_HALF } } }
      node { name: "call" op: "f" input: "x" }
      library { function {
        signature { name: "f" input_arg { name: "a" type: DT_FLOAT } }
        node_def { name: "n" op: "Identity" input: "a" attr { key: "T" value { type: DT_FLOAT } } }
        node_def { name: "m" op: "Identity" input: "n:output:0" input: "^a"
                   attr { key: "T" value { placeholder: "T" } } }
      } }'''
  _check(small_graphs.graph_def(text))  # an attr placeholder and arguments are fine
  with pytest.raises(graph_check.CorruptGraphError,
                     match="function f: node 'm' takes input 'b', which is neither a node nor an "
                           'argument of the function'):
    _check(small_graphs.graph_def(text.replace('"^a"', '"b"')))
  with pytest.raises(graph_check.CorruptGraphError,
                     match="function f: node 'n' \\(Identity\\) has attribute 'T' holding a "
                           'string'):
    _check(small_graphs.graph_def(text.replace('key: "T" value { type: DT_FLOAT } } }',
                                               'key: "T" value { s: "x" } } }', 1)))


def test_check_meta_graph_uses_its_own_op_list():
  meta_graph = lean_tf.meta_graph_pb2.MetaGraphDef()
  meta_graph.graph_def.CopyFrom(_corrupted(
      lambda n, g: n['MatMul'].attr['transpose_a'].__setattr__('i', 1)))
  graph_check.check_meta_graph(meta_graph, 'm')  # no op list: attribute types not checked
  meta_graph.meta_info_def.stripped_op_list.op.add().CopyFrom(OP_DEFS.get('MatMul'))
  with pytest.raises(graph_check.CorruptGraphError, match="m is corrupt: node 'MatMul'"):
    graph_check.check_meta_graph(meta_graph, 'm')
  assert graph_check.op_defs_of(meta_graph.meta_info_def.stripped_op_list) == {
      'MatMul': OP_DEFS.get('MatMul')}
