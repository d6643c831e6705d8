"""core/graphs: names, reachability and new names, on a few nodes (and on the tiny model as
TensorFlow's own extract_sub_graph sees it)."""

import re

import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.core import graphs
from freezerlib.core import lean_tf
import small_graphs

tf1 = tf.compat.v1

# x -> a -> y, y waits for c; r reads v and is colocated with w; s and f are not needed by y.
GRAPH = '''
node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "b" op: "Const" attr { key: "dtype" value { type: DT_FLOAT } }
       attr { key: "value" value { tensor { dtype: DT_FLOAT float_val: 1 } } } }
node { name: "c" op: "NoOp" }
node { name: "a" op: "AddV2" input: "x:0" input: "b" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "y" op: "Identity" input: "a" input: "^c" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "w" op: "NoOp" }
node { name: "r" op: "Identity" input: "b"  attr { key: "T" value { type: DT_FLOAT } }
       attr { key: "_class" value { list { s: "loc:@w" } } } device: "/job:ps/task:0" }
node { name: "s" op: "NoOp" input: "^x" }
versions { producer: 1000 }
'''


@pytest.mark.parametrize('tensor,node', [('a/b:1', 'a/b'), ('^a', 'a'), ('a', 'a'),
                                         ('a:0', 'a')])
def test_node_name(tensor, node):
  assert graphs.node_name(tensor) == node


def test_tensor_names_and_keys():
  assert graphs.tensor_key('a') == ('a', 0) and graphs.tensor_key('a/b:2') == ('a/b', 2)
  assert graphs.input_key('^a') is None and graphs.input_key('a:3') == ('a', 3)
  assert graphs.tensor_name('a') == 'a:0' and graphs.tensor_name('a:1') == 'a:1'
  node = small_graphs.graph_def(GRAPH).node[4]
  assert graphs.data_inputs(node) == ['a']


def test_base_dtype():
  assert graphs.base_dtype(tf.float32.as_datatype_enum + 100) == tf.float32.as_datatype_enum
  assert graphs.base_dtype(tf.int64.as_datatype_enum) == tf.int64.as_datatype_enum


def test_unique_names():
  taken = {'a', 'a_1', 'b'}
  assert graphs.unique_name('a', taken) == 'a_2' and 'a_2' in taken
  assert graphs.unique_name('c', taken) == 'c' and 'c' in taken
  # A scope is free only when no name lies under it.
  assert graphs.unique_scope('save', {'save/x', 'save_1', 'saver'}) == 'save_2'
  assert graphs.unique_scope('save', {'saver/x'}) == 'save'


@pytest.mark.parametrize('key,name', [
    ('input', 'input'), ('my key:0', 'my_key_0'), ('/leading/', 'leading'), ('_x', 'input__x'),
    ('', 'input'), ('a.b-c/d', 'a.b-c/d')])
def test_name_for_key_is_a_valid_node_name(key, name):
  assert graphs.name_for_key(key) == name


def test_computed_tensors_stop_at_the_fed_inputs():
  graph = small_graphs.graph_def(GRAPH)
  sig = small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})
  assert graphs.computed_tensors(graph, sig) == {('a', 0), ('b', 0), ('c', None)}
  # Fed at a, nothing before it is computed.
  sig = small_graphs.signature({'a': 'a:0'}, {'y': 'y:0'})
  assert graphs.computed_tensors(graph, sig) == {('c', None)}


def test_functions_used_follows_calls_and_function_attributes():
  graph = small_graphs.graph_def('''
      node { name: "call" op: "f1" }
      node { name: "p" op: "PartitionedCall" attr { key: "f" value { func { name: "f3" } } } }
      library {
        function { signature { name: "f1" } node_def { name: "n" op: "f2" } }
        function { signature { name: "f2" } node_def { name: "m" op: "If"
                   attr { key: "branches" value { list { func { name: "f4" } } } } } }
        function { signature { name: "f3" } }
        function { signature { name: "f4" } }
        function { signature { name: "unused" } node_def { name: "k" op: "f1" } }
        function { signature { name: "f3_grad" } node_def { name: "g" op: "f5" } }
        function { signature { name: "f5" } }
        gradient { function_name: "f3" gradient_func: "f3_grad" }
        gradient { function_name: "unused" gradient_func: "unused" }
      }''')
  # A used function's gradient goes with it, and what the gradient calls.
  assert graphs.functions_used(graph) == {'f1', 'f2', 'f3', 'f4', 'f3_grad', 'f5'}


def test_reachable_follows_data_control_and_colocation_edges():
  graph = small_graphs.graph_def(GRAPH)
  assert graphs.reachable(graph, ['y']) == {'y', 'a', 'x', 'b', 'c'}
  assert graphs.reachable(graph, ['r']) == {'r', 'b', 'w'}
  with pytest.raises(KeyError, match='nope'):
    graphs.reachable(graph, ['y', 'nope'])
  with pytest.raises(TypeError):
    graphs.reachable(graph, 'y')


def test_walk_inputs_and_consumers_without_colocation():
  graph = small_graphs.graph_def(GRAPH)
  assert graphs.walk(['y'], graphs.inputs_of(graph)) == {'y', 'a', 'x', 'b', 'c'}
  assert graphs.walk(['r'], graphs.inputs_of(graph)) == {'r', 'b'}  # not w: colocation
  assert graphs.walk(['x'], graphs.consumers_of(graph)) == {'x', 'a', 'y', 's'}
  assert graphs.walk(['b'], graphs.consumers_of(graph)) == {'b', 'a', 'y', 'r'}
  # A name outside the graph is neither kept nor followed.
  assert graphs.walk(['nope', 'c'], graphs.inputs_of(graph)) == {'c'}
  children = {0: [1, 2], 1: [2], 2: [0], 3: [0]}
  assert graphs.walk([1], children.get) == {0, 1, 2}


