"""transforms/placeholders: signature inputs become placeholders, cut from what fed them."""

from google.protobuf import text_format
import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.transforms import placeholders
import small_graphs

tf1 = tf.compat.v1
FLOAT, INT32, INT64 = (tf.float32.as_datatype_enum, tf.int32.as_datatype_enum,
                       tf.int64.as_datatype_enum)


def _reader_graph():
  """A reader's batch (x [?, 2] float, ids [?] int64) -> half = x / 2 -> y = half + 1;
  `after` runs after the reader (a control edge); `n` counts the ids."""
  graph = tf.Graph()
  with graph.as_default():
    data = tf.data.Dataset.from_tensor_slices((np.ones((4, 2), np.float32), np.arange(4)))
    x, ids = tf1.data.make_one_shot_iterator(data.batch(2)).get_next()
    half = tf.multiply(x, 0.5, name='half')
    tf.add(half, 1.0, name='y')
    with tf.control_dependencies([x.op]):
      tf.identity(half, name='after')
    tf.size(ids, name='n')
  assert (x.name, ids.name) == ('IteratorGetNext:0', 'IteratorGetNext:1')
  return graph.as_graph_def()


def _run(graph_def, fetch, feeds):
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(graph_def, name='')
    with tf1.Session(graph=graph) as session:
      return session.run(fetch, feeds)


def _nodes(graph_def):
  return {n.name: n for n in graph_def.node}


def test_reader_outputs_become_placeholders_named_by_key():
  graph_def = _reader_graph()
  sigs = {'s': small_graphs.signature({'x': 'IteratorGetNext:0', 'ids': 'IteratorGetNext:1'},
                                      {'y': 'y:0', 'n': 'n:0'})}
  sigs['s'].inputs['x'].dtype = INT32  # wrong: the graph's tensor is the truth
  out, new_sigs, mapping = placeholders.inputs_to_placeholders(graph_def, sigs)
  assert mapping == {'IteratorGetNext:0': 'x:0', 'IteratorGetNext:1': 'ids:0'}
  assert {k: i.name for k, i in new_sigs['s'].inputs.items()} == {'x': 'x:0', 'ids': 'ids:0'}
  nodes = _nodes(out)
  x = nodes['x']
  assert x.op == 'Placeholder' and x.attr['dtype'].type == FLOAT
  assert tf.TensorShape(x.attr['shape'].shape).as_list() == [None, 2]
  assert new_sigs['s'].inputs['x'].dtype == FLOAT
  assert nodes['ids'].attr['dtype'].type == INT64
  assert list(nodes['half'].input[:1]) == ['x'] and list(nodes['after'].input) == ['half', '^x']
  consumers = [i for n in out.node for i in n.input if i.lstrip('^').startswith('IteratorGetNext')]
  assert consumers == []  # nothing reads the reader any more
  got = _run(out, ['y:0', 'n:0'], {'x:0': [[2.0, 4.0]], 'ids:0': [5, 6, 7]})
  np.testing.assert_array_equal(got[0], [[2.0, 3.0]])
  assert got[1] == 3
  assert sigs['s'].inputs['x'].name == 'IteratorGetNext:0'  # the input is not modified
  assert graph_def == _reader_graph()


def test_an_input_another_signature_computes_stays():
  graph_def = _reader_graph()
  sigs = {'a': small_graphs.signature({'x': 'IteratorGetNext:0'}, {'y': 'y:0'}),
          'b': small_graphs.signature({'half': 'half:0'}, {'y': 'y:0'})}
  out, new_sigs, mapping = placeholders.inputs_to_placeholders(graph_def, sigs)
  assert mapping == {'IteratorGetNext:0': 'x:0'}
  assert new_sigs['b'].inputs['half'].name == 'half:0'
  assert _nodes(out)['half'].op == 'Mul'
  assert _run(out, 'y:0', {'half:0': [[7.0, 8.0]]}).tolist() == [[8.0, 9.0]]
  # Alone, b's input is cut; its name is taken, so the placeholder is half_1.
  out, new_sigs, mapping = placeholders.inputs_to_placeholders(graph_def, {'b': sigs['b']})
  assert mapping == {'half:0': 'half_1:0'}
  assert list(_nodes(out)['y'].input[:1]) == ['half_1']
  assert _run(out, 'y:0', {'half_1:0': [[7.0, 8.0]]}).tolist() == [[8.0, 9.0]]


