"""Read-only hash tables of a frozen graph become tables of rows: the same answers, less than
half the memory.

Serving never writes the MutableHashTables training kept statistics or embeddings in; it only
looks keys up. Held as one, a table of vectors (MutableHashTableOfTensors: a node and a
separately allocated value array per key) takes about twice the bytes of its keys and values,
plus the keys and values it was filled from, which TensorFlow's CPU allocator keeps for reuse
(benchmarks/README.md, table forms). Here a table that only its fill (the init op's
import from Consts) writes and only LookupTableFindV2 reads becomes one of two forms:

- dense: a MutableDenseHashTable (open addressing: one array of keys, one of values), filled
  by inserting its entries from Consts (a GraphDef) or, in a SavedModel, restored by its saver
  importing those two arrays from variables/ (constants_as_variables), which then are the
  table's own: nothing is allocated twice. Its buckets are at most 0.8 used;
- static: a HashTableV2 (an absl flat_hash_map; no lock, no markers), imported from keys and
  rows; the allocator keeps the keys and rows it was imported from.

Vector values (K -> [D]) become rows (int32) of one matrix of the values, with one more row
per default value the lookups use; each lookup finds the row (the default's row for a key the
table does not hold) and gathers it (GatherV2). The matrix is a Const here: the SavedModel
restores it straight into a variable. Scalar values (K -> V) stay the table's values.

A dense table refuses two keys, its empty and deleted markers, where the original answers the
default. Both are chosen outside the table's keys (for integer keys, the type's two least
values unless the table holds them), and each lookup first replaces a key equal to either by a
third key outside the table (for integer keys one Maximum with the type's third least value
when the table holds none of the three, else Less and SelectV2 over the keys; Equal, Equal,
LogicalOr and SelectV2 for strings), so every key, those included, gets what the original
gives: its value if the table holds it, else the default.

Which form: the static table is the faster, the dense table the smaller (benchmarks/README.md
measures both, through the C API and through Python). `auto`, the default, takes the dense form
for integer keys, whose guard is one Maximum, and the static form for string keys, whose guard
costs two string comparisons per key.

Tables that anything else reads or writes (an insert, a remove, a size, an export), whose fill
is not an import from Consts, whose vector lookups take a default that is not a Const, whose
key and value types the table does not implement, or that hold no key, are left as they are.
Dense hash tables of the model itself are left too: they already are one array each.
"""

import dataclasses

from absl import logging

from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import numpy as np
from freezerlib.core.lean_tf import tensorflow as tf

_MUTABLE = {'MutableHashTableV2': False, 'MutableHashTableOfTensorsV2': True}  # -> of vectors
_FIND = 'LookupTableFindV2'
_FILL = 'LookupTableImportV2'
DENSE_OP = 'MutableDenseHashTableV2'
STATIC_OP = 'HashTableV2'
FORMS = ('dense', 'static')
# The dense table's buckets at creation: the least it takes. Inserting the entries grows them
# once; importing its bucket arrays replaces them.
_INITIAL_BUCKETS = 4
_MAX_LOAD_FACTOR = 0.8
_T = lean_tf.types_pb2
# The form each key type gets by default (else dense): see the module doc.
AUTO = {_T.DT_STRING: 'static'}


@dataclasses.dataclass
class Rewritten:
  """One table rewritten: its name, keys, whether its values became a matrix, bytes, form."""
  table: str
  keys: int
  matrix: bool
  nbytes: int
  form: str = 'dense'


def _kernels(op):
  """(key dtype enum, value dtype enum) pairs the table op `op` has a CPU kernel for."""
  from tensorflow.python.framework import kernels
  pairs = set()
  for kernel in kernels.get_registered_kernels_for_op(op).kernel:
    types = {c.name: c.allowed_values.list.type for c in kernel.constraint}
    for k in types.get('key_dtype', []):
      for v in types.get('value_dtype', []):
        pairs.add((k, v))
  return pairs