def test_extract_sub_graph_keeps_order_library_and_versions():
  graph = small_graphs.graph_def(GRAPH)
  graph.library.function.add().signature.name = 'f'
  out = graphs.extract_sub_graph(graph, ['y', 'r'])
  assert [n.name for n in out.node] == ['x', 'b', 'c', 'a', 'y', 'w', 'r']
  assert out.node[-1].device == '/job:ps/task:0'  # copied as it is
  assert out.library == graph.library and out.versions.producer == 1000
  assert out == tf1.graph_util.extract_sub_graph(graph, ['y', 'r'])
  out.node[0].name = 'changed'
  assert graph.node[0].name == 'x'  # a copy


def test_extract_sub_graph_equals_tensorflows(tiny_model):
  graph_def = meta_graph_of(tiny_model['saved_model']).graph_def
  for dest in (['probability'], ['save/restore_all'], ['user_stats_lookup/LookupTableFindV2',
                                                        'Adam']):
    dest = [d for d in dest if any(n.name == d for n in graph_def.node)]
    assert dest
    ours = graphs.extract_sub_graph(graph_def, dest)
    theirs = tf1.graph_util.extract_sub_graph(graph_def, dest)
    assert ours == theirs
  with pytest.raises(KeyError, match='nope'):
    graphs.extract_sub_graph(graph_def, ['nope'])


def test_reachable_names_what_extract_sub_graph_keeps(tiny_model):
  graph_def = meta_graph_of(tiny_model['saved_model']).graph_def
  dest = ['probability', 'save/restore_all']
  assert graphs.reachable(graph_def, dest) == {
      n.name for n in tf1.graph_util.extract_sub_graph(graph_def, dest).node}


@pytest.mark.parametrize('key', ['café', 'naïve key', '名前', 'x²', '_x', 'a b:0', '.', '/'])
def test_name_for_key_gives_names_tensorflow_imports(key):
  name = graphs.name_for_key(key)
  assert re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_./-]*', name), name
  graph = small_graphs.graph_def('')
  graph.node.add(name=name, op='NoOp')
  with tf.Graph().as_default():
    tf.graph_util.import_graph_def(graph, name='')  # refuses an invalid node name


def test_info_tensors_of_every_encoding():
  info = lean_tf.meta_graph_pb2.TensorInfo
  assert graphs.info_tensors(info(name='x:0')) == ['x:0'] and graphs.info_tensors(info()) == []
  sparse = info()
  sparse.coo_sparse.indices_tensor_name = 'i:0'
  sparse.coo_sparse.values_tensor_name = 'v:0'
  sparse.coo_sparse.dense_shape_tensor_name = 's:0'
  assert graphs.info_tensors(sparse) == ['i:0', 'v:0', 's:0']
  ragged = info()
  ragged.composite_tensor.components.add(name='values:0')
  ragged.composite_tensor.components.add(name='splits:0')
  assert graphs.info_tensors(ragged) == ['values:0', 'splits:0']
  sig = small_graphs.signature({'b': 'b:0'}, {})
  sig.inputs['a'].CopyFrom(sparse)
  assert graphs.signature_tensors(sig, 'inputs') == ['i:0', 'v:0', 's:0', 'b:0']
  # Fed at every part of a sparse input: nothing before them is computed.
  graph = small_graphs.graph_def('''
      node { name: "i" op: "Placeholder" } node { name: "v" op: "Placeholder" }
      node { name: "s" op: "Placeholder" } node { name: "b" op: "Placeholder" }
      node { name: "y" op: "SparseToDense" input: "i" input: "s" input: "v" input: "b" }''')
  sig.outputs['y'].name = 'y:0'
  assert graphs.computed_tensors(graph, sig) == set()


def test_object_paths_are_first_paths_breadth_first():
  pb2 = lean_tf.load('tensorflow.core.protobuf.trackable_object_graph_pb2')
  graph = pb2.TrackableObjectGraph()
  for children in ({'a': 1, 'b': 2}, {'c': 3}, {'also_c': 3, 'e': 5}, {'d': 4}, {}, {}):
    node = graph.nodes.add()
    for name, node_id in children.items():
      node.children.add(local_name=name, node_id=node_id)
  assert graphs.object_paths(graph) == {0: '', 1: 'a', 2: 'b', 3: 'a/c', 5: 'b/e', 4: 'a/c/d'}


def test_function_graphs_turn_a_library_function_into_a_graph():
  graph = tf.Graph()
  with graph.as_default():
    fn = tf.function(lambda a, b: {'sum': a + 2.0 * b})
    fn(tf1.placeholder(tf.float32, [], name='p'), tf.constant(3.0))
  library = graph.as_graph_def().library
  function = [f for f in library.function if f.node_def][0]
  graph_def, outputs = graphs.FunctionGraphs(library).convert(function)
  args = [a.name for a in function.signature.input_arg]
  assert [n.op for n in graph_def.node if n.name in args] == ['Placeholder'] * 2
  with tf.Graph().as_default() as converted:
    tf.graph_util.import_graph_def(graph_def, name='')
    with tf1.Session(graph=converted) as session:
      got = session.run(outputs[0], {args[0] + ':0': 1.0, args[1] + ':0': 3.0})
  assert len(outputs) == 1 and got == 7.0
