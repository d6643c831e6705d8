"""Big constants of a frozen graph become variables of the serving SavedModel; tables are
restored by its saver.

A frozen GraphDef carries its values in Const nodes. In a SavedModel that costs load time:
every loader parses the whole graph and hands copies of it to the session, which takes longer
than restoring the same bytes from a checkpoint (benchmarks/README.md, start-up figures). So
optimize_from_pb.py writes every Const of at least
`--constants_as_variables` bytes as a resource variable: a VarHandleOp, and a ReadVariableOp
under the Const's own name (every consumer and signature is unchanged), whose value the
SavedModel's `variables/` holds and whose saver restores it before the main op runs.

A table the init op fills from two Consts (keys and values, `freezer/init_tables`) is held
twice if those Consts stay, in the graph or as variables: once as the tensors, once in the
table. So a table whose contents reach the same size is restored as TensorFlow's own table
saveables restore one: the saver's RestoreV2 reads `<table>-keys` and `<table>-values` from
variables/ and LookupTableImportV2 puts them straight into the table; nothing else holds them
after the restore. (A dense hash table is stored as its bucket arrays, as its own saveable
stores it: importing those is how it restores.)

A graph frozen with `--keep_as_variables` already has a saver over its kept variables and
tables: the new saver restores those too, and variables/ is the kept checkpoint (hard-linked)
merged with the new tensors. The GraphDef written with `--output_graph` keeps its constants
(a GraphDef has no variables/).
"""

import dataclasses
from typing import List

from absl import logging

from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import numpy as np
from freezerlib.core.lean_tf import tensorflow as tf
from freezerlib.formats import checkpoint_copy
from freezerlib.transforms import saver
from freezerlib.transforms import tables

_NOT_STORABLE = frozenset({lean_tf.types_pb2.DT_RESOURCE, lean_tf.types_pb2.DT_VARIANT})
# The init op's ops that fill a table from two tensors: hash tables (mutable and static) import
# their contents, dense hash tables get their entries inserted.
_FILL_OPS = frozenset({'LookupTableImportV2', 'LookupTableInsertV2'})
# variables/ is written in pieces of about this many bytes (each one SaveV2, then merged), so
# memory holds one piece's copy at a time, not a copy of every value.
_PIECE_BYTES = 512 << 20


@dataclasses.dataclass
class TableFill:
  """A table the init op filled from two Consts, now restored by the saver.

  Attributes:
    table: the table's NodeDef.
    names: checkpoint names of its keys and values.
    nodes: the NodeDefs that filled it (keys and values Consts, then the fill op): the frozen
      graph's own, for the GraphDef written with --output_graph.
    markers: a dense hash table's empty_key and deleted_key Consts.
  """
  table: object
  names: List[str]
  nodes: List[object]
  markers: List[object] = dataclasses.field(default_factory=list)

  @property
  def dense(self):
    return self.table.op in tables.DENSE_TABLE_OPS

  @property
  def keys(self):
    return self.nodes[0].attr['value'].tensor

  @property
  def values(self):
    return self.nodes[1].attr['value'].tensor


@dataclasses.dataclass
class Split:
  """A FrozenModel whose big constants are variables and whose tables the saver restores.

  Attributes:
    frozen: the FrozenModel, with a saver (`saver_def`) over the new variables and tables (and
      over those a --keep_as_variables graph kept).
    values: checkpoint name -> (VarHandleOp name, TensorProto of the value).
    tables: TableFill of each table the saver now restores.
    kept: saver.Restore of each variable and table the frozen graph's own saver restored
      (--keep_as_variables), whose tensors are in its checkpoint.
  """
  frozen: object
  values: dict
  tables: List[TableFill] = dataclasses.field(default_factory=list)
  kept: List[object] = dataclasses.field(default_factory=list)

  @property
  def nbytes(self):
    """Bytes of the values set aside (variables and table contents)."""
    return (sum(lean_tf.tensor_nbytes(t) for _, t in self.values.values()) +
            sum(lean_tf.tensor_nbytes(f.keys) + lean_tf.tensor_nbytes(f.values)
                for f in self.tables))


def parse_threshold(text):
  """--constants_as_variables: a size, or 'off' -> None.

  Raises:
    errors.UserError: not a size.
  """
  if text is None or text.strip().lower() in ('', 'off', 'none'):
    return None
  return units.parse_size(text, '--constants_as_variables', ", or 'off'")