def _array(tensor):
  if tensor.tensor_content and tensor.dtype != _T.DT_STRING:
    dtype = tf.as_dtype(tensor.dtype).as_numpy_dtype
    return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(
        [d.size for d in tensor.tensor_shape.dim])
  return tf.make_ndarray(tensor)


def _const(name, array, dtype):
  node = lean_tf.NodeDef(name=name, op='Const')
  node.attr['dtype'].type = dtype.as_datatype_enum
  node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
  return node


def _node(name, op, inputs, device='', **types):
  node = lean_tf.NodeDef(name=name, op=op, input=list(inputs), device=device)
  for key, value in types.items():
    node.attr[key].type = value
  return node


def _markers(keys, key_type):
  """Three keys the table does not hold: empty marker, deleted marker, stand-in."""
  if key_type == _T.DT_STRING:
    held = set(keys.tolist())
    found, k = [], 0
    while len(found) < 3:
      candidate = b'\x00freezer:%d' % k
      if candidate not in held:
        found.append(candidate)
      k += 1
    return found
  info = np.iinfo(np.int64 if key_type == _T.DT_INT64 else np.int32)
  held = set(keys.astype(np.int64).tolist()) if len(keys) < (1 << 24) else None
  found, candidate = [], int(info.min)
  while len(found) < 3:
    if (candidate not in held) if held is not None else not np.any(keys == candidate):
      found.append(candidate)
    candidate += 1
  return found


def _dense_table(node, value_type, value_shape, markers, taken):
  """A MutableDenseHashTableV2 under `node`'s name and its empty and deleted key Consts."""
  key_type = node.attr['key_dtype'].type
  key_dtype = tf.as_dtype(key_type)
  empty = _const(graphs.unique_name(node.name + '/empty_key', taken), markers[0], key_dtype)
  deleted = _const(graphs.unique_name(node.name + '/deleted_key', taken), markers[1], key_dtype)
  dense = _node(node.name, DENSE_OP, [empty.name, deleted.name], node.device,
                key_dtype=key_type, value_dtype=value_type)
  dense.attr['value_shape'].shape.CopyFrom(tf.TensorShape(value_shape).as_proto())
  dense.attr['initial_num_buckets'].i = _INITIAL_BUCKETS
  dense.attr['max_load_factor'].f = _MAX_LOAD_FACTOR
  for key in ('container', 'shared_name', 'use_node_name_sharing'):
    if key in node.attr:
      dense.attr[key].CopyFrom(node.attr[key])
  return dense, [empty, deleted]


