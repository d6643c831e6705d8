"""A freezer that never holds the model: constants streamed from the checkpoint into the file.

A serialized GraphDef is a sequence of `node` records (field 1), then `library` and `versions`.
Each frozen variable becomes a Const NodeDef whose `tensor_content` is exactly the bytes the
checkpoint stores for it (little-endian, row-major: the same encoding), so the record's header
is computed from the sizes in the checkpoint index and the bytes are copied from the data file in
pieces. Peak memory is TensorFlow's own plus the graph's structure and one piece, not several
copies of every variable (TensorFlow's `convert_variables_to_constants` restores them all in a
session, reads them all into numpy, then builds the whole GraphDef in memory).

It applies where the graph reads its variables the plain way (ReadVariableOp, ResourceGather,
VariableShape, a ref variable's Identity), every variable and mutable table is restored from the
SavedModel's variables/ by its saver, and there are no static tables (whose contents only an init
op run in a session makes). Elsewhere `plan` returns None and freezer.py uses the in-memory path.

Variables and tables chosen with --keep_as_variables are not frozen: they stay as they are (any
op may read them), a saver over exactly them is added (saver.add_saver), and their
stored bytes are copied into a checkpoint beside the output before the graph is written
(keep_variables).
"""

import contextlib
import dataclasses
import time
from typing import Dict, List

from absl import logging

from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import numpy as np  # imported on first use
from freezerlib.core.lean_tf import tensor_pb2
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.formats import leveldb_table
from freezerlib.formats import stored_tensor
from freezerlib.transforms import prune
from freezerlib.transforms import saver
from freezerlib.transforms import tables

_VARIABLE_OPS = frozenset({'VarHandleOp', 'VariableV2', 'Variable'})
# How each plain reader of a resource variable becomes an op on the constant.
_RESOURCE_READERS = frozenset({'ReadVariableOp', 'ResourceGather', 'VariableShape',
                               'VarIsInitializedOp'})
_REF_READERS = frozenset({'Identity', 'RefIdentity'})


@dataclasses.dataclass
class Source:
  """Where a frozen variable's value comes from: checkpoint tensor `name`, slice `spec`."""
  name: str
  spec: str
  dtype: object  # tf.DType


@dataclasses.dataclass
class Plan:
  graph_def: graph_pb2.GraphDef          # the needed subgraph, readers already rewritten
  signatures: dict                       # with the placeholders that replace reader outputs
  variables: Dict[str, Source]           # Const node name -> where its value is
  table_sources: Dict[str, List[Source]]  # table node -> [keys, values]
  checkpoint: checkpoint_index.Checkpoint
  # Variables and tables that stay stateful (--keep_as_variables): how each is restored.
  kept: List[saver.Restore] = dataclasses.field(default_factory=list)


def _field(number, payload_len):
  """Header of a length-delimited protobuf field."""
  return (leveldb_table.encode_varint(number << 3 | 2) +
          leveldb_table.encode_varint(payload_len))