def _consumers(graph_def):
  out = {}
  for node in graph_def.node:
    for i in node.input:
      out.setdefault(graphs.node_name(i), []).append(node.name)
  return out


def _table_fills(frozen, nodes, consumers, min_bytes, always=()):
  """The fills of `frozen`'s init op that the saver can do instead: TableFill of each (without
  checkpoint names yet)."""
  init = nodes.get(frozen.table_init_op) if frozen.table_init_op else None
  if init is None:
    return []
  found = []
  for control in init.input:
    fill = nodes.get(graphs.node_name(control))
    if (not control.startswith('^') or fill is None or fill.op not in _FILL_OPS or
        len(fill.input) != 3 or consumers.get(fill.name) != [init.name]):
      continue
    table, keys, values = (nodes.get(graphs.node_name(i)) for i in fill.input)
    if (table is None or keys is None or values is None or
        table.op not in tables.TABLE_OPS or not table.op.endswith('V2') or
        (fill.op == 'LookupTableInsertV2') != (table.op in tables.DENSE_TABLE_OPS) or
        keys.op != 'Const' or values.op != 'Const' or
        any(consumers.get(c.name) != [fill.name] for c in (keys, values))):
      continue
    size = (lean_tf.tensor_nbytes(keys.attr['value'].tensor) +
            lean_tf.tensor_nbytes(values.attr['value'].tensor))
    markers = [nodes.get(graphs.node_name(i)) for i in table.input[:2]]
    if table.op in tables.DENSE_TABLE_OPS and any(m is None or m.op != 'Const' for m in markers):
      continue
    if size >= min_bytes or table.name in always:
      found.append(TableFill(table, [], [keys, values, fill],
                             markers if table.op in tables.DENSE_TABLE_OPS else []))
  return found


def _restore_of_table(fill):
  key_dtype = lean_tf.as_dtype(fill.table.attr['key_dtype'].type)
  value_dtype = lean_tf.as_dtype(fill.table.attr['value_dtype'].type)
  op = saver.node_def('', 'LookupTableImportV2', Tin=key_dtype, Tout=value_dtype)
  return saver.Restore(target=fill.table.name, op=op, names=list(fill.names), specs=['', ''],
                       dtypes=[key_dtype, value_dtype])


def split(frozen, min_bytes, where='the graph', tables_always=()):
  """Sets aside every Const of `frozen` and every table's contents of at least `min_bytes`.

  Consts become variables; tables filled from Consts by the init op are restored by the
  saver instead (their fill ops and Consts go, and the init op with them if it is left empty).

  Args:
    frozen: frozen_graph.FrozenModel (not modified; the values returned are its own
      TensorProtos, not copies). May have a saver (freezer.py --keep_as_variables).
    min_bytes: the threshold, compared with the bytes of each Const's values and of each
      table's keys and values together.
    where: the graph's path, for messages.
    tables_always: names of tables the saver restores whatever their size (those the
      read_only_tables rewrite made, whose contents it sized as they were).

  Returns:
    Split, or None when nothing is that big.
  """
  nodes = {n.name: n for n in frozen.graph_def.node}
  consumers = _consumers(frozen.graph_def)
  fills = _table_fills(frozen, nodes, consumers, min_bytes, set(tables_always))
  kept = []
  dropped = set()
  if frozen.saver_def is not None:
    kept = saver.restores_of_saver(frozen.graph_def, frozen.saver_def, where)
    dropped |= saver.owned_nodes(frozen.graph_def, frozen.saver_def)
  names_taken = {n for r in kept for n in r.names}
  restores = []
  for fill in fills:
    fill.names = [graphs.unique_name('%s-%s' % (fill.table.name, part), names_taken)
                  for part in ('keys', 'values')]
    restores.append(_restore_of_table(fill))
    dropped |= {n.name for n in fill.nodes}
  # A dense table's empty and deleted keys are read when the table is made, which the
  # restore does: they stay constants.
  table_inputs = {graphs.node_name(i) for n in frozen.graph_def.node
                  if n.op in tables.TABLE_OPS for i in n.input}
  graph_def = lean_tf.graph_pb2.GraphDef()
  graph_def.versions.CopyFrom(frozen.graph_def.versions)
  graph_def.library.CopyFrom(frozen.graph_def.library)
  taken = set(nodes)
  values, handles = {}, []
  init_op = frozen.table_init_op
  for node in frozen.graph_def.node:
    if node.name in dropped:
      continue
    if node.name == init_op and fills:
      left = [i for i in node.input if graphs.node_name(i) not in dropped]
      if not left:
        init_op = None
        continue
      graph_def.node.add(name=node.name, op=node.op, input=left, device=node.device)
      continue
    dtype = node.attr['dtype'].type if node.op == 'Const' else None
    if (dtype is None or dtype in _NOT_STORABLE or node.name in table_inputs or
        lean_tf.tensor_nbytes(node.attr['value'].tensor) < min_bytes):
      graph_def.node.add().CopyFrom(node)
      continue
    tensor = node.attr['value'].tensor  # not copied: `frozen` holds it
    handle = lean_tf.NodeDef(name=graphs.unique_name(node.name + '/variable', taken),
                             op='VarHandleOp')
    handle.attr['dtype'].type = dtype
    handle.attr['shape'].shape.CopyFrom(tensor.tensor_shape)
    handle.attr['shared_name'].s = handle.name.encode('utf-8')
    handle.attr['container'].s = b''
    handles.append(handle)
    name = graphs.unique_name(node.name, names_taken)
    values[name] = (handle.name, tensor)
    assign = lean_tf.NodeDef(op='AssignVariableOp')
    assign.attr['dtype'].type = dtype
    restores.append(saver.Restore(target=handle.name, op=assign, names=[name], specs=[''],
                                  dtypes=[lean_tf.as_dtype(dtype)]))
    controls = [i for i in node.input if i.startswith('^')]
    read = graph_def.node.add(name=node.name, op='ReadVariableOp', input=[handle.name] + controls)
    read.attr['dtype'].type = dtype
  if not restores:
    return None
  graph_def.node.extend(handles)
  saver_def = saver.add_saver(graph_def, kept + restores)
  for fill in fills:
    logging.info('table %s (%s): restored by the saver from %s and %s', fill.table.name,
                 fill.table.op, *fill.names)
  return Split(dataclasses.replace(frozen, graph_def=graph_def, saver_def=saver_def,
                                   table_init_op=init_op), values, fills, kept)


