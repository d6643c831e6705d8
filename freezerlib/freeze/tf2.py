"""TF2 object-based SavedModels (tf.saved_model.save of a tf.Module or Keras model) -> frozen graph.

Such a SavedModel holds two views of the same model. Its MetaGraph's GraphDef is what TF Serving
runs: one top-level node per variable and table (VarHandleOp, HashTableV2, ...), and per signature
one StatefulPartitionedCall of a library function that takes the signature's inputs followed by
those resources ("captures"). Its object graph and checkpoint are what `tf.saved_model.load`
restores: the same resources as Python objects, with their values.

Freezing takes the structure from the first view and the values from the second:
- The capture inputs of each signature's call node are paired, in order, with the
  `captured_inputs` of `tf.saved_model.load(...).signatures[key]` (the SavedModel stores both in
  the same order: `SavedConcreteFunction.bound_inputs`). Values come from the TF2 loader, not from
  the TF1 one: for a Keras 3 model saved with tf.saved_model.save, the variables the signature
  reads are not the ones the MetaGraph's saver restores, so a TF1 or C++ loader serves them
  uninitialised, while tf.saved_model.load gets them right.
- Variables become constants through TensorFlow's own converter (convert_to_constants), which
  rewrites the library functions the signatures call (resource arguments become tensors).
- Tables stay tables: each one the signatures capture is exported eagerly
  (LookupTableExportV2) and re-filled by constants in the NoOp `freezer/init_tables`, as the TF1
  path does; the frozen graph needs neither the checkpoint nor the asset files.
- A table created inside a function (a SavedModel that re-saves resources restored from another
  one: tensorflow-transform's serving models, `tf.saved_model.load` of a model with a table
  saved again) is captured as the output of a top-level StatefulPartitionedCall whose function
  (through `__inference__creator_*`) makes the table; its initializer
  (InitializeTableFromTextFileV2 in `__inference__initializer_*`) reads an asset file at load.
  That call becomes the table op itself at the top level, exported and re-filled like any
  other. A captured resource made by a function that is not a table is refused, naming it.
- Signature inputs become Placeholders named after their signature keys where the name is free.
- A signature whose functions write a captured variable or table is refused: write ops are found
  in the library functions, following resource arguments back to the captured node.
"""

import time

from absl import logging
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.framework import op_def_registry

from freezerlib.analysis import stateful
from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.transforms import prune
from freezerlib.transforms import tables

# ---------------------------------------------------------------------------------------------
# Values from the TF2 loader


def captured_handles(meta_graph, graph_def, signatures, loaded, where):
  """Top-level node name -> the eager tensor the TF2 loader restored for it.

  Each signature's call node passes its captures as its last inputs, in the order of the
  restored function's `captured_inputs`.

  Raises:
    errors.UserError: a signature whose call node cannot be matched with its function.
  """
  functions = stateful.signature_functions(meta_graph)
  handles = {}
  for key, sig in signatures.items():
    outputs = saved_model.signature_output_nodes({key: sig})
    needed = graphs.extract_sub_graph(graph_def, outputs)
    calls = [n for n in needed.node
             if n.op in stateful.CALL_OPS and n.attr['f'].func.name == functions.get(key)]
    try:
      captured = list(loaded.signatures[key].captured_inputs)
    except KeyError:
      captured = None
    if not calls or captured is None:
      raise errors.UserError(
          'signature %r of %s: cannot match its node in the graph with the function '
          'tf.saved_model.load restores; this SavedModel layout is not supported' % (key, where))
    for call in calls:
      inputs = graphs.data_inputs(call)
      if len(captured) > len(inputs):
        raise errors.UserError('signature %r of %s: its call %s has fewer inputs than its '
                              'function has captures' % (key, where, call.name))
      for name, value in zip(inputs[len(inputs) - len(captured):], captured):
        handles.setdefault(graphs.node_name(name), value)
  return handles


def _read_variable(node, handle):
  return tf.raw_ops.ReadVariableOp(resource=handle,
                                   dtype=tf.as_dtype(node.attr['dtype'].type)).numpy()


def _export_table(node, handle, nodes_by_name):
  """TableContents of a restored table; empty and deleted buckets of a dense table dropped."""
  key_dtype = tf.as_dtype(node.attr['key_dtype'].type)
  value_dtype = tf.as_dtype(node.attr['value_dtype'].type)
  keys, values = tf.raw_ops.LookupTableExportV2(table_handle=handle, Tkeys=key_dtype,
                                                Tvalues=value_dtype)
  keys, values = keys.numpy(), values.numpy()
  if node.op in tables.DENSE_TABLE_OPS:
    bounds = [nodes_by_name.get(graphs.node_name(i)) for i in graphs.data_inputs(node)[:2]]
    if any(b is None or b.op != 'Const' for b in bounds):
      raise errors.UserError('dense hash table %s: its empty_key and deleted_key are not '
                            'constants, so its used buckets cannot be told' % node.name)
    empty_key, deleted_key = [tf.make_ndarray(b.attr['value'].tensor) for b in bounds]
    keys, values = tables.drop_empty_buckets(node, keys, values, empty_key, deleted_key)
  return tables.TableContents(name=node.name, op=node.op, keys=keys, values=values)


