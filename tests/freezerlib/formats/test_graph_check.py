"""formats/graph_check: the graphs TensorFlow would refuse, each found with one line naming
the node (the scripts' side of it, one case per kind and script: tests/test_corrupt_graphs.py)."""

import pytest
import tensorflow as tf

from freezerlib.core import lean_tf
from freezerlib.formats import graph_check
import small_graphs

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


def test_inputs_name_outputs_their_nodes_have_and_as_many_as_the_op_takes():
  graph_def = _graph()
  _nodes(graph_def)['y'].input[0] = 'MatMul:9'
  with pytest.raises(graph_check.CorruptGraphError,
                     match="node 'y' takes input 'MatMul:9', but node 'MatMul' has 1 output$"):
    _check(graph_def)
  graph_def = _graph()
  _nodes(graph_def)['y'].input[0] = 'MatMul:x'
  with pytest.raises(graph_check.CorruptGraphError, match='which is not a tensor name'):
    _check(graph_def)
  graph_def = _graph()
  del _nodes(graph_def)['y'].input[1]
  with pytest.raises(graph_check.CorruptGraphError,
                     match=r"node 'y' \(AddV2\) has 1 data inputs, its op takes 2"):
    _check(graph_def)
  graph_def = _graph()
  _nodes(graph_def)['y'].input.append('^c:0')
  with pytest.raises(graph_check.CorruptGraphError, match='which names an output'):
    _check(graph_def)


@pytest.mark.parametrize('change,message', [
    (lambda t: setattr(t, 'tensor_content', t.tensor_content[:-4]),
     r'holds 4 bytes of content, its shape \[2,1\] of float32 needs 8'),
    (lambda t: setattr(t, 'tensor_content', t.tensor_content + b'1234'),
     r'holds 12 bytes of content, its shape \[2,1\] of float32 needs 8'),
    (lambda t: t.tensor_shape.dim.add().__setattr__('size', 2**62),
     r'has a shape whose size overflows \(\[2,1,4611686018427387904\]\)'),
    (lambda t: setattr(t, 'dtype', 1234), 'dtype 1234, which is not a TensorFlow type'),
], ids=['content_short', 'content_long', 'overflow', 'dtype'])
def test_tensor_content_shape_and_dtype_are_checked(change, message):
  graph_def = _graph()
  tensor = _nodes(graph_def)['w'].attr['value'].tensor
  if not tensor.tensor_content:
    tensor.tensor_content = b''.join(
        __import__('struct').pack('<f', v) for v in tensor.float_val)
    tensor.ClearField('float_val')
  change(tensor)
  if 'dtype 1234' in message:
    _nodes(graph_def)['w'].attr['dtype'].type = 1234
  with pytest.raises(graph_check.CorruptGraphError, match="node 'w' \\(Const\\) "):
    _check(graph_def)
  with pytest.raises(graph_check.CorruptGraphError, match=message):
    _check(graph_def)


def test_a_constant_filled_past_2_gb_from_one_value_is_refused():
  graph_def = _graph()
  tensor = _nodes(graph_def)['c'].attr['value'].tensor
  tensor.tensor_shape.dim.add().size = 2**30  # one value for 2^30 floats: 4 GiB once filled
  with pytest.raises(graph_check.CorruptGraphError,
                     match=r'has shape \[1073741824\] of float32, 4294967296 bytes: past the'):
    _check(graph_def)
  tensor.tensor_shape.dim[0].size = 2**20  # 4 MiB: fine
  _check(graph_def)


def test_a_function_argument_without_a_type_is_refused():
  text = '''
      library { function {
        signature { name: "f" input_arg { name: "a" type: DT_INVALID } }
      } }'''
  with pytest.raises(graph_check.CorruptGraphError,
                     match="function f: argument 'a' has no type \\(dtype 0\\)"):
    _check(small_graphs.graph_def(text))
  with pytest.raises(graph_check.CorruptGraphError,
                     match="function f: argument 'a' takes its type or length from attribute 'T', "
                           'which it lacks'):
    _check(small_graphs.graph_def(text.replace('type: DT_INVALID', 'type_attr: "T"')))


def test_signature_tensors_name_outputs_their_nodes_have():
  graph_def = _graph()
  for name, message in (('y:9', "names y:9, but node 'y' has 1 output"),
                        ('^y:0', "names '\\^y:0', which is not a tensor name"),
                        ('y', "names 'y', which is not a tensor name"),
                        ('z:0', 'names z:0, which is not a node of the graph')):
    with pytest.raises(graph_check.CorruptGraphError,
                       match="g.pb is corrupt: signature 's' output 'out' " + message):
      graph_check.check_signature_tensors(
          graph_def, {'s': small_graphs.signature({'x': 'x:0'}, {'out': name})}, 'g.pb', OP_DEFS)
  graph_check.check_signature_tensors(
      graph_def, {'s': small_graphs.signature({'x': 'x:0'}, {'out': 'y:0'})}, 'g.pb', OP_DEFS)


def test_a_signature_or_init_op_needing_a_placeholder_it_does_not_feed_is_refused():
  graph_def = _graph()
  with pytest.raises(graph_check.CorruptGraphError,
                     match="signature 's' needs placeholder 'x', which is not one of its inputs: "
                           'no request can feed it'):
    graph_check.check_signature_tensors(
        graph_def, {'s': small_graphs.signature({}, {'out': 'y:0'})}, 'g.pb', OP_DEFS)
  init = graph_def.node.add(name='init', op='NoOp')
  init.input.append('^y')
  with pytest.raises(graph_check.CorruptGraphError,
                     match="g.pb is corrupt: the init op 'init' needs placeholder 'x', which a "
                           'loader does not feed'):
    graph_check.check_runs_unfed(graph_def, ['init'], 'g.pb', 'the init op')
  graph_check.check_runs_unfed(graph_def, ['init'], 'g.pb', 'the init op', fed=['x:0'])


def test_a_placeholder_whose_output_shapes_disagree_with_its_shape_is_refused():
  graph_def = _graph()
  x = _nodes(graph_def)['x']
  recorded = x.attr['_output_shapes'].list.shape.add()
  recorded.CopyFrom(x.attr['shape'].shape)
  _check(graph_def)  # the same shape: fine
  recorded.dim[0].size = 300
  with pytest.raises(graph_check.CorruptGraphError,
                     match=r"node 'x' \(Placeholder\) has _output_shapes \[300,2\], its shape "
                           r'attribute says \[-1,2\]'):
    _check(graph_def)


def test_a_call_whose_types_differ_from_its_function_is_refused():
  # A StatefulPartitionedCall declaring Tout int32 for a function returning float: TensorFlow
  # runs the graph and fails every request (found by the fuzzer on a TF2 SavedModel).
  f = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([None], tf.float32)])
  wrapper = tf.function(lambda x: f(x), input_signature=[tf.TensorSpec([None], tf.float32)])
  graph_def = wrapper.get_concrete_function().graph.as_graph_def()
  calls = [n for n in graph_def.node if n.op in ('PartitionedCall', 'StatefulPartitionedCall')]
  assert calls
  _check(graph_def)  # as TensorFlow wrote it
  calls[0].attr['Tout'].list.type[0] = tf.int32.as_datatype_enum
  with pytest.raises(graph_check.CorruptGraphError,
                     match=r"calls \S+ with Tout \[int32\], where the function's results are "
                           r'\[float32\]'):
    _check(graph_def)