def plan(meta_graph, signatures, export_dir, kept=()):
  """Decides whether the model can be streamed; returns a Plan or None (with the reason logged).

  Args:
    meta_graph: the SavedModel's MetaGraphDef.
    signatures: signature key -> SignatureDef to keep.
    export_dir: the SavedModel directory (its variables/ is the checkpoint read).
    kept: names of variable and table nodes to keep stateful (--keep_as_variables); only this
      path keeps them, so when it cannot be used the reason is raised instead of logged.

  Raises:
    errors.UserError: the checkpoint does not match the graph, or `kept` is not empty and the
      model cannot be streamed.
  """
  kept = set(kept)
  _skip = _skipper(kept)
  prefix = files.join(export_dir, 'variables', 'variables')
  if not meta_graph.saver_def.restore_op_name or not files.exists(prefix + '.index'):
    return _skip('no saver or no variables/ to stream from')
  # Reader outputs become placeholders; the reader and all else serving does not run go.
  sub, signatures, _ = prune.cut_to_signatures(meta_graph.graph_def, signatures,
                                               where=export_dir)
  nodes = {n.name: n for n in sub.node}
  if any(n.op in tables.HASH_TABLE_OPS for n in sub.node):
    return _skip('static tables are filled by an init op, which needs a session')
  restores = {r.target: r for r in saver.restores_of_saver(
      meta_graph.graph_def, meta_graph.saver_def, export_dir)}
  variables, table_sources, kept_restores, kept_sources = {}, {}, [], []
  for node in sub.node:
    if node.op in _VARIABLE_OPS or node.op in tables.TABLE_OPS:
      r = restores.get(node.name)
      if r is None:
        return _skip('%s is not restored by the saver' % node.name)
      sources = [Source(n, s, d) for n, s, d in zip(r.names, r.specs, r.dtypes)]
      if node.name in kept:
        kept_restores.append(r)
        kept_sources.extend(sources)
      elif node.op in _VARIABLE_OPS:
        variables[node.name] = sources[0]
      else:
        table_sources[node.name] = sources
  for node in sub.node:
    for graph_input in node.input:
      source = graphs.node_name(graph_input)
      if source not in variables or graph_input.startswith('^'):
        continue
      readers = _RESOURCE_READERS if nodes[source].op == 'VarHandleOp' else _REF_READERS
      if node.op not in readers:
        return _skip('%s reads %s through %s (control flow or other ops over variables)'
                     % (node.name, source, node.op))
  checkpoint = checkpoint_index.read_index(prefix)
  wants = {}
  for s in (list(variables.values()) + [s for v in table_sources.values() for s in v] +
            kept_sources):
    wants.setdefault(s.name, checkpoint_index.Want(s.name, s.dtype)).specs.append(s.spec)
  checkpoint_index.check_restorable(checkpoint, list(wants.values()), export_dir)
  return Plan(_rewrite_readers(sub, variables), signatures, variables, table_sources,
              checkpoint, kept_restores)


def _skipper(kept):
  def skip(reason):
    if kept:
      raise errors.UserError(
          '--keep_as_variables needs the streaming freezer, which cannot freeze this model (%s); '
          'leave the flag out, or serve it from its checkpoint with optimize_from_ckpt.py'
          % reason)
    logging.info('streaming freezer not used: %s; freezing in memory', reason)
    return None
  return skip


def _rewrite_readers(sub, variables):
  """Variables become Consts (values filled at write time); their readers, plain ops on them."""
  out = graph_pb2.GraphDef()
  out.CopyFrom(sub)
  taken = {n.name for n in out.node}
  extra = []
  for node in out.node:
    # Parameter-server placements (/job:ps/task:k) do not exist where the frozen graph runs.
    node.device = ''
    if node.name in variables:
      name = node.name
      node.Clear()
      node.name, node.op = name, 'Const'
      node.attr['dtype'].type = variables[name].dtype.as_datatype_enum
      continue
    source = graphs.node_name(node.input[0]) if node.input else None
    if source not in variables:
      continue
    if node.op == 'ReadVariableOp':
      dtype = node.attr['dtype'].type
      node.op = 'Identity'
      for key in list(node.attr):
        del node.attr[key]
      node.attr['T'].type = dtype
    elif node.op == 'ResourceGather':
      dtype, tindices = node.attr['dtype'].type, node.attr['Tindices'].type
      batch_dims = node.attr['batch_dims'].i if 'batch_dims' in node.attr else 0
      for key in list(node.attr):
        del node.attr[key]
      axis = lean_tf.NodeDef(name=graphs.unique_name(node.name + '/axis', taken), op='Const')
      axis.attr['dtype'].type = tf.int32.as_datatype_enum
      axis.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(0, tf.int32))
      extra.append(axis)
      node.op = 'GatherV2'
      node.input.insert(2, axis.name)
      node.attr['Tparams'].type = dtype
      node.attr['Tindices'].type = tindices
      node.attr['Taxis'].type = tf.int32.as_datatype_enum
      node.attr['batch_dims'].i = batch_dims
    elif node.op == 'VariableShape':
      out_type = node.attr['out_type'].type
      for key in list(node.attr):
        del node.attr[key]
      node.op = 'Shape'
      node.attr['T'].type = variables[source].dtype.as_datatype_enum
      node.attr['out_type'].type = out_type
    elif node.op == 'VarIsInitializedOp':
      node.op = 'Const'
      del node.input[:]
      for key in list(node.attr):
        del node.attr[key]
      node.attr['dtype'].type = tf.bool.as_datatype_enum
      node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(True))
    elif node.op in _REF_READERS:
      node.attr['T'].type = graphs.base_dtype(node.attr['T'].type)
  out.node.extend(extra)
  return out