# ---------------------------------------------------------------------------------------------
# Resources created inside functions

_MAX_CALL_DEPTH = 16  # creator functions nest a few calls deep; a cycle must not loop forever


def _function_output_source(library, function_name, index, depth=0):
  """The NodeDef that makes output `index` of library function `function_name`, following
  Identity ops and nested calls; (node, name of the function holding it), or (None, name of
  the function where the trail ends)."""
  function = library.get(function_name)
  if function is None or depth > _MAX_CALL_DEPTH or index >= len(function.signature.output_arg):
    return None, function_name
  nodes = {n.name: n for n in function.node_def}
  tensor = function.ret[function.signature.output_arg[index].name]
  while True:
    node_name, _, rest = tensor.partition(':')
    node = nodes.get(node_name)
    if node is None:
      return None, function_name  # an argument of the function: made elsewhere
    if node.op == 'Identity':
      tensor = node.input[0]
      continue
    if node.op in stateful.CALL_OPS:
      out_index = int(rest.rpartition(':')[2] or 0) if rest else 0
      return _function_output_source(library, node.attr['f'].func.name, out_index, depth + 1)
    return node, function_name


def _resource_outputs(node):
  return [i for i, t in enumerate(node.attr['Tout'].list.type) if t == types_pb2.DT_RESOURCE]


def tables_from_functions(graph_def, handles, names, where):
  """Replaces each captured call node that makes a table inside a function by that table op.

  The new top-level node keeps the call node's name (its readers are unchanged) and the table
  op's attributes; a dense table's empty and deleted keys, Consts inside the function, become
  top-level Consts. Modifies `graph_def` in place.

  Args:
    graph_def: the GraphDef the signatures need (its library holds the creator functions).
    handles: top-level node name -> restored eager tensor (captured_handles).
    names: node name -> object path, for messages.
    where: the SavedModel's path, for messages.

  Returns:
    Names of the nodes replaced.

  Raises:
    errors.UserError: a captured resource made by a function that is not a table, or a table
      whose construction the graph cannot hold at the top level.
  """
  library = {f.signature.name: f for f in graph_def.library.function}
  taken = {n.name for n in graph_def.node}
  replaced, new_nodes = [], []
  for node in graph_def.node:
    if node.op not in stateful.CALL_OPS or node.name not in handles:
      continue
    outputs = _resource_outputs(node)
    if not outputs:
      continue
    function_name = node.attr['f'].func.name
    what = '%r (%s, made by function %s)' % (names.get(node.name, node.name), node.name,
                                             function_name)
    made, inner = (_function_output_source(library, function_name, outputs[0])
                   if outputs == [0] and len(node.attr['Tout'].list.type) == 1
                   else (None, function_name))
    if made is None or made.op not in tables.TABLE_OPS:
      raise errors.UserError(
          'the signatures of %s read %s, a resource made inside a function that freezer cannot '
          'freeze (only variables and hash tables)%s' % (
              where, what, ': op %s in %s' % (made.op, inner) if made is not None else ''))
    table = lean_tf.NodeDef()
    table.CopyFrom(made)
    table.name = node.name
    table.device = node.device
    del table.input[:]
    inner_nodes = {n.name: n for n in library[inner].node_def}
    for graph_input in made.input:
      if graph_input.startswith('^'):
        continue
      source = inner_nodes.get(graph_input.partition(':')[0])
      if source is None or source.op != 'Const':
        raise errors.UserError('the signatures of %s read the table %s, whose input %s inside '
                               'function %s is not a constant; freezer cannot rebuild it'
                               % (where, what, graph_input, inner))
      const = lean_tf.NodeDef()
      const.CopyFrom(source)
      const.name = graphs.unique_name('%s/%s' % (node.name, source.name), taken)
      new_nodes.append(const)
      table.input.append(const.name)
    node.CopyFrom(table)
    replaced.append(node.name)
    logging.info('table %s (%s) is made by function %s (%s in %s): frozen as a %s node',
                 node.name, names.get(node.name, '?'), function_name, made.op, inner, made.op)
  graph_def.node.extend(new_nodes)
  return replaced


# ---------------------------------------------------------------------------------------------
# Graph rewriting


class _ValuesConverterData(convert_to_constants._ConverterData):
  """Variable values for TensorFlow's converter, read eagerly instead of from a session."""

  def __init__(self, graph_def, values):
    super().__init__(graph_def)
    for name, (dtype_enum, value) in values.items():
      self._tensor_data[name] = convert_to_constants._TensorData(
          numpy=value, dtype=dtype_enum, index=None)