def test_with_op_defs_placeholder_inputs_need_no_tensorflow(monkeypatch):
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 3], name='x')
    tf.cast(tf.reduce_sum(x, axis=1), tf.int64, name='total')
  graph_def = graph.as_graph_def()
  op_list = lean_tf.meta_graph_pb2.MetaGraphDef().meta_info_def.stripped_op_list
  for op in ('Placeholder', 'Sum', 'Cast', 'Const'):
    op_list.op.add().CopyFrom(lean_tf.registered_op_defs().get(op))
  sigs = {'s': small_graphs.signature({'x': 'x:0'}, {'total': 'total:0'})}
  sigs['s'].inputs['x'].dtype = INT32
  sigs['s'].outputs['total'].dtype = FLOAT
  sigs['s'].outputs['total'].tensor_shape.dim.add().size = 7  # kept: no shape inference
  monkeypatch.setattr(placeholders, '_imported', lambda *a: pytest.fail('TensorFlow imported'))
  out, new_sigs, mapping = placeholders.inputs_to_placeholders(graph_def, sigs, op_list)
  assert mapping == {} and out == graph_def
  x_info, total = new_sigs['s'].inputs['x'], new_sigs['s'].outputs['total']
  assert x_info.dtype == FLOAT
  assert tf.TensorShape(x_info.tensor_shape).as_list() == [None, 3]
  assert total.dtype == INT64 and [d.size for d in total.tensor_shape.dim] == [7]


def test_unknown_shapes_are_left_unknown():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, None, name='x')
    tf.identity(x, name='y')
  sigs = {'s': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}
  sigs['s'].outputs['y'].tensor_shape.dim.add().size = 3  # the signature claims a shape
  _, new_sigs, _ = placeholders.inputs_to_placeholders(graph.as_graph_def(), sigs)
  assert new_sigs['s'].outputs['y'].tensor_shape.unknown_rank
  assert not new_sigs['s'].outputs['y'].tensor_shape.dim


def test_a_graph_tensorflow_cannot_import_is_one_error():
  graph_def = small_graphs.graph_def('''
      node { name: "a" op: "NoSuchOp" }
      node { name: "y" op: "Identity" input: "a" }''')
  sigs = {'s': small_graphs.signature({'a': 'a:0'}, {'y': 'y:0'})}
  with pytest.raises(errors.UserError, match='TensorFlow cannot import the graph of g.pb: '
                                             '.*NoSuchOp'):
    placeholders.inputs_to_placeholders(graph_def, sigs, where='g.pb')


def test_output_dtype_from_op_defs():
  op_defs = {op: lean_tf.registered_op_defs().get(op)
             for op in ('IteratorGetNext', 'Unique', 'Const', 'Split', 'NoOp')}
  node = small_graphs.graph_def('''node { name: "n" op: "IteratorGetNext" attr {
      key: "output_types" value { list { type: DT_FLOAT type: DT_INT64_REF } } } }''').node[0]
  assert [placeholders.output_dtype(node, i, op_defs) for i in range(3)] == [FLOAT, INT64, None]
  unique = small_graphs.graph_def('node { name: "u" op: "Unique" attr { key: "T" value { '
                                  'type: DT_STRING } } }').node[0]  # out_idx: its default
  assert placeholders.output_dtype(unique, 1, op_defs) == INT32
  split = small_graphs.graph_def('node { name: "s" op: "Split" attr { key: "T" value { '
                                 'type: DT_FLOAT } } attr { key: "num_split" value { i: 3 } } '
                                 '}').node[0]
  assert [placeholders.output_dtype(split, i, op_defs) for i in (2, 3)] == [FLOAT, None]
  assert placeholders.output_dtype(node, 0, {}) is None


def test_output_dtypes_equal_shape_inference(tiny_model):
  """Every output of every node: the OpDef reading gives TensorFlow's dtype (or says unknown)."""
  meta_graph = meta_graph_of(tiny_model['saved_model'])
  op_defs = {o.name: o for o in meta_graph.meta_info_def.stripped_op_list.op}
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(meta_graph.graph_def, name='')
  checked = 0
  for node in meta_graph.graph_def.node:
    for index, tensor in enumerate(graph.get_operation_by_name(node.name).outputs):
      dtype = placeholders.output_dtype(node, index, op_defs)
      assert dtype is not None, (node.name, node.op)
      assert dtype == tensor.dtype.base_dtype.as_datatype_enum, (node.name, index)
      checked += 1
    assert placeholders.output_dtype(node, 99, op_defs) is None
  assert checked > 500