def inline(the_split):
  """The FrozenModel of `the_split` with its variables as Consts again and its tables filled
  from Consts by the init op: what a GraphDef file holds. The ReadVariableOps (which carry the
  Consts' names) become the Consts, with their control inputs; the saver goes, or with
  --keep_as_variables becomes one over the kept variables and tables only."""
  frozen = the_split.frozen
  dropped = saver.owned_nodes(frozen.graph_def, frozen.saver_def)
  dropped |= {handle for handle, _ in the_split.values.values()}
  by_read = {}
  for handle, tensor in the_split.values.values():
    by_read[handle] = tensor
  graph_def = lean_tf.graph_pb2.GraphDef()
  graph_def.versions.CopyFrom(frozen.graph_def.versions)
  graph_def.library.CopyFrom(frozen.graph_def.library)
  for node in frozen.graph_def.node:
    if node.name in dropped:
      continue
    source = graphs.node_name(node.input[0]) if node.input else None
    if node.op == 'ReadVariableOp' and source in by_read:
      const = lean_tf.NodeDef(name=node.name, op='Const',
                              input=[i for i in node.input if i.startswith('^')])
      const.attr['dtype'].type = node.attr['dtype'].type
      const.attr['value'].tensor.CopyFrom(by_read[source])
      graph_def.node.append(const)
    else:
      graph_def.node.add().CopyFrom(node)
  init_op = frozen.table_init_op
  if the_split.tables:
    existing = {n.name: n for n in graph_def.node}
    for fill in the_split.tables:
      graph_def.node.extend(fill.nodes)
    controls = ['^' + fill.nodes[-1].name for fill in the_split.tables]
    if init_op and init_op in existing:
      existing[init_op].input.extend(controls)
    else:
      init_op = graphs.unique_name(tables.INIT_OP_NAME, set(existing))
      graph_def.node.add(name=init_op, op='NoOp', input=controls)
  saver_def = saver.add_saver(graph_def, the_split.kept) if the_split.kept else None
  return dataclasses.replace(frozen, graph_def=graph_def, saver_def=saver_def,
                             table_init_op=init_op)