def _produces_resource(op_type):
  op_def = op_def_registry.get(op_type)
  return op_def is not None and any(a.type == types_pb2.DT_RESOURCE for a in op_def.output_arg)


def _input_type(function, nodes, tensor):
  """The dtype of `tensor` inside `function` where it is an argument or an Identity of one."""
  args = {a.name: a.type for a in function.signature.input_arg}
  while True:
    parts = tensor.split(':')
    if len(parts) == 1 and parts[0] in args:
      return args[parts[0]]
    node = nodes.get(parts[0])
    if node is None or node.op != 'Identity':
      return None
    if 'T' in node.attr and node.attr['T'].type != types_pb2.DT_RESOURCE:
      return node.attr['T'].type
    tensor = node.input[0]


def _finish_function_conversion(graph_def):
  """Rewrites what TensorFlow's converter leaves behind inside functions.

  It skips ResourceGather (an embedding lookup) and VariableShape inside functions, which then
  receive the variable's value instead of its handle: they become GatherV2 and Shape. Any other
  op still expecting a resource where a value now arrives cannot be rewritten.

  Raises:
    errors.UserError: naming such an op.
  """
  for function in graph_def.library.function:
    nodes = {n.name: n for n in function.node_def}
    for node in function.node_def:
      op_def = op_def_registry.get(node.op)
      if op_def is None:
        continue
      for i, arg in enumerate(op_def.input_arg[:len(node.input)]):
        if arg.number_attr or arg.type_list_attr:
          break  # later inputs no longer line up with the op's arguments
        if arg.type != types_pb2.DT_RESOURCE or node.input[i].startswith('^'):
          continue
        dtype = _input_type(function, nodes, node.input[i])
        if dtype in (None, types_pb2.DT_RESOURCE):
          continue
        if node.op == 'ResourceGather' and not node.attr['batch_dims'].i:
          _resource_gather_to_gather(function, node)
        elif node.op == 'VariableShape':
          node.op = 'Shape'
          node.attr['T'].type = dtype
        else:
          raise errors.UserError(
              'cannot freeze: op %s (%s) in function %s reads a variable in a way TensorFlow\'s '
              'converter cannot rewrite' % (node.name, node.op, function.signature.name))


def _resource_gather_to_gather(function, node):
  axis = function.node_def.add()
  axis.name = node.name + '/freezer_axis'
  axis.op = 'Const'
  axis.attr['dtype'].type = types_pb2.DT_INT32
  axis.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(0, tf.int32))
  params_dtype = node.attr['dtype']
  indices_dtype = node.attr['Tindices']
  for key in list(node.attr):
    if not key.startswith('_'):
      del node.attr[key]
  node.op = 'GatherV2'
  node.input.insert(2, axis.name + ':output:0')
  node.attr['Tparams'].CopyFrom(params_dtype)
  node.attr['Tindices'].CopyFrom(indices_dtype)
  node.attr['Taxis'].type = types_pb2.DT_INT32
  node.attr['batch_dims'].i = 0


def _inputs_named_by_key(graph_def, signatures):
  """Signature inputs become Placeholders named after their keys (where free), in place.

  TF2 names them `<signature>_<argument>` and makes some PlaceholderWithDefault.
  """
  nodes = {n.name: n for n in graph_def.node}
  taken = set(nodes)
  renamed = {}
  for sig_key in sorted(signatures):
    sig = signatures[sig_key]
    for key in sorted(sig.inputs):
      info = sig.inputs[key]
      if info.WhichOneof('encoding') != 'name':
        continue  # tf.saved_model.save flattens composite arguments; another writer may not
      name, _, index = info.name.partition(':')
      node = nodes[name]
      if node.op not in ('Placeholder', 'PlaceholderWithDefault') or index not in ('', '0'):
        continue
      if name not in renamed:
        if node.op == 'PlaceholderWithDefault':
          node.op = 'Placeholder'  # same dtype and shape attributes; the default goes
          del node.input[:]
        wanted = graphs.name_for_key(key)
        renamed[name] = wanted if wanted == name else graphs.unique_name(wanted, taken)
        node.name = renamed[name]
      info.name = renamed[name] + ':0'
  for node in graph_def.node:
    for i, graph_input in enumerate(node.input):
      control = graph_input.startswith('^')
      base, sep, rest = graph_input.lstrip('^').partition(':')
      if base in renamed:
        node.input[i] = ('^' if control else '') + renamed[base] + sep + rest


