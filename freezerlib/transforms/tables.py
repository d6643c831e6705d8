"""Hash-table contents: read them from a live session, write them back as graph constants.

`convert_variables_to_constants` turns variables into constants but leaves every table empty,
so a frozen model's lookups all return the default. Here each table the outputs read is
exported from the loaded session (`LookupTableExportV2`) and re-filled in the frozen graph by
ops that take the contents as constants: `LookupTableImportV2` for hash tables (mutable and
static: static ones are initialised that way by `KeyValueTensorInitializer` too), and
`LookupTableInsertV2` for dense hash tables, whose export is the raw bucket array (empty
buckets included) that only makes sense for the same bucket count.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from absl import logging

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import numpy as np  # imported on first use, as TensorFlow
from freezerlib.core.lean_tf import tensorflow as tf
from freezerlib.formats import saved_model

tf1 = lean_tf.tf1

HASH_TABLE_OPS = frozenset({'HashTableV2', 'HashTable'})
MUTABLE_TABLE_OPS = frozenset({
    'MutableHashTableV2', 'MutableHashTable',
    'MutableHashTableOfTensorsV2', 'MutableHashTableOfTensors'})
DENSE_TABLE_OPS = frozenset({'MutableDenseHashTableV2', 'MutableDenseHashTable'})
TABLE_OPS = HASH_TABLE_OPS | MUTABLE_TABLE_OPS | DENSE_TABLE_OPS

INIT_OP_NAME = 'freezer/init_tables'


@dataclasses.dataclass
class TableContents:
  """What one table holds: `keys[i]` maps to `values[i]`.

  A freezer that writes a table without holding it (the streaming one) leaves `keys` and
  `values` None and gives their count and size instead.
  """
  name: str
  op: str
  keys: Optional[np.ndarray]
  values: Optional[np.ndarray]
  count: Optional[int] = None  # keys, when `keys` is not held
  size: Optional[int] = None   # bytes of keys and values, when they are not held

  @property
  def num_keys(self):
    return len(self.keys) if self.keys is not None else self.count

  @property
  def nbytes(self):
    if self.keys is None:
      return self.size
    size = lambda a: (sum(len(x) for x in a.ravel()) if a.dtype == object else a.nbytes)
    return size(self.keys) + size(self.values)


def table_nodes(graph_def):
  """The table-creating nodes of `graph_def`, in graph order."""
  return [n for n in graph_def.node if n.op in TABLE_OPS]


def _is_ref_table(node):
  return not node.op.endswith('V2')


def export_table(session, node):
  """Reads the contents of the table made by `node` in `session`'s graph.

  Dense hash tables export every bucket; empty and deleted buckets are dropped here.

  Args:
    session: a Session whose graph holds `node` (already restored / initialised).
    node: the table's NodeDef.

  Returns:
    TableContents.
  """
  graph = session.graph
  handle = graph.get_tensor_by_name(node.name + ':0')
  key_dtype = tf.as_dtype(node.attr['key_dtype'].type)
  value_dtype = tf.as_dtype(node.attr['value_dtype'].type)
  with graph.as_default(), tf.name_scope('freezer_export'):
    export = tf.raw_ops.LookupTableExport if _is_ref_table(node) else tf.raw_ops.LookupTableExportV2
    keys_t, values_t = export(table_handle=handle, Tkeys=key_dtype, Tvalues=value_dtype)
    extra = []
    if node.op in DENSE_TABLE_OPS:
      # empty_key and deleted_key, to tell used buckets from free ones.
      extra = [graph.get_tensor_by_name(i if ':' in i else i + ':0') for i in node.input[:2]]
  results = session.run([keys_t, values_t] + extra)
  keys, values = results[0], results[1]
  if node.op in DENSE_TABLE_OPS:
    keys, values = drop_empty_buckets(node, keys, values, results[2], results[3])
  return TableContents(name=node.name, op=node.op, keys=keys, values=values)


def drop_empty_buckets(node, keys, values, empty_key, deleted_key):
  """A dense hash table's export is its bucket array; keeps the buckets that hold a key.

  Args:
    node: the MutableDenseHashTable NodeDef (for its value_shape).
    keys, values: the export.
    empty_key, deleted_key: the table's markers of free buckets.

  Returns:
    (keys, values) of the entries only.
  """
  value_shape = tuple(d.size for d in node.attr['value_shape'].shape.dim)
  keys = keys.reshape((-1,) + np.shape(empty_key))
  values = values.reshape((-1,) + value_shape)
  flat = keys.reshape(len(keys), -1)
  used = ~(np.all(flat == np.reshape(empty_key, -1), axis=1) |
           np.all(flat == np.reshape(deleted_key, -1), axis=1))
  return keys[used], values[used]


def _const_node(name, array, dtype):
  node = tf1.NodeDef(name=name, op='Const')
  node.attr['dtype'].type = dtype.as_datatype_enum
  node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
  return node


def fill_names(table_node, taken):
  """Names of the keys and values Consts and of the op that fill `table_node` (fill_nodes'),
  made unique among `taken`, to which they are added."""
  scope = 'freezer/tables/' + table_node.name
  return tuple(graphs.unique_name(scope + part, taken) for part in ('/keys', '/values', '/fill'))


def fill_op(table_node, keys_name, values_name, name):
  """The NodeDef that fills `table_node` from the Consts `keys_name` and `values_name`."""
  key_dtype = table_node.attr['key_dtype'].type
  value_dtype = table_node.attr['value_dtype'].type
  if table_node.op in DENSE_TABLE_OPS:
    op = 'LookupTableInsertV2' if not _is_ref_table(table_node) else 'LookupTableInsert'
  else:
    op = 'LookupTableImportV2' if not _is_ref_table(table_node) else 'LookupTableImport'
  fill = lean_tf.NodeDef(name=name, op=op, input=[table_node.name, keys_name, values_name])
  fill.attr['Tin'].type = key_dtype
  fill.attr['Tout'].type = value_dtype
  return fill


def fill_nodes(table_node, contents, taken):
  """NodeDefs that fill `table_node` with `contents` when run: two Consts and an import op.

  Args:
    table_node: the table's NodeDef in the frozen graph.
    contents: TableContents exported from the trained model.
    taken: node names already in the graph; the new names are added to it.

  Returns:
    (list of NodeDefs, name of the op that fills the table).
  """
  key_dtype = tf.as_dtype(table_node.attr['key_dtype'].type)
  value_dtype = tf.as_dtype(table_node.attr['value_dtype'].type)
  keys_name, values_name, fill_name = fill_names(table_node, taken)
  keys = _const_node(keys_name, contents.keys, key_dtype)
  values = _const_node(values_name, contents.values, value_dtype)
  fill = fill_op(table_node, keys_name, values_name, fill_name)
  return [keys, values, fill], fill.name


def add_table_fill(graph_def, session):
  """Adds to `graph_def` the contents of each of its tables, read from `session`.

  Args:
    graph_def: frozen GraphDef (modified in place).
    session: the Session holding the trained tables under the same node names.

  Returns:
    (name of a NoOp that fills every table, or None if there are no tables;
     list of TableContents, for reporting).
  """
  nodes = table_nodes(graph_def)
  if not nodes:
    return None, []
  taken = {n.name for n in graph_def.node}
  fills, exported = [], []
  for node in nodes:
    start = time.perf_counter()
    contents = export_table(session, node)
    seconds = time.perf_counter() - start
    logging.info('table %s (%s): %d keys, %s exported in %.1f s (%s/s)', node.name, node.op,
                 len(contents.keys), units.human_bytes(contents.nbytes), seconds,
                 units.human_bytes(contents.nbytes / max(seconds, 1e-9)))
    new_nodes, fill_name = fill_nodes(node, contents, taken)
    graph_def.node.extend(new_nodes)
    fills.append(fill_name)
    exported.append(contents)
  init = tf1.NodeDef(name=graphs.unique_name(INIT_OP_NAME, taken), op='NoOp',
                     input=['^' + f for f in fills])
  graph_def.node.append(init)
  return init.name, exported


_CALL_OPS = frozenset({'StatefulPartitionedCall', 'PartitionedCall'})
_DT_RESOURCE = 20  # types_pb2.DT_RESOURCE, without importing TensorFlow


def check_tables_filled(graph_def, signatures, init_op, restore_op=None, where='the graph'):
  """Refuses a frozen graph whose signatures read a table nothing fills when it loads.

  Every table op the signature outputs reach must be filled by `init_op` (freezer/init_tables)
  or restored by `restore_op` (a kept table's saver); a resource made by a top-level function
  call (a table created inside a function, which only its SavedModel's initializer filled)
  must not be read at all. A static check, no TensorFlow: the frozen graph answers with the
  original's contents only if both hold.

  Args:
    graph_def: the frozen GraphDef.
    signatures: signature key -> SignatureDef.
    init_op: name of the op that fills the tables, or None.
    restore_op: name of the saver's restore op of a graph that keeps variables, or None.
    where: the graph's path, for messages.

  Raises:
    errors.UserError: naming the first table or resource at fault.
  """
  names = {n.name for n in graph_def.node}
  outputs = [n for n in saved_model.signature_output_nodes(signatures) if n in names]
  read = graphs.reachable(graph_def, outputs)
  filled = set()
  for op in (init_op, restore_op):
    if op and op in names:
      filled |= graphs.reachable(graph_def, [op])
  for node in graph_def.node:
    if node.name not in read:
      continue
    if node.op in TABLE_OPS and node.name not in filled:
      raise errors.UserError(
          'the signatures of %s read the table %s (%s), which nothing fills when the graph '
          'loads: it would answer every key with the default; nothing written'
          % (where, node.name, node.op))
    if node.op in _CALL_OPS and _DT_RESOURCE in node.attr['Tout'].list.type:
      raise errors.UserError(
          'the signatures of %s read a resource made by %s (a call of function %s), which a '
          'frozen graph cannot fill; nothing written' % (where, node.name,
                                                         node.attr['f'].func.name))