def _array(tensor):
  """The value of a TensorProto; a view of its bytes when it has tensor_content (what
  tf.make_ndarray copies once more)."""
  if tensor.tensor_content and tensor.dtype not in (lean_tf.types_pb2.DT_STRING,):
    dtype = tf.as_dtype(tensor.dtype).as_numpy_dtype
    shape = [d.size for d in tensor.tensor_shape.dim]
    return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
  return tf.make_ndarray(tensor)


def _dense_buckets(fill):
  """A dense hash table's contents as its own saveable stores them: its bucket arrays, from a
  table of the same kind (empty and deleted keys, value shape) filled with the entries."""
  tf1 = tf.compat.v1
  graph_def = lean_tf.graph_pb2.GraphDef()
  for node in fill.markers + [fill.table]:
    graph_def.node.add().CopyFrom(node)
    graph_def.node[-1].device = ''
  graph = tf.Graph()
  with graph.as_default():
    table, = tf.graph_util.import_graph_def(graph_def, return_elements=[fill.table.name + ':0'],
                                            name='')
    keys = tf1.placeholder(fill.keys.dtype)
    values = tf1.placeholder(fill.values.dtype)
    insert = tf.raw_ops.LookupTableInsertV2(table_handle=table, keys=keys, values=values)
    export = tf.raw_ops.LookupTableExportV2(table_handle=table, Tkeys=keys.dtype,
                                            Tvalues=values.dtype)
  with tf1.Session(graph=graph) as session:
    session.run(insert, {keys: _array(fill.keys), values: _array(fill.values)})
    return session.run(export)


def _tensors_to_write(the_split):
  """(checkpoint name, bytes, callable returning its value) of every tensor variables/ gets."""
  out = []
  for name, (_, tensor) in the_split.values.items():
    out.append((name, lean_tf.tensor_nbytes(tensor), lambda t=tensor: _array(t)))
  for fill in the_split.tables:
    size = lean_tf.tensor_nbytes(fill.keys) + lean_tf.tensor_nbytes(fill.values)
    if fill.dense:
      buckets = []  # computed for the keys, handed over with the values

      def bucket(k, fill=fill, buckets=buckets):
        if not buckets:
          buckets.extend(_dense_buckets(fill))
        value = buckets[k]
        if k == 1:
          del buckets[:]
        return value
      out.append((fill.names[0], size, lambda b=bucket: b(0)))
      out.append((fill.names[1], 0, lambda b=bucket: b(1)))
    else:
      out.append((fill.names[0], size, lambda t=fill.keys: _array(t)))
      out.append((fill.names[1], 0, lambda t=fill.values: _array(t)))
  return out


def _save(prefix, items):
  """SaveV2 of `items` ((name, value) pairs) as the checkpoint `prefix`."""
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=[n for n, _ in items],
                    shape_and_slices=[''] * len(items),
                    tensors=[tf.constant(v) for _, v in items])


def variables_writer(the_split, kept_prefix=None):
  """A callable(variables_dir) writing the values of `the_split`'s variables and tables as its
  saver's checkpoint there (for saved_model.write_saved_model).

  Values are written in pieces of about 512 MiB, each from one copy in memory, then merged
  into one checkpoint with the kept checkpoint `kept_prefix` (hard-linked, not copied), if
  any.
  """
  def write(variables_dir):
    prefix = files.join(variables_dir, 'variables')
    items = _tensors_to_write(the_split)
    pieces, piece, size = [], [], 0
    for item in items:
      if piece and size + item[1] > _PIECE_BYTES and item[1]:
        pieces.append(piece)
        piece, size = [], 0
      piece.append(item)
      size += item[1]
    if piece:
      pieces.append(piece)
    if len(pieces) == 1 and kept_prefix is None:
      _save(prefix, [(n, value()) for n, _, value in pieces[0]])
      return
    parts = []
    if kept_prefix is not None:
      part = files.join(variables_dir, '.kept', 'variables')
      files.makedirs(files.parent_dir(part))
      checkpoint_copy.link_checkpoint(kept_prefix, part)
      parts.append(part)
    for k, piece in enumerate(pieces):
      part = files.join(variables_dir, '.piece_%d' % k, 'variables')
      _save(part, [(n, value()) for n, _, value in piece])
      parts.append(part)
    # Renames the pieces' data files into place, merges their indexes, and removes the
    # pieces' directories.
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix,
                                  delete_old_dirs=True)
    for part in parts:
      if files.isdir(files.parent_dir(part)):
        files.rmtree(files.parent_dir(part))

  return write