def _guarded_keys(find, markers_nodes, stand_in, key_type, flat, taken):
  """Nodes computing the keys `find` looks up with the markers replaced by `stand_in`, as a
  vector when `flat` (a dense table takes a vector of scalar keys; the lookup may pass any
  shape). Integer markers are the type's two least values when the table holds neither: then
  one Maximum with the stand-in, the third least, replaces them when the table does not hold
  that either (the usual case; one op where a comparison and a select take three times its
  time at batch 1), else one comparison (key < least + 2) finds them."""
  keys = find.input[1]
  base = find.name + '/keys'
  empty = _array(markers_nodes[0].attr['value'].tensor)
  deleted = _array(markers_nodes[1].attr['value'].tensor)
  stand = _array(stand_in.attr['value'].tensor)
  least = np.iinfo(empty.dtype).min if key_type != _T.DT_STRING else None
  if least is not None and (int(empty), int(deleted), int(stand)) == (least, least + 1,
                                                                       least + 2):
    # The three least values are all outside the table: raising every key to the third sends
    # both markers to a key the table does not hold and leaves every other key as it is.
    guarded = _node(graphs.unique_name(base + '/guarded', taken), 'Maximum',
                    [keys, stand_in.name], find.device, T=key_type)
    nodes = [guarded]
  elif least is not None and (int(empty), int(deleted)) == (least, least + 1):
    bound = _const(graphs.unique_name(base + '/marker_bound', taken), int(empty) + 2,
                   tf.as_dtype(key_type))
    either = _node(graphs.unique_name(base + '/is_marker', taken), 'Less', [keys, bound.name],
                   find.device, T=key_type)
    guarded = _node(graphs.unique_name(base + '/guarded', taken), 'SelectV2',
                    [either.name, stand_in.name, keys], find.device, T=key_type)
    nodes = [bound, either, guarded]
  else:
    empty_eq = _node(graphs.unique_name(base + '/is_empty_key', taken), 'Equal',
                     [keys, markers_nodes[0].name], find.device, T=key_type)
    empty_eq.attr['incompatible_shape_error'].b = True
    deleted_eq = _node(graphs.unique_name(base + '/is_deleted_key', taken), 'Equal',
                       [keys, markers_nodes[1].name], find.device, T=key_type)
    deleted_eq.attr['incompatible_shape_error'].b = True
    either = _node(graphs.unique_name(base + '/is_marker', taken), 'LogicalOr',
                   [empty_eq.name, deleted_eq.name], find.device)
    guarded = _node(graphs.unique_name(base + '/guarded', taken), 'SelectV2',
                    [either.name, stand_in.name, keys], find.device, T=key_type)
    nodes = [empty_eq, deleted_eq, either, guarded]
  if flat:
    minus_one = _const(graphs.unique_name(base + '/flat/shape', taken), [-1], tf.int32)
    vector = _node(graphs.unique_name(base + '/flat', taken), 'Reshape',
                   [guarded.name, minus_one.name], find.device, T=key_type,
                   Tshape=_T.DT_INT32)
    nodes += [minus_one, vector]
    guarded = vector
  return nodes, guarded.name


def _shaped_back(name, find, value_type, taken):
  """Nodes reshaping the vector lookup `name` back to `find`'s keys' shape (as `find`'s name
  when it is the lookup's result)."""
  shape = _node(graphs.unique_name(find.name + '/keys/shape', taken), 'Shape', [find.input[1]],
                find.device, T=find.attr['Tin'].type, out_type=_T.DT_INT32)
  back = _node(find.name, 'Reshape', [name, shape.name], find.device, T=value_type,
               Tshape=_T.DT_INT32)
  return [shape, back]


def _key_ranks(graph_def, tensors):
  """tensor name -> its static rank (None when unknown), from TensorFlow's shape inference
  over what computes them (placeholders and small ops, not the tables' contents)."""
  sub = graphs.extract_sub_graph(graph_def, sorted({graphs.node_name(t) for t in tensors}))
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(sub, name='')
    except (ValueError, tf.errors.OpError):
      return {t: None for t in tensors}
  ranks = {}
  for t in tensors:
    shape = graph.get_tensor_by_name(graphs.tensor_name(t)).shape
    ranks[t] = shape.rank
  return ranks


def _static_table(node, value_type):
  """A HashTableV2 NodeDef under `node`'s name, keys as `node`'s, values `value_type`."""
  static = _node(node.name, STATIC_OP, [], node.device, key_dtype=node.attr['key_dtype'].type,
                 value_dtype=value_type)
  for key in ('container', 'shared_name', 'use_node_name_sharing'):
    if key in node.attr:
      static.attr[key].CopyFrom(node.attr[key])
  return static


