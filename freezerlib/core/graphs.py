"""GraphDef helpers that need no TensorFlow: tensor and node names, reachability, new names.

Every module names a tensor's node with `node_name` and finds what a set of nodes needs with
`reachable`, so "what the signatures run" means the same thing everywhere.
"""

import copy

from freezerlib.core import lean_tf


# Ops that pass a tensor (a handle, a ref) on unchanged: what to look through to find the
# variable or table behind it.
IDENTITY_OPS = frozenset({'Identity', 'IdentityN', 'RefIdentity', 'Enter', 'RefEnter', 'Switch',
                          'RefSwitch'})


def node_name(tensor_name):
  """'a/b:1' -> 'a/b'; '^a' -> 'a'."""
  return tensor_name.lstrip('^').split(':')[0]


def tensor_key(name):
  """'a' -> ('a', 0); 'a:2' -> ('a', 2)."""
  node, _, index = name.partition(':')
  return node, int(index) if index else 0


def input_key(graph_input):
  """A node input as (node, index), or None for a control input ('^a')."""
  return None if graph_input.startswith('^') else tensor_key(graph_input)


def tensor_name(name):
  """'a' -> 'a:0'; 'a:1' unchanged."""
  return name if ':' in name else name + ':0'


def data_inputs(node):
  """The node's inputs that are not control inputs."""
  return [i for i in node.input if not i.startswith('^')]


def base_dtype(dtype_enum):
  """DT_FLOAT_REF -> DT_FLOAT; other dtypes unchanged."""
  return dtype_enum - 100 if dtype_enum > 100 else dtype_enum


def unique_name(base, taken):
  """`base`, or `base_N` for the first N that is not in `taken`; added to `taken`."""
  name, i = base, 1
  while name in taken:
    name = '%s_%d' % (base, i)
    i += 1
  taken.add(name)
  return name


def unique_scope(base, taken):
  """`base`, or `base_N`, such that no name in `taken` is it or lies under it."""
  scope, i = base, 1
  while any(n == scope or n.startswith(scope + '/') for n in taken):
    scope = '%s_%d' % (base, i)
    i += 1
  return scope


def name_for_key(key):
  """A node name for a signature key: node names allow [A-Za-z0-9._/-] and start with a letter
  or digit; keys may hold anything."""
  base = ''.join(c if c.isalnum() or c in '._-/' else '_' for c in key).strip('/') or 'input'
  return base if base[0].isalnum() else 'input_' + base


def computed_tensors(graph_def, signature):
  """Tensors a signature needs computed (not fed): {(node, index)}, with (node, None) for
  nodes needed only through a control edge."""
  nodes = {n.name: n for n in graph_def.node}
  fed = {tensor_key(i.name) for i in signature.inputs.values()}
  needed, seen = set(), set()
  stack = [node_name(o.name) for o in signature.outputs.values()]
  while stack:
    name = stack.pop()
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    for graph_input in nodes[name].input:
      key = input_key(graph_input)
      if key is None:
        needed.add((graph_input[1:], None))
        stack.append(graph_input[1:])
      elif key not in fed:
        needed.add(key)
        stack.append(key[0])
  return needed


def functions_used(graph_def):
  """Names of the library functions reachable from `graph_def`'s nodes."""
  library = {f.signature.name: f for f in graph_def.library.function}
  used, stack = set(), []

  def visit_attrs(node_like):
    if node_like.op in library:
      stack.append(node_like.op)
    for value in node_like.attr.values():
      if value.HasField('func'):
        stack.append(value.func.name)
      for func in value.list.func:
        stack.append(func.name)

  for node in graph_def.node:
    visit_attrs(node)
  while stack:
    name = stack.pop()
    if name in used or name not in library:
      continue
    used.add(name)
    for node in library[name].node_def:
      visit_attrs(node)
  return used


def reachable(graph_def, dest_nodes):
  """Names of the nodes `dest_nodes` reach through data, control and colocation edges (what
  tf.compat.v1.graph_util.extract_sub_graph keeps), without copying any node.

  Raises:
    KeyError: a destination node that is not in the graph.
  """
  if isinstance(dest_nodes, str):
    raise TypeError('dest_nodes must be a list')
  inputs = {}
  for node in graph_def.node:
    edges = [node_name(i) for i in node.input]
    if '_class' in node.attr:
      edges += [s.decode('utf-8')[len('loc:@'):] for s in node.attr['_class'].list.s
                if s.startswith(b'loc:@')]
    inputs[node.name] = edges
  missing = [d for d in dest_nodes if d not in inputs]
  if missing:
    raise KeyError('%s is not in graph' % missing[0])
  keep, stack = set(), list(dest_nodes)
  while stack:
    name = stack.pop()
    if name in keep or name not in inputs:
      continue
    keep.add(name)
    stack.extend(inputs[name])
  return keep


def extract_sub_graph(graph_def, dest_nodes):
  """tf.compat.v1.graph_util.extract_sub_graph without TensorFlow: the nodes `dest_nodes`
  reach (see `reachable`), copied in their original order, with the graph's library and
  versions.

  Raises:
    KeyError: a destination node that is not in the graph.
  """
  keep = reachable(graph_def, dest_nodes)
  out = lean_tf.graph_pb2.GraphDef()
  out.node.extend(copy.deepcopy(n) for n in graph_def.node if n.name in keep)
  out.library.CopyFrom(graph_def.library)
  out.versions.CopyFrom(graph_def.versions)
  return out


def remove_unused(graph_def, candidates, keep=()):
  """Removes from `graph_def` (in place) the nodes among `candidates` that nothing reads, and
  then those that only they read, never a node of `keep`. For a rewrite that leaves the nodes
  it replaced dead, so the graph it returns holds no more than it needs.

  Returns:
    Names of the nodes removed.
  """
  candidates, keep = set(candidates), set(keep)
  readers = {}
  for node in graph_def.node:
    for i in node.input:
      readers.setdefault(node_name(i), set()).add(node.name)
  inputs = {n.name: {node_name(i) for i in n.input} for n in graph_def.node}
  removed = set()
  stack = [c for c in candidates if c in inputs]
  while stack:
    name = stack.pop()
    if name in removed or name in keep or name not in candidates or readers.get(name):
      continue
    removed.add(name)
    for source in inputs[name]:
      readers.get(source, set()).discard(name)
      stack.append(source)
  if removed:
    kept = [n for n in graph_def.node if n.name not in removed]
    del graph_def.node[:]
    graph_def.node.extend(kept)
  return removed
