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
- Signature inputs become Placeholders named after their signature keys where the name is free.
- A signature whose functions write a captured variable or table is refused: write ops are found
  in the library functions, following resource arguments back to the captured node.
"""

import collections
import time

from absl import logging
import tensorflow as tf

from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.framework import op_def_registry

import freezing
import graph_edit
import saved_model_io
import tables
import utils

tf1 = tf.compat.v1

_CALL_OPS = frozenset({'StatefulPartitionedCall', 'PartitionedCall'})
# Index of the node input that feeds the called function's first argument.
_FIRST_ARGUMENT = {'StatefulPartitionedCall': 0, 'PartitionedCall': 0, 'While': 0,
                   'StatelessWhile': 0, 'If': 1, 'StatelessIf': 1, 'Case': 1,
                   'StatelessCase': 1}
_PASS_THROUGH = frozenset({'Identity', 'IdentityN'})


def is_object_based(meta_graph):
  """True for a MetaGraph written by tf.saved_model.save (TF2), False for a TF1 Builder's.

  The test tf.saved_model.load itself makes: only TF2's saver writes an object graph. The
  `__saved_model_init_op` signature is not a test (TF1 models can have one), nor is a missing
  saver (TF2 models have one too).
  """
  return (meta_graph.HasField('object_graph_def') and
          len(meta_graph.object_graph_def.nodes) > 0)


# ---------------------------------------------------------------------------------------------
# What the object graph says about the MetaGraph's nodes


def _object_paths(object_graph):
  """Node id -> 'a/b/c', the attribute path from the root object (shortest, first found)."""
  paths = {0: ''}
  queue = collections.deque([0])
  while queue:
    node_id = queue.popleft()
    for child in object_graph.nodes[node_id].children:
      if child.node_id not in paths:
        parent = paths[node_id]
        paths[child.node_id] = parent + '/' + child.local_name if parent else child.local_name
        queue.append(child.node_id)
  return paths


def _data_inputs(node):
  return [i for i in node.input if not i.startswith('^')]


def captured_objects(meta_graph):
  """Top-level node name -> object path, for the resources and constants functions capture.

  A call node's last inputs are its function's captures, in the order of the function's
  `bound_inputs` (object ids).
  """
  object_graph = meta_graph.object_graph_def
  paths = _object_paths(object_graph)
  names = {}
  for node in meta_graph.graph_def.node:
    if node.op not in _CALL_OPS:
      continue
    function = object_graph.concrete_functions.get(node.attr['f'].func.name)
    inputs = _data_inputs(node)
    if function is None or len(function.bound_inputs) > len(inputs):
      continue
    captures = inputs[len(inputs) - len(function.bound_inputs):]
    for name, object_id in zip(captures, function.bound_inputs):
      if paths.get(object_id):
        names.setdefault(saved_model_io.node_name(name), paths[object_id])
  return names


def _signature_functions(meta_graph):
  """Signature key -> name of the library function the object graph says serves it."""
  object_graph = meta_graph.object_graph_def
  out = {}
  for child in object_graph.nodes[0].children:
    if child.local_name != 'signatures':
      continue
    for entry in object_graph.nodes[child.node_id].children:
      node = object_graph.nodes[entry.node_id]
      if node.WhichOneof('kind') == 'bare_concrete_function':
        out[entry.local_name] = node.bare_concrete_function.concrete_function_name
  return out


# ---------------------------------------------------------------------------------------------
# Stateful signatures


class _Scope:
  """The nodes of the graph or of one function, and where the function's arguments come from."""

  def __init__(self, name, nodes, arguments=None):
    self.name = name            # None for the graph, the function's name otherwise
    self.nodes = nodes          # node name -> NodeDef
    self.arguments = arguments  # argument name -> source (see `source`), None for the graph

  def source(self, tensor):
    """Where a resource tensor is created: ('graph', node name) for a top-level node,
    ('function', 'fn/node') for a node inside a function, None when it cannot be told."""
    seen = set()
    while tensor not in seen:
      seen.add(tensor)
      parts = tensor.lstrip('^').split(':')
      if self.arguments is not None and len(parts) == 1 and parts[0] in self.arguments:
        return self.arguments[parts[0]]
      node = self.nodes.get(parts[0])
      if node is None:
        return None
      if node.op not in _PASS_THROUGH or not node.input:
        if self.name is None:
          return ('graph', node.name)
        return ('function', '%s/%s' % (self.name, node.name))
      index = int(parts[-1]) if node.op == 'IdentityN' and parts[-1].isdigit() else 0
      tensor = _data_inputs(node)[index]
    return None


