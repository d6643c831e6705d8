"""transforms/saver: what a graph's saver restores into which variable or table, and a new
saver over chosen ones that TensorFlow runs."""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.transforms import saver
import small_graphs

tf1 = tf.compat.v1


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A graph with a ref variable, a resource one, a 3-way partitioned one, a mutable table and
  a static table, its Saver's checkpoint, and the values it holds."""
  graph = tf.Graph()
  with graph.as_default():
    tf1.get_variable('ref_w', initializer=tf.constant([1.0, 2.0]), use_resource=False)
    tf1.get_variable('res_w', initializer=tf.constant([[3.0]]), use_resource=True)
    emb = tf1.get_variable('emb', [10, 2], partitioner=tf1.fixed_size_partitioner(3),
                           initializer=tf1.random_normal_initializer(seed=2), use_resource=True)
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0, name='table')
    static = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['a'], tf.string), tf.constant([1], tf.int64)), -1, name='static')
    lookup = tf.identity(table.lookup(tf.constant([4, 6], tf.int64)), name='lookup')
    static.lookup(tf.constant(['a']), name='static_lookup')
    the_saver = tf1.train.Saver()
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      session.run(table.insert(tf.constant([4, 5], tf.int64), tf.constant([40.0, 50.0])))
      prefix = the_saver.save(session, str(tmp_path_factory.mktemp('ckpt') / 'model.ckpt'))
      values = {'res_w': session.run('res_w/Read/ReadVariableOp:0'),
                'emb': np.concatenate(session.run([p.read_value() for p in emb])),
                'lookup': session.run(lookup)}
  return graph.as_graph_def(), the_saver.as_saver_def(), prefix, values


def _by_target(restores):
  return {r.target: (r.op.op, r.names, r.specs, [d.name for d in r.dtypes]) for r in restores}


def test_restores_of_a_tf1_saver(trained):
  graph_def, saver_def, _, _ = trained
  restores = saver.restores_of_saver(graph_def, saver_def, 'g')
  assert _by_target(restores) == {
      'ref_w': ('Assign', ['ref_w'], [''], ['float32']),
      'res_w': ('AssignVariableOp', ['res_w'], [''], ['float32']),
      'emb/part_0': ('AssignVariableOp', ['emb'], ['10 2 0,4:0,2'], ['float32']),
      'emb/part_1': ('AssignVariableOp', ['emb'], ['10 2 4,3:0,2'], ['float32']),
      'emb/part_2': ('AssignVariableOp', ['emb'], ['10 2 7,3:0,2'], ['float32']),
      'table': ('LookupTableImportV2', ['table-keys', 'table-values'], ['', ''],
                ['int64', 'float32']),
  }


def test_wants_merge_slices_and_know_whole_shapes(trained):
  graph_def, saver_def, _, _ = trained
  wants = {w.name: w for w in saver.wants(saver.restores_of_saver(graph_def, saver_def, 'g'),
                                          graph_def)}
  assert sorted(wants) == ['emb', 'ref_w', 'res_w', 'table-keys', 'table-values']
  assert wants['emb'].specs == ['10 2 0,4:0,2', '10 2 4,3:0,2', '10 2 7,3:0,2']
  assert wants['emb'].shape is None
  assert (wants['ref_w'].shape, wants['res_w'].shape) == ([2], [1, 1])
  assert wants['table-keys'].shape is None and wants['table-keys'].dtype == tf.int64