def _stored_record(checkpoint, source):
  """(index key, entry) of the stored bytes holding exactly `source`, or None (strings, and
  slices the checkpoint stores differently, are restored instead)."""
  entry = checkpoint.entries[source.name]
  if source.dtype == tf.string:
    return None
  if not source.spec:
    if entry.slices:
      return None
    return source.name.encode('utf-8'), entry
  full, extents = checkpoint_index.parse_slice_spec(source.spec)
  for key, slice_entry in checkpoint.slices.get(source.name, []):
    if checkpoint_index.slice_key_extents(key, full) == extents:
      return key, slice_entry
  return None


def _const_prefix(name, dtype, shape):
  """Serialized NodeDef of a Const without its value attribute."""
  node = lean_tf.NodeDef(name=name, op='Const')
  node.attr['dtype'].type = dtype.as_datatype_enum
  return node.SerializeToString(deterministic=True), tensor_pb2.TensorProto(
      dtype=dtype.as_datatype_enum,
      tensor_shape=tf.TensorShape(shape).as_proto()).SerializeToString()


def _const_header(name, dtype, shape, size):
  """The bytes of a Const NodeDef record (GraphDef field 1) up to its `size` bytes of
  tensor_content, which follow it."""
  node_prefix, tensor_prefix = _const_prefix(name, dtype, shape)
  tensor_len = len(tensor_prefix) + len(_field(4, size)) + size
  attr_value_len = len(_field(8, tensor_len)) + tensor_len
  attr_key = _field(1, 5) + b'value'
  entry_len = len(attr_key) + len(_field(2, attr_value_len)) + attr_value_len
  node_len = len(node_prefix) + len(_field(5, entry_len)) + entry_len
  return (_field(1, node_len) + node_prefix + _field(5, entry_len) + attr_key +
          _field(2, attr_value_len) + _field(8, tensor_len) + tensor_prefix + _field(4, size))


def _write_streamed_const(out, name, dtype, checkpoint, key, entry, data_file, chunk, buffer):
  """Writes a Const NodeDef record whose tensor_content is the stored bytes of `entry`, copied
  from `data_file` and checked against the checksum the index records; returns its size."""
  header = _const_header(name, dtype, [d.size for d in entry.shape.dim], entry.size)
  out.write(header)
  checksum = stored_tensor.Checksum(entry)
  try:
    files.copy_range(data_file, entry.offset, out, entry.size, chunk, inspect=checksum.update,
                     buffer=buffer)
  except EOFError as e:
    raise errors.UserError('checkpoint data shard %s ends early'
                           % checkpoint.data_files()[entry.shard_id]) from e
  problem = checksum.problem()
  if problem:
    raise checkpoint_index.corrupt_tensor(checkpoint, key, entry, problem)
  return len(header) + entry.size


def _write_node(out, node):
  data = node.SerializeToString(deterministic=True)
  out.write(_field(1, len(data)))
  out.write(data)
  return len(_field(1, len(data))) + len(data)


def _write_value_const(out, name, dtype, value):
  """Writes a Const NodeDef record holding numpy array `value`: a numeric one's bytes written
  from the array itself (no tensor proto, no copy), strings through a tensor proto."""
  if dtype == tf.string:
    const = lean_tf.NodeDef(name=name, op='Const')
    const.attr['dtype'].type = dtype.as_datatype_enum
    const.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value, dtype))
    return _write_node(out, const)
  value = np.ascontiguousarray(value, dtype=dtype.as_numpy_dtype)
  header = _const_header(name, dtype, list(value.shape), value.nbytes)
  out.write(header)
  out.write(memoryview(value.reshape(-1)).cast('B'))
  return len(header) + value.nbytes


