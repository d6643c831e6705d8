"""transforms.read_only_tables: read-only hash tables become dense tables, exactly.

Small frozen graphs with tables filled from Consts by an init op, as freezer.py writes them:
every key the table holds, keys it does not, and the keys the dense table reserves (its empty
and deleted markers and the stand-in) answer the same before and after.
"""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.transforms import read_only_tables

tf1 = tf.compat.v1

INT_KEYS = np.array([3, 5, 7, -2**63, 2**63 - 1, 0], np.int64)
WORDS = np.array([b'apple', b'', b'cherry', b'\x00freezer:9'], object)


def _graph(insert_too=False, empty=False):
  """A frozen-style GraphDef: tables filled by `init` from Consts, looked up by `ids`/`words`."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    words = tf1.placeholder(tf.string, [None, None], name='words')
    vectors = tf.raw_ops.MutableHashTableOfTensorsV2(
        key_dtype=tf.int64, value_dtype=tf.float32, value_shape=[3], name='vectors')
    by_word = tf.raw_ops.MutableHashTableOfTensorsV2(
        key_dtype=tf.string, value_dtype=tf.int64, value_shape=[2], name='by_word')
    scalars = tf.raw_ops.MutableHashTableV2(key_dtype=tf.int64, value_dtype=tf.float32,
                                            name='scalars')
    # Its keys leave int64's three least values free: the markers and the stand-in.
    plain = tf.raw_ops.MutableHashTableOfTensorsV2(
        key_dtype=tf.int64, value_dtype=tf.float32, value_shape=[2], name='plain')
    # Its keys leave the two least free, not the third: the stand-in is the fourth.
    edge = tf.raw_ops.MutableHashTableV2(key_dtype=tf.int64, value_dtype=tf.int32, name='edge')
    n = 0 if empty else len(INT_KEYS)
    fills = [
        tf.raw_ops.LookupTableImportV2(
            table_handle=vectors, keys=tf.constant(INT_KEYS[:n]),
            values=tf.constant(np.arange(3 * n, dtype=np.float32).reshape(n, 3) + 0.5)),
        tf.raw_ops.LookupTableImportV2(
            table_handle=by_word, keys=tf.constant(WORDS),
            values=tf.constant(np.arange(8, dtype=np.int64).reshape(4, 2) * 10)),
        tf.raw_ops.LookupTableImportV2(
            table_handle=scalars, keys=tf.constant(INT_KEYS),
            values=tf.constant(np.arange(6, dtype=np.float32) * 1.5)),
        tf.raw_ops.LookupTableImportV2(
            table_handle=plain, keys=tf.constant([3, 5, 4], tf.int64),
            values=tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])),
        tf.raw_ops.LookupTableImportV2(
            table_handle=edge, keys=tf.constant([-2**63 + 2, 3], tf.int64),
            values=tf.constant([11, 12], tf.int32)),
    ]
    tf.group(*fills, name='init')
    # Two lookups of one table with different defaults, one with the same as another.
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=vectors, keys=ids, default_value=tf.constant([-1.0, -2.0, -3.0])), 'v1')
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=vectors, keys=ids * 1, default_value=tf.constant([9.0, 9.0, 9.0])), 'v2')
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=vectors, keys=ids + 0, default_value=tf.constant([-1.0, -2.0, -3.0])), 'v3')
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=by_word, keys=words, default_value=tf.constant([7, 7], tf.int64)), 'w')
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=scalars, keys=ids, default_value=tf.constant(-0.25)), 's')
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=plain, keys=ids, default_value=tf.constant([0.0, -0.0])), 'p')
    tf.identity(tf.raw_ops.LookupTableFindV2(
        table_handle=edge, keys=ids, default_value=tf.constant(-1, tf.int32)), 'e')
    if insert_too:
      tf.raw_ops.LookupTableInsertV2(table_handle=scalars, keys=ids, values=tf.zeros_like(
          ids, tf.float32), name='update')
  return graph.as_graph_def()


OUTPUTS = ['v1:0', 'v2:0', 'v3:0', 'w:0', 's:0', 'p:0', 'e:0']


def _run(graph_def, ids, words):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  with tf1.Session(graph=graph) as session:
    session.run('init')
    return session.run(OUTPUTS, {'ids:0': ids, 'words:0': words})


def _feeds():
  """Every key held, unseen keys, and the keys a dense table reserves."""
  info = np.iinfo(np.int64)
  ids = np.concatenate([INT_KEYS, [4, 1, -1, info.min + 1, info.min + 2, info.min + 3,
                                   info.max - 1]]).astype(np.int64)
  words = np.array([[b'apple', b'', b'cherry'], [b'kiwi', b'\x00freezer:0', b'\x00freezer:1'],
                    [b'\x00freezer:2', b'\x00freezer:9', b'\x00freezer:3']], object)
  return ids, words


@pytest.mark.parametrize('form', read_only_tables.FORMS + ('auto',))
def test_every_key_held_unseen_or_reserved_answers_as_before(form):
  graph_def = _graph()
  rewritten = tf1.GraphDef()
  rewritten.CopyFrom(graph_def)
  done = read_only_tables.rewrite(rewritten, 'init', keep=['init'] + [o[:-2] for o in OUTPUTS],
                                  form=form)
  assert sorted((d.table, d.keys, d.matrix) for d in done) == [
      ('by_word', 4, True), ('edge', 2, False), ('plain', 3, True), ('scalars', 6, False),
      ('vectors', 6, True)]
  ops = [n.op for n in rewritten.node]
  if form == 'dense':
    assert ops.count(read_only_tables.DENSE_OP) == 5
    # The table without int64's three least values takes them as markers and stand-in: one
    # Maximum replaces the markers. Holding the third, one Less finds them.
    assert ops.count('Maximum') == 1 and ops.count('Less') == 1
    assert ops.count('LogicalOr') == 5 and ops.count('SelectV2') == 6
  elif form == 'static':
    assert ops.count(read_only_tables.STATIC_OP) == 5
    assert not {'Less', 'LogicalOr', 'SelectV2', 'Maximum'} & set(ops)
  else:  # string keys static, integer keys dense
    by_name = {n.name: n.op for n in rewritten.node}
    assert by_name['by_word'] == read_only_tables.STATIC_OP
    assert {by_name[t] for t in ('vectors', 'scalars', 'plain', 'edge')} == {
        read_only_tables.DENSE_OP}
    assert {d.form for d in done} == {'static', 'dense'}
  assert not {'MutableHashTableV2', 'MutableHashTableOfTensorsV2'} & set(ops)
  # Vector values are one matrix, with a row for each distinct default.
  nodes = {n.name: n for n in rewritten.node}
  matrix = tf.make_ndarray(nodes['vectors/values_by_row'].attr['value'].tensor)
  assert matrix.shape == (len(INT_KEYS) + 2, 3)
  ids, words = _feeds()
  before, after = _run(graph_def, ids, words), _run(rewritten, ids, words)
  for name, want, got in zip(OUTPUTS, before, after):
    assert want.dtype == got.dtype and want.shape == got.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)  # bit for bit
    assert np.array_equal(np.signbit(got), np.signbit(want)), name  # -0.0 stays -0.0
  # The feeds do hit the tables and miss them.
  assert (before[4] == -0.25).sum() == 7 and (before[3] == 7).all(axis=-1).sum() == 5
  assert (before[6] == 11).sum() == 1 and (before[6] == 12).sum() == 1


def test_tables_written_or_empty_or_small_are_left_as_they_are():
  for graph_def, kwargs in ((_graph(insert_too=True), {}), (_graph(empty=True), {}),
                            (_graph(), {'min_bytes': 10**6})):
    before = tf1.GraphDef()
    before.CopyFrom(graph_def)
    done = read_only_tables.rewrite(graph_def, 'init', **kwargs)
    names = {d.table for d in done}
    if 'min_bytes' in kwargs:
      assert not names
    else:
      assert 'scalars' not in names if 'update' in {n.name for n in graph_def.node} else \
          'vectors' not in names
  graph_def = _graph(insert_too=True)
  read_only_tables.rewrite(graph_def, 'init')
  ops = {n.name: n.op for n in graph_def.node}
  assert ops['scalars'] == 'MutableHashTableV2' and ops['update'] == 'LookupTableInsertV2'


@pytest.mark.parametrize('key_type', ['int64', 'string'])
def test_markers_are_never_keys_of_the_table(key_type):
  if key_type == 'string':
    keys = np.array([b'\x00freezer:0', b'\x00freezer:2', b'a'], object)
    markers = read_only_tables._markers(keys, tf.string.as_datatype_enum)
  else:
    info = np.iinfo(np.int64)
    keys = np.array([info.min, info.min + 2, 5], np.int64)
    markers = read_only_tables._markers(keys, tf.int64.as_datatype_enum)
  assert len(set(markers)) == 3 and not set(markers) & set(keys.tolist())
