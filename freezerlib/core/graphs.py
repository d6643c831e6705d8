"""GraphDef helpers that need no TensorFlow: tensor and node names, reachability, new names.

Every module names a tensor's node with `node_name` and finds what a set of nodes needs with
`reachable`, so "what the signatures run" means the same thing everywhere.
"""

import collections
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
  # ASCII only: str.isalnum() is true of 'é' and '名', which TensorFlow refuses in names.
  base = ''.join(c if (c.isascii() and c.isalnum()) or c in '._-/' else '_'
                 for c in key).strip('/') or 'input'
  return base if base[0].isascii() and base[0].isalnum() else 'input_' + base


def info_tensors(info):
  """Every tensor name a signature TensorInfo stands for: its `name`; a coo_sparse one's
  indices, values and dense shape tensors; a composite one's components, in order."""
  encoding = info.WhichOneof('encoding')
  if encoding == 'name':
    return [info.name] if info.name else []
  if encoding == 'coo_sparse':
    coo = info.coo_sparse
    return [n for n in (coo.indices_tensor_name, coo.values_tensor_name,
                        coo.dense_shape_tensor_name) if n]
  if encoding == 'composite_tensor':
    return [c for t in info.composite_tensor.components for c in info_tensors(t)]
  return []


def signature_tensors(signature, kind):
  """Every tensor name of a SignatureDef's `kind` ('inputs' or 'outputs'), by sorted key."""
  infos = getattr(signature, kind)
  return [t for key in sorted(infos) for t in info_tensors(infos[key])]


def computed_tensors(graph_def, signature):
  """Tensors a signature needs computed (not fed): {(node, index)}, with (node, None) for
  nodes needed only through a control edge."""
  nodes = {n.name: n for n in graph_def.node}
  fed = {tensor_key(t) for t in signature_tensors(signature, 'inputs')}
  needed, seen = set(), set()
  stack = [node_name(t) for t in signature_tensors(signature, 'outputs')]
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


def functions_used(graph_def, roots=()):
  """Names of the library functions reachable from `graph_def`'s nodes (and from the functions
  named in `roots`), each with its gradient function (a GradientDef naming a function the
  library lacks fails to import)."""
  library = {f.signature.name: f for f in graph_def.library.function}
  gradients = {g.function_name: g.gradient_func for g in graph_def.library.gradient}
  used, stack = set(), list(roots)

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
    if name in gradients:
      stack.append(gradients[name])
    for node in library[name].node_def:
      visit_attrs(node)
  return used


def object_paths(object_graph):
  """Node id -> 'a/b/c', each object's first path in a breadth-first walk from the root, for
  a SavedModel's SavedObjectGraph or a checkpoint's TrackableObjectGraph (the same shape: nodes
  with named children), as TensorFlow's own object-graph code names them."""
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


def walk(starts, edges):
  """Every name reached from `starts` through `edges`, `starts` included: the one graph walk
  (a node's inputs, its consumers, an object graph's children).

  Args:
    starts: names (or ids) to start from.
    edges: callable(name) -> the names it leads to, or None for a name outside the graph,
      which is neither kept nor followed.

  Returns:
    set of names.
  """
  seen, stack = set(), list(starts)
  while stack:
    name = stack.pop()
    if name in seen:
      continue
    nexts = edges(name)
    if nexts is None:
      continue
    seen.add(name)
    stack.extend(nexts)
  return seen


def inputs_of(graph_def):
  """`edges` for `walk` to a node's inputs (data and control), in `graph_def`."""
  inputs = {n.name: [node_name(i) for i in n.input] for n in graph_def.node}
  return inputs.get


def consumers_of(graph_def):
  """`edges` for `walk` to the nodes that read a node (data and control), in `graph_def`."""
  consumers = {n.name: [] for n in graph_def.node}
  for node in graph_def.node:
    for i in node.input:
      consumers.setdefault(node_name(i), []).append(node.name)
  return consumers.get


def reachable(graph_def, dest_nodes):
  """Names of the nodes `dest_nodes` reach through data, control and colocation edges (what
  tf.compat.v1.graph_util.extract_sub_graph keeps), without copying any node.

  Raises:
    KeyError: a destination node that is not in the graph.
  """
  if isinstance(dest_nodes, str):
    raise TypeError('dest_nodes must be a list')
  nodes = {node.name: node for node in graph_def.node}
  missing = [d for d in dest_nodes if d not in nodes]
  if missing:
    raise KeyError('%s is not in graph' % missing[0])

  # Edges are read only from the nodes reached (a serving subgraph is a small part of a
  # training graph).
  def edges(name):
    node = nodes.get(name)
    if node is None:
      return None
    out = [node_name(i) for i in node.input]
    if '_class' in node.attr:
      out.extend(s.decode('utf-8')[len('loc:@'):] for s in node.attr['_class'].list.s
                 if s.startswith(b'loc:@'))
    return out

  return walk(dest_nodes, edges)


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



class FunctionGraphs:
  """Library functions as graphs (TensorFlow's function_def_to_graph_def, imported on first
  use): a function's arguments become Placeholders named after them, its nodes' inputs graph
  tensor names. Functions it calls by name are looked up in `library` (a FunctionDefLibrary),
  not among whatever this process has loaded."""

  def __init__(self, library):
    self._library = library
    self._graph = None

  def convert(self, function):
    """(GraphDef, [graph tensor name of each output, in the signature's order]).

    Raises:
      ValueError: a function TensorFlow cannot convert.
    """
    tf = lean_tf.tensorflow
    from tensorflow.python.framework import function_def_to_graph
    if self._graph is None:
      self._graph = tf.Graph()
      with self._graph.as_default():
        holder = lean_tf.graph_pb2.GraphDef()
        holder.library.CopyFrom(self._library)
        tf.graph_util.import_graph_def(holder, name='')
    with self._graph.as_default():
      graph_def, flat = function_def_to_graph.function_def_to_graph_def(function)
    outputs = []
    for arg in function.signature.output_arg:
      ret = function.ret[arg.name]
      outputs.append(flat.get(ret, ret))
    return graph_def, outputs


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
