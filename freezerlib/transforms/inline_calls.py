"""The function calls that take a given node's output, inlined into the graph's top level.

A graph frozen from a TF2 SavedModel reads its tables inside library functions: each signature
is one StatefulPartitionedCall whose function takes the tables as resource arguments, often
through further calls (a Keras model's call, a layer's). A rewrite that needs a table's real
readers (transforms.read_only_tables) sees only that call until the body is in the graph;
Grappler inlines every call, but only after the rewrites ran (export.from_frozen).

Inlining here is what Grappler's function inlining does, without Grappler (which would take
the whole graph, its big constants included, through a copy and an import): the function's
nodes are copied under the call's name, its arguments replaced by the call's inputs themselves
(no Identity in between, so a table's lookups read the table node and a lookup's default is the
Const the call was given), and the call node becomes an IdentityN of the function's outputs
under its own name, with the function's control outputs (the stateful ops TF2 runs on every
call) as control inputs: whatever read the call's outputs, or waited for it, still does, and a
signature naming the call's outputs names the same values. The call's own control inputs go to
every copied node that reads nothing else of the function.

Calls the copied nodes make are inlined in turn while they take the given nodes. A call is left
as it is when its function is not in the graph's library, is generic (attributes in its
signature), takes another number of inputs than the call gives, or is one TensorFlow cannot turn
into a graph.
"""

from freezerlib.core import graphs
from freezerlib.core import lean_tf

CALL_OPS = frozenset({'StatefulPartitionedCall', 'PartitionedCall'})


def inline_calls_taking(graph_def, sources):
  """Inlines (in place) every call of `graph_def` that takes an output of a node in `sources`,
  and the calls those bring to the top level that do too.

  Args:
    graph_def: a GraphDef whose library holds the functions called (modified in place).
    sources: names of top-level nodes (a table, for instance).

  Returns:
    names of the call nodes inlined (each now an IdentityN, or a NoOp for a call without
    outputs), in the order they were.
  """
  sources = set(sources)
  if not sources or not graph_def.library.function:
    return []
  library = {f.signature.name: f for f in graph_def.library.function}
  converter = graphs.FunctionGraphs(graph_def.library)
  taken = {n.name for n in graph_def.node}
  inlined, tried = [], set()
  while True:
    calls = [n for n in graph_def.node
             if n.op in CALL_OPS and n.name not in tried and
             any(graphs.node_name(i) in sources for i in graphs.data_inputs(n))]
    if not calls:
      return inlined
    for call in calls:
      tried.add(call.name)
      nodes = _body(call, library.get(call.attr['f'].func.name), converter, taken)
      if nodes is not None:
        graph_def.node.extend(nodes)
        inlined.append(call.name)


def _body(call, function, converter, taken):
  """The nodes of `function` inlined for `call`, which becomes their outputs' IdentityN (in
  place); None, and `call` unchanged, when it cannot be inlined."""
  inputs = graphs.data_inputs(call)
  signature = function.signature if function is not None else None
  if (signature is None or signature.attr or len(signature.input_arg) != len(inputs) or
      any(a.type_attr or a.number_attr or a.type_list_attr
          for a in list(signature.input_arg) + list(signature.output_arg))):
    return None
  try:
    graph_def, outputs = converter.convert(function)
  except (ValueError, KeyError, TypeError):
    return None
  bound = {a.name: i for a, i in zip(signature.input_arg, inputs)}
  scope = graphs.unique_scope(call.name, {n for n in taken if n != call.name})
  renamed = {n.name: graphs.unique_name('%s/%s' % (scope, n.name), taken)
             for n in graph_def.node if n.name not in bound}

  def rename(tensor):
    control = tensor.startswith('^')
    name, sep, index = tensor.lstrip('^').partition(':')
    if name in bound:
      target = bound[name]
      return '^' + graphs.node_name(target) if control else target
    return ('^' if control else '') + renamed[name] + sep + index

  waits = [i for i in call.input if i.startswith('^')]
  nodes = []
  for node in graph_def.node:
    if node.name in bound:
      continue
    copy = lean_tf.NodeDef()
    copy.CopyFrom(node)
    copy.name = renamed[node.name]
    copy.device = ''  # the serving graph's devices are cleared
    del copy.input[:]
    copy.input.extend(rename(i) for i in node.input)
    if not any(graphs.node_name(i) in renamed for i in node.input):
      copy.input.extend(w for w in waits if w not in copy.input)
    if '_class' in copy.attr:  # colocation with nodes of the function: with their copies
      kept = [b'loc:@' + graphs.node_name(rename(v[5:].decode())).encode()
              for v in copy.attr['_class'].list.s
              if v.startswith(b'loc:@') and (v[5:].decode() in renamed or
                                             v[5:].decode() in bound)]
      del copy.attr['_class']
      if kept:
        copy.attr['_class'].list.s.extend(kept)
    nodes.append(copy)
  results = [rename(o) for o in outputs]
  after = ['^' + renamed[n] for n in sorted(function.control_ret.values()) if n in renamed]
  name = call.name
  call.Clear()
  call.name = name
  call.op = 'IdentityN' if results else 'NoOp'
  call.input.extend(results + after)
  if results:
    call.attr['T'].list.type.extend(a.type for a in signature.output_arg)
  return nodes