def rewrite(graph_def, init_op, min_bytes=0, keep=(), form='auto'):
  """Rewrites every read-only mutable hash table of the frozen `graph_def` as a dense or a
  static one.

  Args:
    graph_def: a frozen GraphDef whose tables `init_op` fills from Consts (modified in place).
    init_op: name of the NoOp that fills the tables (freezer/init_tables), or None.
    min_bytes: only tables whose keys and values take at least this many bytes.
    keep: names of nodes to keep even if nothing reads them any more (the lookups' old
      default values are removed otherwise).
    form: 'dense' (MutableDenseHashTableV2, keys guarded against its markers), 'static'
      (HashTableV2: no markers, more memory), or 'auto': static for string keys, dense for
      integer keys (see the module doc).

  Returns:
    list of Rewritten.
  """
  if not init_op:
    return []
  nodes = {n.name: n for n in graph_def.node}
  consumers = {}
  for node in graph_def.node:
    for i in node.input:
      consumers.setdefault(graphs.node_name(i), []).append(node)
  fills = {graphs.node_name(i) for i in nodes[init_op].input if i.startswith('^')}
  kernels = {}
  taken = set(nodes)
  done, dropped, added, dead = [], set(), [], set()
  for table in [n for n in graph_def.node if n.op in _MUTABLE]:
    users = consumers.get(table.name, [])
    fill = [u for u in users if u.op == _FILL]
    finds = [u for u in users if u.op == _FIND]
    if len(fill) != 1 or len(fill) + len(finds) != len(users) or not finds:
      continue
    fill = fill[0]
    keys, values = (nodes.get(graphs.node_name(i)) for i in fill.input[1:3])
    if (fill.name not in fills or keys is None or values is None or
        keys.op != 'Const' or values.op != 'Const' or
        len(consumers.get(keys.name, [])) != 1 or len(consumers.get(values.name, [])) != 1 or
        any(graphs.node_name(f.input[0]) != table.name for f in finds)):
      continue
    count = [d.size for d in keys.attr['value'].tensor.tensor_shape.dim]
    if len(count) != 1 or count[0] < 1:
      continue  # scalar keys only; an empty table stays as it is
    count = count[0]
    of_vectors = _MUTABLE[table.op]
    key_type, value_type = table.attr['key_dtype'].type, table.attr['value_dtype'].type
    table_form = AUTO.get(key_type, 'dense') if form == 'auto' else form
    op = DENSE_OP if table_form == 'dense' else STATIC_OP
    if op not in kernels:
      kernels[op] = _kernels(op)
    # Rows as int32 where they fit: 4 bytes less per bucket.
    row_type = (_T.DT_INT32 if (key_type, _T.DT_INT32) in kernels[op] and
                count < 2**31 - len(finds) else _T.DT_INT64)
    if of_vectors:
      defaults = [nodes.get(graphs.node_name(f.input[2])) for f in finds]
      if (key_type, row_type) not in kernels[op] or any(d is None or d.op != 'Const'
                                                        for d in defaults):
        continue
    elif (key_type, value_type) not in kernels[op]:
      continue
    nbytes = lean_tf.tensor_nbytes(keys.attr['value'].tensor) + lean_tf.tensor_nbytes(
        values.attr['value'].tensor)
    if nbytes < min_bytes:
      continue
    if table_form == 'dense':
      ranks = _key_ranks(graph_def, [f.input[1] for f in finds])
      markers = _markers(_array(keys.attr['value'].tensor), key_type)
      dense, marker_nodes = _dense_table(table, row_type if of_vectors else value_type, [],
                                         markers, taken)
      stand_in = _const(graphs.unique_name(table.name + '/stand_in_key', taken), markers[2],
                        tf.as_dtype(key_type))
      added.extend(marker_nodes + [stand_in])
      table.CopyFrom(dense)
      flat = [ranks[f.input[1]] != 1 for f in finds]
      guarded = []
      for find, to_flatten in zip(finds, flat):
        guard, keys_name = _guarded_keys(find, marker_nodes, stand_in, key_type, to_flatten,
                                         taken)
        added.extend(guard)
        guarded.append(keys_name)
      fill.op = 'LookupTableInsertV2'
    else:  # a static table takes keys of any shape and any key
      table.CopyFrom(_static_table(table, row_type if of_vectors else value_type))
      flat = [False] * len(finds)
      guarded = [f.input[1] for f in finds]
    fill.attr['Tout'].type = table.attr['value_dtype'].type
    if of_vectors:
      dead.update(d.name for d in defaults)
      rows = _to_rows(table, values, finds, guarded, flat, defaults, row_type, taken, added)
      fill.input[2] = rows.name
      dropped.add(values.name)
    else:
      for find, keys_name, to_flatten in zip(finds, guarded, flat):
        if to_flatten:  # the lookup of a vector, shaped back as the keys were
          shape, back = _shaped_back(graphs.unique_name(find.name + '/flat', taken), find,
                                     value_type, taken)
          find.name = back.input[0]
          added.extend([shape, back])
        find.input[1] = keys_name
    done.append(Rewritten(table.name, count, of_vectors, nbytes, table_form))
    logging.info('table %s: read-only %s of %d keys (%s) made a %s table%s', table.name,
                 'MutableHashTableOfTensorsV2' if of_vectors else 'MutableHashTableV2', count,
                 units.human_bytes(nbytes), table_form,
                 ' of rows of one matrix' if of_vectors else '')
  if dropped:
    kept = [n for n in graph_def.node if n.name not in dropped]
    del graph_def.node[:]
    graph_def.node.extend(kept)
  graph_def.node.extend(added)
  graphs.remove_unused(graph_def, dead, keep)
  return done


