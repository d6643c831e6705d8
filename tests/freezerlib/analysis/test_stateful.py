"""analysis/stateful: signatures that write a variable or table are found, in the graph and in
the functions they call, each traced back to the state it writes."""

import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.analysis import stateful
from freezerlib.core import errors
from freezerlib.core import lean_tf
import small_graphs

tf1 = tf.compat.v1


@pytest.mark.parametrize('op,writes', [
    ('AssignVariableOp', True), ('AssignAdd', True), ('ResourceApplyAdam', True),
    ('ResourceSparseApplyAdagradV2', True), ('ApplyGradientDescent', True),
    ('ScatterUpdate', True), ('ResourceScatterAdd', True), ('ResourceStridedSliceAssign', True),
    ('LookupTableInsertV2', True), ('InitializeTableFromTextFileV2', True),
    ('ReadVariableOp', False), ('LookupTableFindV2', False), ('ApplyAdamLike', True),
    ('Scatter', True), ('MyApply', False), ('ResourceGather', False)])
def test_write_ops(op, writes):
  assert stateful.is_write_op(op) is writes


def _meta_graph(text, signatures):
  meta_graph = lean_tf.meta_graph_pb2.MetaGraphDef()
  meta_graph.graph_def.CopyFrom(small_graphs.graph_def(text))
  for key, outputs in signatures.items():
    meta_graph.signature_def[key].CopyFrom(small_graphs.signature({}, outputs))
  return meta_graph


def test_tf1_counter_is_refused_and_its_reader_is_not(tmp_path):
  def build():
    x = tf1.placeholder(tf.float32, [None], name='x')
    counter = tf1.get_variable('counter', initializer=tf.constant(0.0), use_resource=False)
    with tf.control_dependencies([tf1.assign_add(counter, 1.0, name='count')]):
      y = tf.identity(x * 2.0, name='y')
    return {'x': x}, {'y': y, 'read': tf.identity(counter, name='read')}

  meta_graph = meta_graph_of(small_graphs.save_tf1(tmp_path / 'm', build))
  sigs = dict(meta_graph.signature_def)
  with pytest.raises(errors.UserError) as caught:
    stateful.check_read_only(meta_graph, sigs, 'm')
  assert str(caught.value) == (
      "signature 'serving_default' of m writes 'counter' (op count, AssignAdd): a stateful "
      'signature cannot be frozen; choose others with --signature_def')
  read_only = small_graphs.signature({}, {'read': 'read:0'})
  stateful.check_read_only(meta_graph, {'read': read_only}, 'm')


def test_writes_inside_functions_are_traced_to_the_state():
  text = '''
      node { name: "v" op: "VarHandleOp" }
      node { name: "handle" op: "Identity" input: "v" }
      node { name: "c" op: "Const" }
      node { name: "if" op: "If" input: "c" input: "handle"
             attr { key: "then_branch" value { func { name: "add_one" } } } }
      node { name: "map" op: "MapDataset" input: "c" input: "v"
             attr { key: "f" value { func { name: "add_one" } } } }
      node { name: "local" op: "PartitionedCall" attr { key: "f" value { func { name: "own" } } } }
      library {
        function { signature { name: "add_one" input_arg { name: "res" type: DT_RESOURCE } }
                   node_def { name: "a" op: "AssignAddVariableOp" input: "res" } }
        function { signature { name: "own" }
                   node_def { name: "t" op: "MutableHashTableV2" }
                   node_def { name: "ins" op: "LookupTableInsertV2" input: "t:table_handle:0" } }
      }'''
  meta_graph = _meta_graph(text, {'branch': {'o': 'if:0'}, 'mapped': {'o': 'map:0'},
                                  'local': {'o': 'local:0'}})
  sigs = dict(meta_graph.signature_def)
  # If passes its inputs from the second on: `handle`, an Identity of v.
  with pytest.raises(errors.UserError, match=r"'branch' of m writes 'v' \(op add_one/a, "
                                             r'AssignAddVariableOp\)'):
    stateful.check_read_only(meta_graph, {'branch': sigs['branch']}, 'm')
  # Where a function's arguments come from is unknown for other ops that take functions.
  with pytest.raises(errors.UserError, match="'mapped' of m writes state it cannot trace"):
    stateful.check_read_only(meta_graph, {'mapped': sigs['mapped']}, 'm')
  # A table the function makes for itself lives for one call: not state.
  stateful.check_read_only(meta_graph, {'local': sigs['local']}, 'm')


def test_write_inside_a_function_on_its_own_node():
  meta_graph = _meta_graph('''
      node { name: "call" op: "PartitionedCall" attr { key: "f" value { func { name: "f" } } } }
      library { function { signature { name: "f" }
        node_def { name: "v" op: "VarHandleOp" }
        node_def { name: "r" op: "Identity" input: "v:resource:0" }
        node_def { name: "w" op: "AssignVariableOp" input: "r:output:0" } } }''',
                           {'s': {'o': 'call:0'}})
  # The variable is made inside the function too: one call's state, not the model's.
  stateful.check_read_only(meta_graph, dict(meta_graph.signature_def), 'm')


@pytest.fixture(scope='module')
def tf2_counter(tmp_path_factory):
  """A tf.Module with signatures `read` and `incr` (adds 1 to `counter` and returns it)."""
  module = tf.Module()
  module.counter = tf.Variable(0.0)
  module.read = tf.function(lambda: {'value': module.counter.read_value()},
                            input_signature=[])
  module.incr = tf.function(lambda: {'value': module.counter.assign_add(1.0)},
                            input_signature=[])
  path = str(tmp_path_factory.mktemp('tf2') / 'm')
  tf.saved_model.save(module, path, signatures={'read': module.read, 'incr': module.incr})
  return meta_graph_of(path)


def test_tf2_signature_is_named_by_its_object_path(tf2_counter):
  sigs = {k: v for k, v in tf2_counter.signature_def.items() if not k.startswith('__')}
  assert sorted(sigs) == ['incr', 'read']
  functions = stateful.signature_functions(tf2_counter)
  assert sorted(functions) == ['incr', 'read']
  assert all(n in {f.signature.name for f in tf2_counter.graph_def.library.function}
             for n in functions.values())
  captured = stateful.captured_objects(tf2_counter)
  assert sorted(set(captured.values())) == ['counter']
  with pytest.raises(errors.UserError,
                     match=r"signature 'incr' of m writes 'counter' \(op __inference_\S+/"
                           r'AssignAddVariableOp, AssignAddVariableOp\)'):
    stateful.check_read_only(tf2_counter, {'incr': sigs['incr']}, 'm')
  stateful.check_read_only(tf2_counter, {'read': sigs['read']}, 'm')


def test_tf1_graph_has_no_objects():
  meta_graph = _meta_graph('node { name: "v" op: "VarHandleOp" }', {})
  assert stateful.captured_objects(meta_graph) == {}