def test_a_new_saver_over_chosen_state_restores_and_saves(trained, tmp_path):
  graph_def, saver_def, prefix, values = trained
  restores = [r for r in saver.restores_of_saver(graph_def, saver_def, 'g')
              if r.target != 'ref_w']
  new_graph = lean_tf.graph_pb2.GraphDef()
  new_graph.CopyFrom(graph_def)
  new_saver = saver.add_saver(new_graph, restores)
  assert new_saver.restore_op_name == 'save_1/restore_all'  # `save` is the old saver's
  assert new_saver.version == lean_tf.saver_pb2.SaverDef.V2
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(new_graph, name='')
    with tf1.Session(graph=graph) as session:
      session.run(new_saver.restore_op_name, {new_saver.filename_tensor_name: prefix})
      np.testing.assert_array_equal(session.run('res_w/Read/ReadVariableOp:0'), values['res_w'])
      np.testing.assert_array_equal(session.run('lookup:0'), values['lookup'])
      with pytest.raises(tf.errors.FailedPreconditionError):
        session.run('ref_w:0')  # not restored by the new saver
      out = str(tmp_path / 'new')
      session.run(new_saver.save_tensor_name, {new_saver.filename_tensor_name: out})
  reader = tf.train.load_checkpoint(out)
  assert reader.get_variable_to_shape_map() == {
      'res_w': [1, 1], 'emb': [10, 2], 'table-keys': [2], 'table-values': [2]}
  np.testing.assert_array_equal(reader.get_tensor('emb'), values['emb'])
  assert sorted(reader.get_tensor('table-keys').tolist()) == [4, 5]
  for spec, rows in (('10 2 0,4:0,2', slice(0, 4)), ('10 2 7,3:0,2', slice(7, 10))):
    part = tf.raw_ops.RestoreV2(prefix=out, tensor_names=['emb'], shape_and_slices=[spec],
                                dtypes=[tf.float32])[0]
    np.testing.assert_array_equal(part, values['emb'][rows])


def test_static_table_initialisers(trained):
  graph_def, saver_def, _, _ = trained
  restore_ops = {r.op.name for r in saver.restores_of_saver(graph_def, saver_def, 'g')}
  inits = saver.static_table_inits(graph_def, {'static', 'table'}, restore_ops)
  # KeyValueTensorInitializer fills a static table with LookupTableImportV2 too: found by
  # its table, not by its op.
  assert inits == ['key_value_init/LookupTableImportV2']
  assert saver.static_table_inits(graph_def, {'table'}, restore_ops) == []
  assert saver.static_table_inits(graph_def, {'static'}, set(inits)) == []


def test_savers_this_cannot_read(trained):
  graph_def, saver_def, _, _ = trained
  with pytest.raises(errors.UserError, match='g has no saver'):
    saver.restores_of_saver(graph_def, lean_tf.saver_pb2.SaverDef(), 'g')
  with pytest.raises(errors.UserError, match="g: its saver's restore op nope is not in the graph"):
    saver.restores_of_saver(graph_def, lean_tf.saver_pb2.SaverDef(restore_op_name='nope'), 'g')
  names = small_graphs.graph_def('''
      node { name: "names" op: "Placeholder" }
      node { name: "specs" op: "Const" attr { key: "value" value { tensor { dtype: DT_STRING
             tensor_shape { dim { size: 1 } } string_val: "" } } } }
      node { name: "restore" op: "RestoreV2" input: "f" input: "names" input: "specs" }
      node { name: "f" op: "Const" }
      node { name: "all" op: "NoOp" input: "^restore" }''')
  with pytest.raises(errors.UserError, match='the saver reads tensor names from names, which is '
                                             'not a constant'):
    saver.restores_of_saver(names, lean_tf.saver_pb2.SaverDef(restore_op_name='all'), 'g')
  names.node[0].CopyFrom(names.node[1])
  names.node[0].name = 'names'
  names.node[2].attr['dtypes'].list.type.append(tf.float32.as_datatype_enum)
  with pytest.raises(errors.UserError, match='g: cannot tell which variables its saver restores'):
    saver.restores_of_saver(names, lean_tf.saver_pb2.SaverDef(restore_op_name='all'), 'g')


def test_node_def():
  node = saver.node_def('n', 'RestoreV2', ['a', '^b'], dtypes=[tf.float32, tf.int64],
                        T=lean_tf.DType(tf.string.as_datatype_enum), flag=True)
  assert list(node.input) == ['a', '^b']
  assert list(node.attr['dtypes'].list.type) == [tf.float32.as_datatype_enum,
                                                 tf.int64.as_datatype_enum]
  assert node.attr['T'].type == tf.string.as_datatype_enum and node.attr['flag'].b