def _to_rows(table, values, finds, guarded, flat, defaults, row_type, taken, added):
  """The vector-valued table `table` maps keys to rows of a matrix; each lookup gathers.
  Returns the Const of the rows (the table's new values)."""
  value_dtype = tf.as_dtype(values.attr['value'].tensor.dtype)
  row_dtype = tf.as_dtype(row_type)
  contents = _array(values.attr['value'].tensor)
  count = contents.shape[0]
  rows_by_default = {}  # a default's bytes -> its row
  extra, default_rows = [], []
  for default in defaults:
    value = np.reshape(_array(default.attr['value'].tensor), contents.shape[1:]).astype(
        contents.dtype)
    key = value.tobytes() if value.dtype != object else repr(value.tolist())
    if key not in rows_by_default:
      rows_by_default[key] = count + len(extra)
      extra.append(value)
    default_rows.append(rows_by_default[key])
  matrix = np.concatenate([contents, np.stack(extra)])
  del contents
  rows = _const(graphs.unique_name(values.name + '_rows', taken),
                np.arange(count, dtype=row_dtype.as_numpy_dtype), row_dtype)
  matrix_node = _const(graphs.unique_name(table.name + '/values_by_row', taken), matrix,
                       value_dtype)
  del matrix
  axis = _const(graphs.unique_name(table.name + '/gather_axis', taken), 0, tf.int32)
  added.extend([rows, matrix_node, axis])
  for find, keys_name, to_flatten, default_row in zip(finds, guarded, flat, default_rows):
    row = _const(graphs.unique_name(find.name + '/default_row', taken), default_row, row_dtype)
    lookup = _node(graphs.unique_name(find.name + '/row', taken), _FIND,
                   [find.input[0], keys_name, row.name] + list(find.input[3:]), find.device,
                   Tin=find.attr['Tin'].type, Tout=row_type)
    added.extend([row, lookup])
    indices = lookup.name
    if to_flatten:
      shaped = _shaped_back(lookup.name, find, row_type, taken)
      shaped[1].name = graphs.unique_name(lookup.name + '/shaped', taken)
      added.extend(shaped)
      indices = shaped[1].name
    name, device = find.name, find.device
    find.Clear()
    find.name, find.op, find.device = name, 'GatherV2', device
    find.input.extend([matrix_node.name, indices, axis.name])
    find.attr['Tparams'].type = value_dtype.as_datatype_enum
    find.attr['Tindices'].type = row_type
    find.attr['Taxis'].type = _T.DT_INT32
    find.attr['batch_dims'].i = 0
  return rows