def _write_table(out, checkpoint, node, sources, names, nodes, open_shard, chunk, buffer):
  """Writes the keys and values Consts that fill table `node` (named `names`): straight from
  the checkpoint's stored bytes where they are the table's export as it is (hash tables of
  numbers), else restored, one table in memory at a time (strings; a dense table's buckets,
  of which the empty ones are dropped).

  Returns:
    (tables.TableContents without the arrays, bytes written).
  """
  dense = node.op in tables.DENSE_TABLE_OPS
  stored = [None if dense else _stored_record(checkpoint, source) for source in sources]
  if all(stored):
    written = sum(_write_streamed_const(out, name, source.dtype, checkpoint, key, entry,
                                        open_shard(entry.shard_id), chunk, buffer)
                  for name, source, (key, entry) in zip(names, sources, stored))
    keys_entry = stored[0][1]
    count = keys_entry.shape.dim[0].size if keys_entry.shape.dim else 1
    return tables.TableContents(node.name, node.op, None, None, count=count,
                                size=sum(entry.size for _, entry in stored)), written
  keys, values = [_restore(checkpoint, source) for source in sources]
  if dense:
    empty, deleted = [tf.make_ndarray(nodes[graphs.node_name(i)].attr['value'].tensor)
                      for i in node.input[:2]]
    keys, values = tables.drop_empty_buckets(node, keys, values, empty, deleted)
  held = tables.TableContents(node.name, node.op, keys, values)
  written = sum(_write_value_const(out, name, source.dtype, value)
                for name, source, value in zip(names, sources, (keys, values)))
  return tables.TableContents(node.name, node.op, None, None, count=held.num_keys,
                              size=held.nbytes), written


def _restore(checkpoint, source):
  """The value of `source` read by TensorFlow, after checking every record it is read from
  (TensorFlow checks them too, but its error names neither the tensor nor the shard)."""
  records = [checkpoint_copy.Record(checkpoint, key, entry)
              for key, entry in checkpoint.records(source.name)]
  if files.is_object_store(checkpoint.prefix):
    # TensorFlow cannot open the store: the tensor's records alone (checked as they arrive)
    # make a local checkpoint for it to read.
    with files.scratch('restore') as scratch:
      prefix = files.join(scratch, 'tensor')
      checkpoint_copy.copy_records(records, prefix)
      return tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[source.name],
                                  shape_and_slices=[source.spec],
                                  dtypes=[source.dtype])[0].numpy()
  checkpoint_copy.verify_records(records)
  return tf.raw_ops.RestoreV2(prefix=checkpoint.prefix, tensor_names=[source.name],
                              shape_and_slices=[source.spec], dtypes=[source.dtype])[0].numpy()