def freeze_graph(meta_graph, signatures, loaded, tags, where):
  """Freezes `signatures` of a TF2 MetaGraph with the values `loaded` holds.

  Args:
    meta_graph: the MetaGraphDef (object-based).
    signatures: signature key -> SignatureDef to keep.
    loaded: what tf.saved_model.load returned for the same SavedModel and tags.
    tags: MetaGraph tags to record.
    where: the SavedModel's path, for messages.

  Returns:
    (frozen_graph.FrozenModel, names of the variables frozen, list of tables.TableContents).

  Raises:
    errors.UserError: a captured resource that is neither a variable nor a table, or a use of a
      variable that cannot be frozen.
  """
  graph_def = meta_graph.graph_def
  signatures = frozen_graph.frozen_signatures(signatures)  # copies: input names change below
  outputs = saved_model.signature_output_nodes(signatures)
  keep = list(dict.fromkeys(outputs + saved_model.signature_input_nodes(signatures)))
  needed = prune.strip(graph_def, keep)  # drops save, restore and initialiser functions
  handles = captured_handles(meta_graph, needed, signatures, loaded, where)
  names = stateful.captured_objects(meta_graph)
  if tables_from_functions(needed, handles, names, where):
    needed = prune.strip(needed, keep)  # the creator functions are no longer called

  values, table_nodes = {}, []
  for node in needed.node:
    if node.op == 'VarHandleOp':
      if node.name not in handles:
        raise errors.UserError('variable %s of %s is not captured by a signature function; this '
                              'SavedModel layout is not supported' % (node.name, where))
      values[node.name] = (node.attr['dtype'].type, _read_variable(node, handles[node.name]))
    elif node.op in tables.TABLE_OPS:
      if node.name not in handles:
        raise errors.UserError('table %s of %s is not captured by a signature function; this '
                              'SavedModel layout is not supported' % (node.name, where))
      table_nodes.append(node)
    elif _produces_resource(node.op) or (node.op in stateful.CALL_OPS and
                                         _resource_outputs(node)):
      raise errors.UserError(
          'the signatures of %s read %r (%s, op %s), a resource freezer cannot freeze (only '
          'variables and hash tables)' % (where, names.get(node.name, node.name), node.name,
                                          node.op))
  try:
    frozen, _ = convert_to_constants._replace_variables_by_constants(
        _ValuesConverterData(needed, values))
  except (KeyError, ValueError) as e:
    raise errors.UserError('cannot freeze the variables of %s: TensorFlow\'s converter failed '
                          '(%s: %s)' % (where, type(e).__name__, e)) from e
  _finish_function_conversion(frozen)

  nodes_by_name = {n.name: n for n in frozen.node}
  taken = set(nodes_by_name)
  fills, contents = [], []
  for node in table_nodes:
    start = time.perf_counter()
    table = _export_table(node, handles[node.name], nodes_by_name)
    logging.info('table %s (%s, %s): %d keys, %s exported in %.1f s', node.name,
                 names.get(node.name, '?'), node.op, len(table.keys),
                 units.human_bytes(table.nbytes), time.perf_counter() - start)
    new_nodes, fill = tables.fill_nodes(node, table, taken)
    frozen.node.extend(new_nodes)
    fills.append(fill)
    contents.append(table)
  init_op = None
  if fills:
    init = lean_tf.NodeDef(name=graphs.unique_name(tables.INIT_OP_NAME, taken), op='NoOp',
                       input=['^' + f for f in fills])
    frozen.node.append(init)
    init_op = init.name

  _inputs_named_by_key(frozen, signatures)
  keep = (saved_model.signature_output_nodes(signatures) +
          saved_model.signature_input_nodes(signatures))
  frozen = prune.strip(frozen, list(dict.fromkeys(keep + ([init_op] if init_op else []))))
  frozen.versions.CopyFrom(graph_def.versions)
  model = frozen_graph.FrozenModel(graph_def=frozen, signatures=signatures, tags=list(tags),
                                     table_init_op=init_op)
  return model, sorted(values), contents


def freeze(export_dir, meta_graph, signatures, tags):
  """Loads a TF2 object-based SavedModel with tf.saved_model.load and freezes `signatures`.

  Args:
    export_dir: the SavedModel directory.
    meta_graph: its MetaGraphDef (object-based), already checked.
    signatures: signature key -> SignatureDef to keep.
    tags: the MetaGraph's tags.

  Returns:
    (frozen_graph.FrozenModel, names of the variables frozen, list of tables.TableContents).

  Raises:
    errors.UserError: for anything wrong with the input, naming the path or signature.
  """
  logging.info('%s is a TF2 object-based SavedModel: values from tf.saved_model.load',
               export_dir)
  loaded = saved_model.load_objects(export_dir, tags)
  try:
    return freeze_graph(meta_graph, signatures, loaded, tags, export_dir)
  except tf.errors.OpError as e:
    raise errors.UserError('cannot freeze %s: %s'
                           % (export_dir, errors.tf_error_message(e))) from e
