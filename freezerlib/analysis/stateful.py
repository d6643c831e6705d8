"""Signatures that write state: a counter that no longer counts once frozen.

A signature whose outputs need an op that writes a variable or a table means something
different once its state is baked into constants, so it is refused, not silently frozen. The
write ops are found at the graph's top level and inside every library function a needed node
calls (TF2 signatures are calls of functions that take the variables and tables they use as
resource arguments), each followed back to the state it writes: its node name, or its object
path where a TF2 object graph names it.
"""

import re

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.formats import saved_model

# Ops that change a variable or a table. A signature that runs one of them means something
# different once frozen (a counter that no longer counts), so it is refused, not silently baked.
_WRITE_OPS = frozenset({
    'Assign', 'AssignAdd', 'AssignSub', 'AssignVariableOp', 'AssignAddVariableOp',
    'AssignSubVariableOp', 'CountUpTo', 'ResourceCountUpTo', 'LookupTableInsert',
    'LookupTableInsertV2', 'LookupTableImport', 'LookupTableImportV2', 'LookupTableRemoveV2',
    'InitializeTable', 'InitializeTableV2', 'InitializeTableFromTextFile',
    'InitializeTableFromTextFileV2', 'InitializeTableFromDataset', 'DestroyResourceOp',
})
_WRITE_OP_PATTERN = re.compile(r'^(Resource)?(Sparse)?(Apply|Scatter|StridedSliceAssign)')
CALL_OPS = frozenset({'StatefulPartitionedCall', 'PartitionedCall'})
# Index of the node input that feeds the called function's first argument.
_FIRST_ARGUMENT = {'StatefulPartitionedCall': 0, 'PartitionedCall': 0, 'While': 0,
                   'StatelessWhile': 0, 'If': 1, 'StatelessIf': 1, 'Case': 1,
                   'StatelessCase': 1}


def is_write_op(op_type):
  """Whether ops of `op_type` write the variable or table given as their first input."""
  return op_type in _WRITE_OPS or bool(_WRITE_OP_PATTERN.match(op_type))


def captured_objects(meta_graph):
  """Top-level node name -> object path, for the resources and constants functions capture.

  A call node's last inputs are its function's captures, in the order of the function's
  `bound_inputs` (object ids).
  """
  object_graph = meta_graph.object_graph_def
  if not object_graph.nodes:  # a TF1 graph: no objects to name
    return {}
  paths = graphs.object_paths(object_graph)
  names = {}
  for node in meta_graph.graph_def.node:
    if node.op not in CALL_OPS:
      continue
    function = object_graph.concrete_functions.get(node.attr['f'].func.name)
    inputs = graphs.data_inputs(node)
    if function is None or len(function.bound_inputs) > len(inputs):
      continue
    captures = inputs[len(inputs) - len(function.bound_inputs):]
    for name, object_id in zip(captures, function.bound_inputs):
      if paths.get(object_id):
        names.setdefault(graphs.node_name(name), paths[object_id])
  return names


def signature_functions(meta_graph):
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
      if node.op not in graphs.IDENTITY_OPS or not node.input:
        if self.name is None:
          return ('graph', node.name)
        return ('function', '%s/%s' % (self.name, node.name))
      index = int(parts[-1]) if node.op == 'IdentityN' and parts[-1].isdigit() else 0
      tensor = graphs.data_inputs(node)[index]
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
    if is_write_op(node.op):
      target = scope.source(node.input[0]) if node.input else None
      # A resource created inside a function (a table it builds and fills for itself) lives
      # for one call: not state the model keeps between calls.
      if target is None or target[0] == 'graph':
        where = node.name if scope.name is None else '%s/%s' % (scope.name, node.name)
        return node, where, target
    for function_name, first in _calls(node, library):
      inputs = graphs.data_inputs(node)
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
    errors.UserError: naming the signature, the state (its object path where the object graph
      knows it) and the op.
  """
  graph_def = meta_graph.graph_def
  library = {f.signature.name: f for f in graph_def.library.function}
  top = _Scope(None, {n.name: n for n in graph_def.node})
  names = captured_objects(meta_graph)
  for key, sig in signatures.items():
    outputs = saved_model.signature_output_nodes({key: sig})
    needed = graphs.reachable(graph_def, outputs)
    found = _find_write(top, [n for n in graph_def.node if n.name in needed], library, set())
    if found:
      node, location, target = found
      if target is None:
        state = 'state it cannot trace'
      elif target[0] == 'graph':
        state = repr(names.get(target[1], target[1]))
      else:
        state = repr(target[1])
      raise errors.UserError(
          'signature %r of %s writes %s (op %s, %s): a stateful signature cannot be frozen; '
          'choose others with --signature_def' % (key, where, state, location, node.op))
