"""transforms.inline_calls: calls that take a table are inlined, and answer as before.

The graphs are built as TF2 functions appear in a frozen graph: a table at the top level passed
as a resource argument to a StatefulPartitionedCall, whose function calls another with it.
"""

import numpy as np
import tensorflow as tf

from freezerlib.transforms import inline_calls
from freezerlib.transforms import read_only_tables

tf1 = tf.compat.v1

KEYS = np.array([3, 5, 7], np.int64)
IDS = np.array([3, 4, 5, 7, -1, np.iinfo(np.int64).min], np.int64)


def _graph():
  """`table` filled by `init`; `out` = 2 * lookup + bias, the lookup two calls deep; `wait`
  (a NoOp) is a control input of the outer call, `counter` a variable the outer function
  increments on every call (a control output: no output reads it)."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    table = tf.raw_ops.MutableHashTableV2(key_dtype=tf.int64, value_dtype=tf.float32,
                                          name='table')
    tf.group(tf.raw_ops.LookupTableImportV2(
        table_handle=table, keys=tf.constant(KEYS), values=tf.constant([0.5, 1.5, 2.5])),
             name='init')
    counter = tf1.get_variable('counter', initializer=tf.constant(0, tf.int64),
                               use_resource=True)

    @tf.function
    def inner(handle, keys):
      return tf.raw_ops.LookupTableFindV2(table_handle=handle, keys=keys,
                                          default_value=tf.constant(-1.0))

    @tf.function
    def outer(handle, keys, bias, count):
      tf.raw_ops.AssignAddVariableOp(resource=count, value=tf.constant(1, tf.int64))
      return inner(handle, keys) * 2.0 + bias, keys

    tf1.no_op(name='wait')
    out, echoed = outer(table, ids, tf.constant(0.25), counter.handle)
    tf.identity(out, name='out')
    tf.identity(echoed, name='echoed')
  graph_def = graph.as_graph_def()
  [call] = [n for n in graph_def.node if n.op in inline_calls.CALL_OPS]
  call.input.append('^wait')
  return graph_def


def _run(graph_def, fetches=('out:0', 'echoed:0', 'counter/Read/ReadVariableOp:0')):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  with tf1.Session(graph=graph) as session:
    session.run(['init', 'counter/Assign'])
    first = session.run(list(fetches[:2]), {'ids:0': IDS})
    return first + [session.run(fetches[2])]


def test_calls_taking_the_table_are_inlined_and_answer_as_before():
  graph_def = _graph()
  before = _run(graph_def)
  calls = [n.name for n in graph_def.node if n.op in inline_calls.CALL_OPS]
  assert len(calls) == 1
  inlined = inline_calls.inline_calls_taking(graph_def, ['table'])
  assert inlined[0] == calls[0] and len(inlined) == 2  # the outer call, then the inner one
  nodes = {n.name: n for n in graph_def.node}
  assert not [n for n in graph_def.node if n.op in inline_calls.CALL_OPS]
  # The lookup reads the table itself, its default the function's Const.
  finds = [n for n in graph_def.node if n.op == 'LookupTableFindV2']
  assert len(finds) == 1 and finds[0].input[0] == 'table'
  assert finds[0].name.startswith(calls[0] + '/')
  assert nodes[finds[0].input[2].split(':')[0]].op == 'Const'
  # The call is an IdentityN of the outputs under its own name; the increment (a control
  # output) still runs with it, and the call's control input comes first.
  call = nodes[calls[0]]
  assert call.op == 'IdentityN' and len(call.attr['T'].list.type) == 2
  assert any(i.startswith('^') and nodes[i[1:]].op == 'AssignAddVariableOp'
             for i in call.input)
  scope = calls[0] + '/'
  first = [n for n in graph_def.node if n.name.startswith(scope) and
           not any(i.lstrip('^').startswith(scope) for i in n.input if i != '^wait')]
  assert first and all('^wait' in n.input for n in first)
  after = _run(graph_def)
  np.testing.assert_array_equal(after[0], before[0])
  np.testing.assert_array_equal(after[1], IDS)
  assert before[2] == after[2] == 1
  np.testing.assert_array_equal(before[0], [1.25, -1.75, 3.25, 5.25, -1.75, -1.75])


def test_calls_not_taking_the_nodes_are_left_and_nothing_to_inline_is_no_change():
  graph_def = _graph()
  copy = tf1.GraphDef()
  copy.CopyFrom(graph_def)
  assert inline_calls.inline_calls_taking(graph_def, ['ids_elsewhere']) == []
  assert inline_calls.inline_calls_taking(graph_def, []) == []
  assert graph_def == copy


def test_a_call_whose_function_is_missing_is_left_as_it_is():
  graph_def = _graph()
  call = [n for n in graph_def.node if n.op in inline_calls.CALL_OPS][0]
  call.attr['f'].func.name = 'not_in_the_library'
  copy = tf1.GraphDef()
  copy.CopyFrom(graph_def)
  assert inline_calls.inline_calls_taking(graph_def, ['table']) == []
  assert graph_def == copy


def test_read_only_tables_rewrites_a_table_read_inside_functions():
  """The rewrite inlines the calls and makes the table read-only; answers are bit for bit the
  same, unseen keys and the dense table's reserved keys included."""
  graph_def = _graph()
  before = _run(graph_def)
  done = read_only_tables.rewrite(graph_def, 'init', keep=['out', 'echoed', 'init'])
  assert [(d.table, d.keys, d.form) for d in done] == [('table', 3, 'dense')]
  ops = {n.name: n.op for n in graph_def.node}
  assert ops['table'] == read_only_tables.DENSE_OP
  after = _run(graph_def)
  for want, got in zip(before, after):
    np.testing.assert_array_equal(got, want)
  # Too small for min_bytes: not inlined, not rewritten.
  graph_def = _graph()
  assert read_only_tables.rewrite(graph_def, 'init', min_bytes=1000) == []
  assert [n for n in graph_def.node if n.op in inline_calls.CALL_OPS]