@pytest.mark.parametrize('producer,attr,expected', [
    (21, 'shape {}', None), (22, 'shape {}', []), (21, 'shape { dim { size: 3 } }', [3]),
    (27, 'shape { unknown_rank: true }', None), (27, None, None)])
def test_placeholder_shape_follows_the_producer_rule(producer, attr, expected):
  text = 'node { name: "p" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } '
  if attr:
    text += 'attr { key: "shape" value { %s } } ' % attr
  text += '} versions { producer: %d }' % producer
  graph_def = tf1.GraphDef()
  text_format.Parse(text, graph_def)
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  theirs = graph.get_tensor_by_name('p:0').shape
  ours = tf.TensorShape(placeholders.placeholder_shape(graph_def.node[0], producer))
  assert (ours.as_list() if ours.rank is not None else None) == expected
  assert (ours.rank is None and theirs.rank is None) or ours.as_list() == theirs.as_list()


def test_old_scalar_placeholders_are_rewritten_unknown():
  graph_def = small_graphs.graph_def('''
      node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } }
             attr { key: "shape" value { shape {} } } }
      node { name: "y" op: "Identity" input: "x" attr { key: "T" value { type: DT_FLOAT } } }
      versions { producer: 12 }''')
  sigs = {'s': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}
  out, new_sigs, _ = placeholders.inputs_to_placeholders(graph_def, sigs)
  assert out.node[0].attr['shape'].shape.unknown_rank  # as producer 12 meant it
  assert new_sigs['s'].inputs['x'].tensor_shape.unknown_rank


def test_copy_signature():
  sig = small_graphs.signature({'x': 'x:0'}, {})
  copy = placeholders.copy_signature(sig)
  copy.inputs['x'].name = 'other:0'
  assert copy != sig and sig.inputs['x'].name == 'x:0'


def test_a_sparse_reader_output_becomes_three_placeholders():
  graph = tf.Graph()
  with graph.as_default():
    def example(ids):
      return tf.train.Example(features=tf.train.Features(feature={'ids': tf.train.Feature(
          int64_list=tf.train.Int64List(value=ids))})).SerializeToString()
    data = tf.data.Dataset.from_tensor_slices([example([1, 2]), example([3])]).batch(2).map(
        lambda s: tf.io.parse_example(s, {'ids': tf.io.VarLenFeature(tf.int64)}))
    ids = tf1.data.make_one_shot_iterator(data).get_next()['ids']
    total = tf.sparse.reduce_sum(ids, axis=1, output_is_sparse=False, name='total')
    doubled = tf.sparse.map_values(tf.multiply, ids, 2)  # shares ids' indices and shape
    build = tf1.saved_model.utils.build_tensor_info
    sig = tf1.saved_model.signature_def_utils.build_signature_def(
        {'ids': build(ids)}, {'total': build(total), 'doubled': build(doubled)})
  graph_def = graph.as_graph_def()
  out, new_sigs, mapping = placeholders.inputs_to_placeholders(graph_def, {'s': sig})
  coo = new_sigs['s'].inputs['ids'].coo_sparse
  assert (coo.indices_tensor_name, coo.values_tensor_name, coo.dense_shape_tensor_name) == (
      'ids/indices:0', 'ids/values:0', 'ids/dense_shape:0')
  assert sorted(mapping.values()) == ['ids/dense_shape:0', 'ids/indices:0', 'ids/values:0']
  nodes = _nodes(out)
  assert {n: nodes['ids/' + n].attr['dtype'].type for n in ('indices', 'values', 'dense_shape')
          } == {'indices': INT64, 'values': INT64, 'dense_shape': INT64}
  # A fed tensor fetched as an output goes through an Identity (a session refuses both).
  doubled_out = new_sigs['s'].outputs['doubled'].coo_sparse
  assert doubled_out.indices_tensor_name == 'doubled/indices:0'
  assert nodes['doubled/indices'].op == 'Identity'
  assert list(nodes['doubled/indices'].input) == ['ids/indices:0']
  got = _run(out, ['total:0', doubled_out.values_tensor_name, doubled_out.indices_tensor_name],
             {'ids/indices:0': [[0, 0], [0, 1], [1, 0]], 'ids/values:0': [1, 2, 5],
              'ids/dense_shape:0': [2, 2]})
  assert got[0].tolist() == [3, 5] and got[1].tolist() == [2, 4, 10]
  assert got[2].tolist() == [[0, 0], [0, 1], [1, 0]]
