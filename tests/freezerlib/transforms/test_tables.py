"""transforms/tables: each kind of table exported from a session and filled again from
constants; a dense table's empty and deleted buckets dropped."""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.transforms import tables

tf1 = tf.compat.v1

IDS = np.array([3, 5, 7, 11, 13, 99], np.int64)
WORDS = np.array([b'apple', b'kiwi', b'zzz'], dtype=object)


@pytest.fixture(scope='module')
def filled():
  """A session holding one table of each kind, filled; the lookups of IDS and WORDS."""
  graph = tf.Graph()
  with graph.as_default():
    static = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant([3, 5], tf.int64), tf.constant([0.5, 1.5])), -1.0, name='static')
    mutable = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -2.0, name='mutable')
    of_tensors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, [0.0, 0.0],
                                                         name='of_tensors')
    dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.float32, default_value=-3.0,
                                                  empty_key=-1, deleted_key=-5, name='dense',
                                                  initial_num_buckets=8)
    ref = tf.raw_ops.MutableHashTable(key_dtype=tf.int64, value_dtype=tf.float32, name='ref')
    ids, words = tf.constant(IDS), tf.constant(WORDS)
    lookups = {
        'static': static.lookup(ids), 'mutable': mutable.lookup(ids),
        'of_tensors': of_tensors.lookup(words), 'dense': dense.lookup(ids),
        'ref': tf.raw_ops.LookupTableFind(table_handle=ref, keys=ids, default_value=-4.0)}
    session = tf1.Session(graph=graph)
    session.run(tf1.tables_initializer())
    session.run([
        mutable.insert(tf.constant([5, 11], tf.int64), tf.constant([2.0, 110.0])),
        of_tensors.insert(tf.constant([b'apple', b'kiwi']), tf.constant([[1.0, 2.0], [3.0, 4.0]])),
        dense.insert(tf.constant([3, 7, 13], tf.int64), tf.constant([30.0, 70.0, 130.0])),
        tf.raw_ops.LookupTableInsert(table_handle=ref, keys=tf.constant([99], tf.int64),
                                     values=tf.constant([9.9]))])
    session.run(dense.erase(tf.constant([13], tf.int64)))  # a deleted bucket
    expected = session.run(lookups)
  yield session, {k: v.name for k, v in lookups.items()}, expected
  session.close()


def _node(session, name):
  return [n for n in session.graph.as_graph_def().node if n.name == name][0]


@pytest.mark.parametrize('name,op,keys,values', [
    ('static', 'HashTableV2', [3, 5], [0.5, 1.5]),
    ('mutable', 'MutableHashTableV2', [5, 11], [2.0, 110.0]),
    ('of_tensors', 'MutableHashTableOfTensorsV2', [b'apple', b'kiwi'], [[1.0, 2.0], [3.0, 4.0]]),
    ('dense', 'MutableDenseHashTableV2', [3, 7], [30.0, 70.0]),
    ('ref', 'MutableHashTable', [99], [9.9])])
def test_export_each_kind(filled, name, op, keys, values):
  session = filled[0]
  node = _node(session, name)
  assert node.op == op
  contents = tables.export_table(session, node)
  assert (contents.name, contents.op) == (name, op)
  order = np.argsort(contents.keys, axis=0)
  assert contents.keys[order].tolist() == keys
  np.testing.assert_allclose(contents.values[order], values, rtol=1e-6)


def test_drop_empty_buckets_with_vector_keys():
  node = tf1.NodeDef(name='d', op='MutableDenseHashTableV2')
  node.attr['value_shape'].shape.dim.add().size = 2
  empty, deleted = np.array([-1, -1]), np.array([-2, -2])
  keys = np.array([[1, 2], [-1, -1], [-2, -2], [-1, 5], [3, 4]])
  values = np.arange(10, dtype=np.float32)  # flat, as some exports come
  got_keys, got_values = tables.drop_empty_buckets(node, keys, values, empty, deleted)
  assert got_keys.tolist() == [[1, 2], [-1, 5], [3, 4]]  # -1 in one part of a key is a key
  assert got_values.tolist() == [[0, 1], [6, 7], [8, 9]]


def test_fill_nodes_per_kind(filled):
  session = filled[0]
  taken = {'freezer/tables/mutable/keys'}
  contents = tables.export_table(session, _node(session, 'mutable'))
  nodes, fill = tables.fill_nodes(_node(session, 'mutable'), contents, taken)
  assert [(n.name, n.op) for n in nodes] == [
      ('freezer/tables/mutable/keys_1', 'Const'), ('freezer/tables/mutable/values', 'Const'),
      ('freezer/tables/mutable/fill', 'LookupTableImportV2')]
  assert fill == 'freezer/tables/mutable/fill' and {n.name for n in nodes} <= taken
  assert list(nodes[2].input) == ['mutable', 'freezer/tables/mutable/keys_1',
                                  'freezer/tables/mutable/values']
  assert nodes[2].attr['Tin'].type == tf.int64.as_datatype_enum
  assert nodes[2].attr['Tout'].type == tf.float32.as_datatype_enum
  np.testing.assert_array_equal(tf.make_ndarray(nodes[0].attr['value'].tensor), contents.keys)
  ops = {}
  for name in ('static', 'of_tensors', 'dense', 'ref'):
    node = _node(session, name)
    ops[name] = tables.fill_nodes(node, tables.export_table(session, node), set())[0][2].op
  assert ops == {'static': 'LookupTableImportV2', 'of_tensors': 'LookupTableImportV2',
                 'dense': 'LookupTableInsertV2', 'ref': 'LookupTableImport'}


def test_filled_graph_answers_as_the_session(filled):
  session, lookups, expected = filled
  graph_def = session.graph.as_graph_def()
  init, contents = tables.add_table_fill(graph_def, session)
  assert init == 'freezer/init_tables'
  assert sorted(c.name for c in contents) == ['dense', 'mutable', 'of_tensors', 'ref', 'static']
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(graph_def, name='')
    with tf1.Session(graph=graph) as fresh:
      empty = fresh.run(lookups['mutable'])
      assert empty.tolist() == [-2.0] * len(IDS)  # a new session: the tables are empty
      fresh.run(init)
      got = fresh.run(lookups)
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)


def test_no_tables_no_fill():
  graph = tf.Graph()
  with graph.as_default():
    tf.constant(1.0, name='c')
    with tf1.Session() as session:
      graph_def = graph.as_graph_def()
      assert tables.add_table_fill(graph_def, session) == (None, [])
  assert [n.name for n in graph_def.node] == ['c']


def test_contents_bytes():
  numeric = tables.TableContents('t', 'MutableHashTableV2', np.zeros(3, np.int64),
                                 np.zeros((3, 2), np.float32))
  assert numeric.nbytes == 24 + 24
  strings = tables.TableContents('t', 'MutableHashTableV2',
                                 np.array([b'ab', b'cde'], dtype=object), np.zeros(2, np.int32))
  assert strings.nbytes == 5 + 8


def test_dense_export_is_its_bucket_array(filled):
  """What export_table drops: the raw export has the empty and deleted buckets' markers."""
  session = filled[0]
  with session.graph.as_default():
    handle = session.graph.get_tensor_by_name('dense:0')
    raw_keys, _ = session.run(tf.raw_ops.LookupTableExportV2(
        table_handle=handle, Tkeys=tf.int64, Tvalues=tf.float32))
  assert raw_keys.size == 8 and {-1, -5} <= set(np.ravel(raw_keys).tolist())
  assert sorted(tables.export_table(session, _node(session, 'dense')).keys.tolist()) == [3, 7]