def _calls(node, library):
  """(function name, first argument's input index or None when unknown) for each call."""
  found = [(node.op, 0)] if node.op in library else []
  for value in node.attr.values():
    names = [value.func.name] if value.HasField('func') else [f.name for f in value.list.func]
    found.extend((n, _FIRST_ARGUMENT.get(node.op)) for n in names if n in library)
  return found


def _find_write(scope, node_list, library, visited):
  """The first op in `node_list` (or in the functions they call) that writes state created
  outside the function that runs it: (op NodeDef, where, source) or None."""
  for node in node_list:
    if freezing.is_write_op(node.op):
      target = scope.source(node.input[0]) if node.input else None
      # A resource created inside a function (a table it builds and fills for itself) lives
      # for one call: not state the model keeps between calls.
      if target is None or target[0] == 'graph':
        where = node.name if scope.name is None else '%s/%s' % (scope.name, node.name)
        return node, where, target
    for function_name, first in _calls(node, library):
      inputs = _data_inputs(node)
      function = library[function_name]
      arguments = {}
      for i, arg in enumerate(function.signature.input_arg):
        index = None if first is None else first + i
        arguments[arg.name] = (scope.source(inputs[index])
                               if index is not None and index < len(inputs) else None)
      key = (function_name, tuple(sorted(arguments.items(), key=lambda kv: kv[0])))
      if key in visited:
        continue
      visited.add(key)
      inner = _Scope(function_name, {n.name: n for n in function.node_def}, arguments)
      found = _find_write(inner, function.node_def, library, visited)
      if found:
        return found
  return None


def check_read_only(meta_graph, signatures, where):
  """Refuses signatures that write a variable or table, at top level or in any function they call.

  Raises:
    utils.UserError: naming the signature, the state (its object path where the object graph
      knows it) and the op.
  """
  graph_def = meta_graph.graph_def
  library = {f.signature.name: f for f in graph_def.library.function}
  top = _Scope(None, {n.name: n for n in graph_def.node})
  names = captured_objects(meta_graph)
  for key, sig in signatures.items():
    outputs = saved_model_io.signature_output_nodes({key: sig})
    needed = tf1.graph_util.extract_sub_graph(graph_def, outputs)
    found = _find_write(top, needed.node, library, set())
    if found:
      node, location, target = found
      if target is None:
        state = 'state it cannot trace'
      elif target[0] == 'graph':
        state = repr(names.get(target[1], target[1]))
      else:
        state = repr(target[1])
      raise utils.UserError(
          'signature %r of %s writes %s (op %s, %s): a stateful signature cannot be frozen; '
          'choose others with --signature_def' % (key, where, state, location, node.op))


# ---------------------------------------------------------------------------------------------
# Values from the TF2 loader


def load_objects(export_dir, tags):
  """tf.saved_model.load, with its failures as one-line errors."""
  try:
    return tf.saved_model.load(export_dir, tags=list(tags))
  except (tf.errors.OpError, ValueError, RuntimeError, KeyError, TypeError) as e:
    raise utils.UserError('cannot load SavedModel %s: %s'
                          % (export_dir, utils.tf_error_message(e))) from e


def captured_handles(meta_graph, graph_def, signatures, loaded, where):
  """Top-level node name -> the eager tensor the TF2 loader restored for it.

  Each signature's call node passes its captures as its last inputs, in the order of the
  restored function's `captured_inputs`.

  Raises:
    utils.UserError: a signature whose call node cannot be matched with its function.
  """
  functions = _signature_functions(meta_graph)
  handles = {}
  for key, sig in signatures.items():
    outputs = saved_model_io.signature_output_nodes({key: sig})
    needed = tf1.graph_util.extract_sub_graph(graph_def, outputs)
    calls = [n for n in needed.node
             if n.op in _CALL_OPS and n.attr['f'].func.name == functions.get(key)]
    try:
      captured = list(loaded.signatures[key].captured_inputs)
    except KeyError:
      captured = None
    if not calls or captured is None:
      raise utils.UserError(
          'signature %r of %s: cannot match its node in the graph with the function '
          'tf.saved_model.load restores; this SavedModel layout is not supported' % (key, where))
    for call in calls:
      inputs = _data_inputs(call)
      if len(captured) > len(inputs):
        raise utils.UserError('signature %r of %s: its call %s has fewer inputs than its '
                              'function has captures' % (key, where, call.name))
      for name, value in zip(inputs[len(inputs) - len(captured):], captured):
        handles.setdefault(saved_model_io.node_name(name), value)
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
    bounds = [nodes_by_name.get(saved_model_io.node_name(i)) for i in _data_inputs(node)[:2]]
    if any(b is None or b.op != 'Const' for b in bounds):
      raise utils.UserError('dense hash table %s: its empty_key and deleted_key are not '
                            'constants, so its used buckets cannot be told' % node.name)
    empty_key, deleted_key = [tf.make_ndarray(b.attr['value'].tensor) for b in bounds]
    keys, values = tables.drop_empty_buckets(node, keys, values, empty_key, deleted_key)
  return tables.TableContents(name=node.name, op=node.op, keys=keys, values=values)