def write(the_plan, tags, path, overwrite=False, chunk=1 << 20):
  """Writes the frozen GraphDef of `the_plan` to `path`, streaming each variable's bytes.

  Memory holds the graph's structure, one piece of a constant, and at most one table or
  variable that cannot be streamed (strings, a dense table's buckets).

  Returns:
    (frozen_graph.FrozenModel without the frozen variables' and tables' values (structure
     only), names of the variables frozen, list of tables.TableContents (counts, no arrays),
     bytes written).

  Raises:
    errors.UserError: unreadable checkpoint data or an unwritable output.
  """
  start = time.perf_counter()
  checkpoint = the_plan.checkpoint
  graph_def = the_plan.graph_def
  saver_def = None
  if the_plan.kept:
    # The kept variables and tables are restored from the checkpoint beside the graph by a
    # saver over exactly them.
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(the_plan.graph_def)
    saver_def = saver.add_saver(graph_def, the_plan.kept)
  taken = {n.name for n in graph_def.node}
  # Tables: each filled by two Consts and an import op, written (and held) one at a time below;
  # `fills` keeps their structure only (the Consts without values).
  fills, contents, table_writes = [], [], []
  nodes = {n.name: n for n in graph_def.node}
  for table, sources in sorted(the_plan.table_sources.items()):
    node = nodes[table]
    keys_name, values_name, fill_name = tables.fill_names(node, taken)
    fill = tables.fill_op(node, keys_name, values_name, fill_name)
    table_writes.append((node, sources, (keys_name, values_name), fill))
    for name, source in zip((keys_name, values_name), sources):
      const = lean_tf.NodeDef(name=name, op='Const')
      const.attr['dtype'].type = source.dtype.as_datatype_enum
      fills.append(const)
    fills.append(fill)
  init_op = None
  if table_writes:
    init_op = graphs.unique_name(tables.INIT_OP_NAME, taken)
    fills.append(lean_tf.NodeDef(name=init_op, op='NoOp',
                                 input=['^' + fill.name for _, _, _, fill in table_writes]))
  model = frozen_graph.FrozenModel(
      graph_def=graph_pb2.GraphDef(),
      signatures=frozen_graph.frozen_signatures(the_plan.signatures),
      tags=list(tags), table_init_op=init_op)
  total = sum(checkpoint.nbytes(n) for n in {s.name for s in the_plan.variables.values()})
  progress = units.Progress('streaming constants')
  done = written = 0
  files_open = {}
  buffer = bytearray(chunk)  # one piece of a streamed constant, reused
  with contextlib.ExitStack() as outputs:
    if the_plan.kept:
      tmp, ckpt_prefix = outputs.enter_context(
          frozen_graph.graph_and_checkpoint_output(path, overwrite))
      # Only the partitions kept: a variable's others are constants in the graph.
      specs = {}
      for r in the_plan.kept:
        for name, spec in zip(r.names, r.specs):
          specs.setdefault(name, set()).add(spec)
      names = list(specs)
      kept_bytes = checkpoint_copy.copy_records(
          [record for name in names
           for record in checkpoint_copy.slice_records(checkpoint, name, specs[name])],
          ckpt_prefix, chunk, progress=units.Progress('copying kept tensors'))
      logging.info('kept %d variables and tables as state: %d checkpoint tensors (%s) in %s',
                   len(the_plan.kept), len(names), units.human_bytes(kept_bytes),
                   frozen_graph.checkpoint_dir(path))
      model.saver_def = saver_def
      model.variables_prefix = frozen_graph.relative_prefix(path)
      model.variables_digest = frozen_graph.index_digest(ckpt_prefix)
    else:
      tmp = outputs.enter_context(atomic.atomic_output(path, overwrite))
    metadata = frozen_graph.frozen_to_graph_def(model).node[0]
    try:
      with files.open_file(tmp, 'wb') as out:

        def open_shard(shard):
          if shard not in files_open:
            files_open[shard] = files.open_file(checkpoint.data_files()[shard], 'rb')
          return files_open[shard]

        for node in graph_def.node:
          source = the_plan.variables.get(node.name) if node.op == 'Const' else None
          if source is None:
            written += _write_node(out, node)
            continue
          stored = _stored_record(checkpoint, source)
          if stored is None:  # strings, or a slice stored differently: one tensor in memory
            value = _restore(checkpoint, source)
            written += _write_value_const(out, node.name, source.dtype, value)
            done += value.nbytes
            del value
          else:
            key, entry = stored
            written += _write_streamed_const(out, node.name, source.dtype, checkpoint, key, entry,
                                             open_shard(entry.shard_id), chunk, buffer)
            done += entry.size
          progress(done, total)
        for node, sources, names, fill in table_writes:
          content, size = _write_table(out, checkpoint, node, sources, names, nodes, open_shard,
                                       chunk, buffer)
          written += size + _write_node(out, fill)
          contents.append(content)
          logging.info('table %s (%s): %d keys from the checkpoint (%s)', node.name, node.op,
                       content.num_keys, units.human_bytes(content.nbytes))
        for node in ([fills[-1]] if init_op else []) + [metadata]:
          written += _write_node(out, node)
        for number, message in ((2, graph_def.library), (4, graph_def.versions)):
          data = message.SerializeToString(deterministic=True)
          if data:
            out.write(_field(number, len(data)) + data)
            written += len(_field(number, len(data))) + len(data)
    finally:
      for f in files_open.values():
        f.close()
  seconds = time.perf_counter() - start
  logging.info('streamed %d variables (%s) and %d tables into %s: %s in %.1f s (%s/s)',
               len(the_plan.variables), units.human_bytes(total), len(contents), path,
               units.human_bytes(written), seconds, units.human_bytes(written / max(seconds, 1e-9)))
  model.graph_def = graph_def
  model.graph_def.node.extend(fills)
  return model, sorted(the_plan.variables), contents, written
