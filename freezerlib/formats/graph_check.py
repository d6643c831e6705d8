"""Graphs TensorFlow would refuse, found where they are read: one line naming the file and node.

A GraphDef from a file can be corrupt in ways protobuf parsing does not see (the kinds
TensorFlow's own `cc/saved_model/testdata/fuzz_generated` holds): a Const without its value, a
negative dimension, an attribute of the wrong type, an input naming no node, a cycle.
TensorFlow refuses them late, deep in an import or a session, with multi-line errors or
crashes; the checkpoint path, which never imports TensorFlow, would copy them into its output.
`check_graph_def` finds them with the protos alone, once, where a graph is read (a SavedModel's
MetaGraph, a frozen GraphDef, a .meta file), before anything runs or is written.

Attribute types need the ops' definitions: a MetaGraph carries them (its stripped op list);
for a frozen GraphDef the caller passes TensorFlow's registry (that path imports TensorFlow
anyway). Without them, everything but attribute types is checked.
"""

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf

# AttrValue's field for each OpDef attribute type.
_FIELD = {'string': 's', 'int': 'i', 'float': 'f', 'bool': 'b', 'type': 'type',
          'shape': 'shape', 'tensor': 'tensor', 'func': 'func'}
_FIELD_NAMES = {'s': 'a string', 'i': 'an int', 'f': 'a float', 'b': 'a bool', 'type': 'a type',
                'shape': 'a shape', 'tensor': 'a tensor', 'func': 'a function',
                'list': 'a list', 'placeholder': 'a placeholder'}
# The only edges that may close a cycle: a while loop's NextIteration feeding its Merge.
_BACK_EDGE_OPS = frozenset({'NextIteration', 'RefNextIteration'})


class CorruptGraphError(errors.UserError):
  """A graph TensorFlow would refuse; the message names the file and the node."""


def op_defs_of(op_list):
  """{op name: OpDef} of an OpList (a MetaGraph's `meta_info_def.stripped_op_list`)."""
  return {o.name: o for o in op_list.op}


def check_meta_graph(meta_graph, where):
  """`check_graph_def` on a MetaGraph's graph, with the op definitions it carries.

  Raises:
    CorruptGraphError: naming `where` and the node.
  """
  check_graph_def(meta_graph.graph_def, where,
                  op_defs_of(meta_graph.meta_info_def.stripped_op_list) or None)


def check_graph_def(graph_def, where, op_defs=None):
  """Refuses a GraphDef that TensorFlow would not import or run.

  Checks every node of the graph and of its library functions: Const nodes have a value of
  their dtype; no tensor has a negative dimension (a shape attribute none below -1, its
  unknown size); attributes have the type their op declares and required ones are there
  (with `op_defs`); every input names a node (or, in a function, an argument); node names
  are unique; and the graph has no cycle but a while loop's back edges.

  Args:
    graph_def: the GraphDef (not modified).
    where: the file it was read from, for messages.
    op_defs: {op name: OpDef} (anything with `.get`), or None to skip attribute types.

  Raises:
    CorruptGraphError: one line naming `where`, the node and what is wrong with it.
  """
  functions = {f.signature.name: f for f in graph_def.library.function}
  cache = {}  # op -> its attribute rules (_attr_rules)
  names = set()
  for node in graph_def.node:
    if node.name in names:
      raise CorruptGraphError('%s is corrupt: two nodes are named %r' % (where, node.name))
    names.add(node.name)
  sources = {}  # node -> the nodes its inputs name, for the cycle check
  for node in graph_def.node:
    _check_node(node, where, '', op_defs, functions, cache)
    # graphs.node_name, inline: this loop runs over every input of the graph.
    named = [i.lstrip('^').split(':')[0] for i in node.input]
    for graph_input, source in zip(node.input, named):
      if source not in names:
        raise CorruptGraphError('%s is corrupt: node %r takes input %r, which is not a node of '
                                'the graph' % (where, node.name, graph_input))
    sources[node.name] = named
  for function in graph_def.library.function:
    _check_function(function, where, op_defs, functions, cache)
  _check_acyclic(graph_def, where, sources)


def _check_function(function, where, op_defs, functions, cache):
  name = function.signature.name
  args = {a.name for a in function.signature.input_arg}
  nodes = {n.name for n in function.node_def}
  for node in function.node_def:
    _check_node(node, where, 'function %s: ' % name, op_defs, functions, cache)
    for graph_input in node.input:
      source = graph_input.lstrip('^').split(':')[0]
      if source not in nodes and source not in args:
        raise CorruptGraphError('%s is corrupt: function %s: node %r takes input %r, which is '
                                'neither a node nor an argument of the function'
                                % (where, name, node.name, graph_input))


def _check_node(node, where, scope, op_defs, functions, cache):
  problem = _node_problem(node, op_defs, functions, cache)
  if problem:
    raise CorruptGraphError('%s is corrupt: %snode %r (%s) %s' % (where, scope, node.name,
                                                                 node.op, problem))