# ---------------------------------------------------------------------------------------------
# Graph rewriting


class _ValuesConverterData(convert_to_constants._ConverterData):  # pylint: disable=protected-access
  """Variable values for TensorFlow's converter, read eagerly instead of from a session."""

  def __init__(self, graph_def, values):
    super().__init__(graph_def)
    for name, (dtype_enum, value) in values.items():
      self._tensor_data[name] = convert_to_constants._TensorData(  # pylint: disable=protected-access
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
    utils.UserError: naming such an op.
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
          raise utils.UserError(
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


def _node_name_for(key):
  # Node names allow [A-Za-z0-9._/-] and start with a letter or digit; keys may hold anything.
  base = ''.join(c if c.isalnum() or c in '._-/' else '_' for c in key).strip('/') or 'input'
  return base if base[0].isalnum() else 'input_' + base


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
      name, _, index = info.name.partition(':')
      node = nodes[name]
      if node.op not in ('Placeholder', 'PlaceholderWithDefault') or index not in ('', '0'):
        continue
      if name not in renamed:
        if node.op == 'PlaceholderWithDefault':
          node.op = 'Placeholder'  # same dtype and shape attributes; the default goes
          del node.input[:]
        wanted = _node_name_for(key)
        renamed[name] = wanted if wanted == name else tables.unique_name(wanted, taken)
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
    (saved_model_io.FrozenModel, freezing.FreezeReport).

  Raises:
    utils.UserError: a captured resource that is neither a variable nor a table, or a use of a
      variable that cannot be frozen.
  """
  graph_def = meta_graph.graph_def
  signatures = freezing.frozen_signatures(signatures)  # copies: input names change below
  outputs = saved_model_io.signature_output_nodes(signatures)
  inputs = [saved_model_io.node_name(i.name) for s in signatures.values()
            for i in s.inputs.values()]
  keep = list(dict.fromkeys(outputs + inputs))
  needed = graph_edit.strip(graph_def, keep)  # drops save, restore and initialiser functions
  handles = captured_handles(meta_graph, needed, signatures, loaded, where)
  names = captured_objects(meta_graph)

  values, table_nodes = {}, []
  for node in needed.node:
    if node.op == 'VarHandleOp':
      if node.name not in handles:
        raise utils.UserError('variable %s of %s is not captured by a signature function; this '
                              'SavedModel layout is not supported' % (node.name, where))
      values[node.name] = (node.attr['dtype'].type, _read_variable(node, handles[node.name]))
    elif node.op in tables.TABLE_OPS:
      if node.name not in handles:
        raise utils.UserError('table %s of %s is not captured by a signature function; this '
                              'SavedModel layout is not supported' % (node.name, where))
      table_nodes.append(node)
    elif _produces_resource(node.op):
      raise utils.UserError(
          'the signatures of %s read %r (%s, op %s), a resource freezer cannot freeze (only '
          'variables and hash tables)' % (where, names.get(node.name, node.name), node.name,
                                          node.op))
  try:
    frozen, _ = convert_to_constants._replace_variables_by_constants(  # pylint: disable=protected-access
        _ValuesConverterData(needed, values))
  except (KeyError, ValueError) as e:
    raise utils.UserError('cannot freeze the variables of %s: TensorFlow\'s converter failed '
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
                 utils.human_bytes(table.nbytes), time.perf_counter() - start)
    new_nodes, fill = tables.fill_nodes(node, table, taken)
    frozen.node.extend(new_nodes)
    fills.append(fill)
    contents.append(table)
  init_op = None
  if fills:
    init = tf1.NodeDef(name=tables.unique_name(tables.INIT_OP_NAME, taken), op='NoOp',
                       input=['^' + f for f in fills])
    frozen.node.append(init)
    init_op = init.name

  _inputs_named_by_key(frozen, signatures)
  keep = saved_model_io.signature_output_nodes(signatures) + [
      saved_model_io.node_name(i.name) for s in signatures.values() for i in s.inputs.values()]
  frozen = graph_edit.strip(frozen, list(dict.fromkeys(keep + ([init_op] if init_op else []))))
  frozen.versions.CopyFrom(graph_def.versions)
  model = saved_model_io.FrozenModel(graph_def=frozen, signatures=signatures, tags=list(tags),
                                     table_init_op=init_op)
  report = freezing.FreezeReport(variables=sorted(values), tables=contents,
                                 nodes_before=len(graph_def.node), nodes_after=len(frozen.node))
  return model, report


def freeze_saved_model(export_dir, tags=('serve',), signature_names=None):
  """Loads a TF2 object-based SavedModel and freezes the chosen signatures.

  Same contract as freezing.freeze_saved_model, which calls this for TF2 SavedModels.

  Returns:
    (saved_model_io.FrozenModel, freezing.FreezeReport).

  Raises:
    utils.UserError: for anything wrong with the input, naming the path or signature.
  """
  proto = saved_model_io.read_saved_model_proto(export_dir)
  meta_graph = saved_model_io.select_meta_graph(proto, tags, export_dir)
  signatures = saved_model_io.select_signatures(meta_graph, signature_names, export_dir)
  saved_model_io.check_tensors_exist(meta_graph.graph_def, signatures, export_dir)
  check_read_only(meta_graph, signatures, export_dir)
  logging.info('%s is a TF2 object-based SavedModel: values from tf.saved_model.load',
               export_dir)
  loaded = load_objects(export_dir, tags)
  try:
    model, report = freeze_graph(meta_graph, signatures, loaded, tags, export_dir)
  except tf.errors.OpError as e:
    raise utils.UserError('cannot freeze %s: %s'
                          % (export_dir, utils.tf_error_message(e))) from e
  logging.info('froze %d variables and %d tables (%s of table contents); %d nodes -> %d '
               '(plus %d library functions)', len(report.variables), len(report.tables),
               utils.human_bytes(sum(t.nbytes for t in report.tables)), report.nodes_before,
               report.nodes_after, len(model.graph_def.library.function))
  return model, report


# ---------------------------------------------------------------------------------------------
# The original, run the way TF2 users run it (for comparison.py)


class LoadedModel:
  """A TF2 SavedModel as tf.saved_model.load restores it, with comparison.Model's interface.

  The reference for a TF2 SavedModel is what tf.saved_model.load computes, not a TF1 session
  over its MetaGraph: for a Keras 3 model saved with tf.saved_model.save the two differ (the
  session's variables are never restored). `graph` and `graph_def` are the MetaGraph's, for
  input dtypes and shapes; nothing runs in them.
  """

  session = None

  def __init__(self, export_dir, meta_graph, tags=('serve',)):
    start = time.perf_counter()
    self._loaded = load_objects(export_dir, tags)
    self.load_seconds = time.perf_counter() - start
    self.name = export_dir
    self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                       if k != saved_model_io.INIT_OP_SIGNATURE_KEY}
    self.graph_def = meta_graph.graph_def
    self.graph = tf.Graph()
    with self.graph.as_default():
      tf.graph_util.import_graph_def(self.graph_def, name='')
    self.size_bytes = saved_model_io.directory_size(export_dir)

  @property
  def nodes(self):
    return len(self.graph_def.node)

  def run(self, sig_key, feeds):
    """Runs signature `sig_key` on {input key: array}; returns {output key: array}."""
    inputs = self.signatures[sig_key].inputs
    try:
      args = {k: tf.constant(v, dtype=tf.as_dtype(saved_model_io.base_dtype(inputs[k].dtype)))
              for k, v in feeds.items()}
      outputs = self._loaded.signatures[sig_key](**args)
    except (TypeError, KeyError) as e:
      raise ValueError(str(e)) from e
    except tf.errors.OpError as e:
      # Eager errors carry a '<stack traces unavailable>' line where graph errors have none.
      raise ValueError('\n'.join(l for l in e.message.splitlines()
                                 if l.strip() != '<stack traces unavailable>')) from e
    return {k: v.numpy() for k, v in outputs.items()}

  def close(self):
    self._loaded = None