def _node_problem(node, op_defs, functions, cache):
  """What is wrong with `node` (None when nothing is)."""
  attrs = node.attr
  op = node.op
  for key in attrs:  # read only: `attrs[k]` on a missing key would add it
    value = attrs[key]
    kind = value.WhichOneof('value')
    if kind == 'shape':
      shapes, tensors = (value.shape,), ()
    elif kind == 'tensor':
      shapes, tensors = (), (value.tensor,)
    elif kind == 'list':
      shapes, tensors = value.list.shape, value.list.tensor
    else:
      continue
    for shape in shapes:
      for dim in shape.dim:
        if dim.size < -1:
          return _negative(dim.size, key)
    for tensor in tensors:
      for dim in tensor.tensor_shape.dim:
        if dim.size < 0:
          return _negative(dim.size, key)
  if op == 'Const':
    if 'value' not in attrs or attrs['value'].WhichOneof('value') != 'tensor':
      return 'has no value'
    if 'dtype' in attrs and attrs['dtype'].WhichOneof('value') == 'type':
      declared, stored = attrs['dtype'].type, attrs['value'].tensor.dtype
      if declared != stored:
        return 'holds a %s value but its dtype attribute says %s' % (
            lean_tf.as_dtype(stored).name, lean_tf.as_dtype(declared).name)
  if op_defs is not None and op not in functions:
    rules = cache[op] if op in cache else _attr_rules(op_defs, op, cache)
    if rules:
      return _attrs_problem(node, attrs, rules)
  return None


def _negative(size, attr):
  return 'has a negative dimension (%d) in attribute %r' % (size, attr)


def _attr_rules(op_defs, op, cache):
  """[(attr name, wanted AttrValue field or None, has a default, allowed types)] of `op`'s
  OpDef in `op_defs` (None when it has none), kept in `cache` ({op: rules}) so each op type's
  OpDef is read once: reading its fields costs more than a node's own."""
  if op not in cache:
    op_def = op_defs.get(op)
    if op_def is None:
      cache[op] = None
    else:
      rules = []
      for attr_def in op_def.attr:
        wanted = None
        if attr_def.type != 'any':
          wanted = 'list' if attr_def.type.startswith('list(') else _FIELD.get(attr_def.type)
        allowed = (frozenset(attr_def.allowed_values.list.type) if attr_def.type == 'type'
                   else frozenset())
        rules.append((attr_def.name, wanted, attr_def.HasField('default_value'), allowed))
      cache[op] = rules
  return cache[op]


def _attrs_problem(node, attrs, rules):
  for name, wanted, has_default, allowed in rules:
    if name not in attrs:
      if not has_default:
        return 'lacks attribute %r, which op %s requires' % (name, node.op)
      continue
    if wanted is None:
      continue
    value = attrs[name]
    kind = value.WhichOneof('value')
    if kind is None or kind == 'placeholder':
      continue  # unset (an empty list) or a function's placeholder: TensorFlow's own rule
    if kind != wanted:
      return 'has attribute %r holding %s, where op %s wants %s' % (
          name, _FIELD_NAMES.get(kind, kind), node.op, _FIELD_NAMES[wanted])
    if allowed and graphs.base_dtype(value.type) not in allowed:
      return 'has attribute %r = %s, which op %s does not allow' % (
          name, lean_tf.as_dtype(value.type).name, node.op)
  return None


def _check_acyclic(graph_def, where, sources):
  """Kahn's sort over data and control edges, without a while loop's back edges.

  `sources` is {node: the nodes its inputs name} (check_graph_def's)."""
  ops = {n.name: n.op for n in graph_def.node}
  inputs = {}
  consumers = {}
  for node in graph_def.node:
    named = sources[node.name]
    if node.op in ('Merge', 'RefMerge'):
      named = [s for s in named if ops.get(s) not in _BACK_EDGE_OPS]
    inputs[node.name] = named
    for source in named:
      consumers.setdefault(source, []).append(node.name)
  pending = {name: len(named) for name, named in inputs.items()}
  ready = [name for name, count in pending.items() if count == 0]
  while ready:
    name = ready.pop()
    for consumer in consumers.get(name, ()):
      pending[consumer] -= 1
      if pending[consumer] == 0:
        ready.append(consumer)
  left = {name for name, count in pending.items() if count > 0}
  if not left:
    return
  # Every node left waits on another node left: walking back along those inputs must repeat.
  path, seen = [], {}
  name = min(left)
  while name not in seen:
    seen[name] = len(path)
    path.append(name)
    name = next(s for s in inputs[name] if s in left)
  flow = list(reversed(path[seen[name]:]))  # in the direction data flows
  cycle = flow + flow[:1]
  raise CorruptGraphError('%s is corrupt: node %r is in a cycle (%s)' % (
      where, cycle[0], ' -> '.join(cycle) if len(cycle) <= 6 else
      ' -> '.join(cycle[:5]) + ' -> ... (%d nodes)' % (len(cycle) - 1)))
