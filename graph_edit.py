"""Graph surgery for serving: reader outputs to placeholders, strip the rest, clear devices."""

import collections
import dataclasses

from absl import logging

import lean_tf
from lean_tf import graph_pb2
from lean_tf import meta_graph_pb2
from lean_tf import tensorflow as tf  # imported on first use
import saved_model_io
import utils

tf1 = lean_tf.tf1


def _tensor_key(name):
  """'a' -> ('a', 0); 'a:2' -> ('a', 2)."""
  node, _, index = name.partition(':')
  return node, int(index) if index else 0


def _input_key(graph_input):
  return None if graph_input.startswith('^') else _tensor_key(graph_input)


def _unique_name(base, taken):
  name, i = base, 1
  while name in taken:
    name = '%s_%d' % (base, i)
    i += 1
  return name


def _placeholder_name(input_key, taken):
  # Node names allow [A-Za-z0-9._/-]; signature keys may hold anything.
  base = ''.join(c if c.isalnum() or c in '._-/' else '_' for c in input_key).strip('/') or 'input'
  if not base[0].isalnum():
    base = 'input_' + base
  return _unique_name(base, taken)


def computed_tensors(graph_def, signature):
  """Tensors a signature needs computed (not fed): {(node, index)}, with (node, None) for
  nodes needed only through a control edge."""
  nodes = {n.name: n for n in graph_def.node}
  fed = {_tensor_key(i.name) for i in signature.inputs.values()}
  needed, seen = set(), set()
  stack = [saved_model_io.node_name(o.name) for o in signature.outputs.values()]
  while stack:
    name = stack.pop()
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    for graph_input in nodes[name].input:
      key = _input_key(graph_input)
      if key is None:
        needed.add((graph_input[1:], None))
        stack.append(graph_input[1:])
      elif key not in fed:
        needed.add(key)
        stack.append(key[0])
  return needed


def inputs_to_placeholders(graph_def, signatures, op_defs=None):
  """Makes every signature input that is not a Placeholder into one, where that is sound.

  A reader output (`IteratorGetNext:3`) or an intermediate tensor (`x2:0`) becomes a Placeholder
  of the signature's dtype and shape, named after its signature key where that name is free.
  Every consumer of that tensor is rewired to the placeholder, so what fed it (dataset,
  iterator, parser) is left without consumers and is stripped later.

  An input that another signature computes from its own inputs (`x:0` of half_plus_two's
  `serving_default`, which `classify_x_to_y` derives from `tf_example:0`) stays as it is:
  cutting it would break that signature, and a Session (TF Serving's included) can feed any
  tensor.

  Every TensorInfo is set to what the graph really has (signatures can be wrong). That takes
  TensorFlow's shape inference, except where the graph states it: a Placeholder's attributes,
  an output's dtype from its OpDef. With `op_defs` (the MetaGraph's stripped op list) and only
  Placeholder inputs, TensorFlow is not loaded: input TensorInfos come from the placeholders,
  output dtypes from the OpDefs, and output shapes stay as the signature gives them.

  Args:
    graph_def: GraphDef (not modified).
    signatures: key -> SignatureDef (not modified).
    op_defs: optional OpList of the ops in `graph_def`; None: always use shape inference.

  Returns:
    (new GraphDef, new signatures with the placeholders' names,
     dict old tensor name -> placeholder tensor name).
  """
  nodes = {n.name: n for n in graph_def.node}
  taken = set(nodes)
  computed = {key: computed_tensors(graph_def, sig) for key, sig in signatures.items()}
  types = _TensorTypes(graph_def, op_defs)
  replaced = {}   # (node, index) -> placeholder node name
  kept = set()
  new_nodes = []
  signatures = {k: _copy_signature(v) for k, v in signatures.items()}
  for sig_key in sorted(signatures):
    sig = signatures[sig_key]
    for input_key in sorted(sig.inputs):
      info = sig.inputs[input_key]
      key = _tensor_key(info.name)
      node = nodes[key[0]]
      if (node.op == 'Placeholder' and key[1] == 0) or key in kept:
        continue
      if key not in replaced:
        users = sorted(k for k, c in computed.items() if key in c or (key[0], None) in c)
        if users:
          kept.add(key)
          logging.warning('signature %r input %r (%s) stays an intermediate tensor: '
                          'signature %r computes it', sig_key, input_key, info.name, users[0])
          continue
        name = _placeholder_name(input_key, taken)
        taken.add(name)
        types.fix(info, exact=True)
        placeholder = lean_tf.NodeDef(name=name, op='Placeholder')
        placeholder.attr['dtype'].type = info.dtype
        placeholder.attr['shape'].shape.CopyFrom(info.tensor_shape)
        new_nodes.append(placeholder)
        replaced[key] = name
        logging.info('signature %r input %r: %s -> placeholder %s', sig_key, input_key,
                     info.name, name)
      info.name = replaced[key] + ':0'
  # Every TensorInfo states what the graph really has, so loaders that build feeds from the
  # signature (tf.saved_model.load) work on models whose signatures were wrong.
  for sig in signatures.values():
    for info in list(sig.inputs.values()) + list(sig.outputs.values()):
      if info.name not in {v + ':0' for v in replaced.values()}:
        types.fix(info, exact=False)
  out = graph_pb2.GraphDef()
  out.CopyFrom(graph_def)
  for node in out.node:
    if node.op == 'Placeholder':
      # Old graphs (half_plus_three) write an unknown shape as `shape {}`, which the graph's
      # producer version makes mean "unknown" but which reads as a scalar once re-dumped with a
      # current version: state what the graph really has.
      node.attr['shape'].shape.CopyFrom(placeholder_shape(node, graph_def.versions.producer))
    for i, graph_input in enumerate(node.input):
      key = _input_key(graph_input)
      if key in replaced:
        node.input[i] = replaced[key]
      elif graph_input.startswith('^') and (graph_input[1:], 0) in replaced:
        # A control edge on a node whose output 0 is now fed: depend on the placeholder instead.
        node.input[i] = '^' + replaced[(graph_input[1:], 0)]
  out.node.extend(new_nodes)
  return out, signatures, {'%s:%d' % k: v + ':0' for k, v in replaced.items()}


def placeholder_shape(node, producer):
  """The TensorShapeProto a Placeholder has once imported: its `shape` attribute, except that
  graphs from producer version 21 and older meant "unknown" by a scalar or missing shape
  (TensorFlow's Placeholder shape function)."""
  shape = node.attr['shape'].shape if 'shape' in node.attr else None
  if shape is None or (producer <= 21 and (shape.unknown_rank or not shape.dim)):
    unknown = lean_tf.tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    return unknown
  return shape


class _TensorTypes:
  """dtype and shape of graph tensors, read from the graph where it states them, else from
  TensorFlow's shape inference (imported, with the graph, on first need)."""

  def __init__(self, graph_def, op_defs):
    self._graph_def = graph_def
    self._nodes = {n.name: n for n in graph_def.node}
    self._op_defs = None
    if op_defs is not None:
      self._op_defs = {o.name: o for o in op_defs.op}
      self._op_defs.update({f.signature.name: f.signature for f in graph_def.library.function})
    self._graph = None

  def _imported(self):
    if self._graph is None:
      self._graph = _imported(self._graph_def)
    return self._graph

  def fix(self, info, exact):
    """Sets a TensorInfo's dtype and shape to what the graph's tensor really has.

    Signatures can be wrong (half_plus_three's call tf_example:0 a float scalar); a placeholder
    made from such a TensorInfo would break the graph. Where the graph does not know the
    shape, the shape is left unknown rather than trusted. Without shape inference (op_defs
    given, `exact` False, not a Placeholder), only the dtype is checked.
    """
    node_name, index = _tensor_key(info.name)
    node = self._nodes[node_name]
    if self._graph is None and self._op_defs is not None:
      if node.op == 'Placeholder' and index == 0:
        info.dtype = saved_model_io.base_dtype(node.attr['dtype'].type)
        info.tensor_shape.CopyFrom(placeholder_shape(node, self._graph_def.versions.producer))
        return
      if not exact:
        dtype = output_dtype(node, index, self._op_defs)
        if dtype is not None and dtype != info.dtype:
          logging.warning('%s is %s, not %s as its signature says: corrected', info.name,
                          lean_tf.as_dtype(dtype).name, lean_tf.as_dtype(info.dtype).name)
          info.dtype = dtype
        return
    tensor = self._imported().get_tensor_by_name(info.name)
    info.dtype = tensor.dtype.base_dtype.as_datatype_enum
    if tensor.shape.rank is None:
      info.tensor_shape.Clear()
      info.tensor_shape.unknown_rank = True
    else:
      info.tensor_shape.CopyFrom(tensor.shape.as_proto())


def output_dtype(node, index, op_defs):
  """The (base) dtype of output `index` of `node` by its OpDef, or None when not known."""
  op_def = op_defs.get(node.op)
  if op_def is None:
    return None
  defaults = {a.name: a.default_value for a in op_def.attr}

  def attr(name):
    return node.attr[name] if name in node.attr else defaults.get(name)

  position = 0
  for arg in op_def.output_arg:
    if arg.type_list_attr:
      value = attr(arg.type_list_attr)
      types = list(value.list.type) if value is not None else None
    else:
      if arg.type:
        dtype = arg.type
      else:
        value = attr(arg.type_attr)
        dtype = value.type if value is not None else None
      count = 1
      if arg.number_attr:
        value = attr(arg.number_attr)
        count = value.i if value is not None else None
      types = None if dtype is None or count is None else [dtype] * count
    if types is None:
      return None
    if index < position + len(types):
      return saved_model_io.base_dtype(types[index - position]) or None
    position += len(types)
  return None


def _imported(graph_def):
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  return graph


def _copy_signature(sig):
  copy = meta_graph_pb2.SignatureDef()
  copy.CopyFrom(sig)
  return copy


def _functions_used(graph_def):
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


def strip(graph_def, keep_nodes):
  """Keeps only what `keep_nodes` need; clears devices; drops unused library functions.

  Args:
    graph_def: GraphDef (not modified).
    keep_nodes: node names to keep with everything they depend on.

  Returns:
    The stripped GraphDef.
  """
  out = lean_tf.extract_sub_graph(graph_def, list(keep_nodes))
  for node in out.node:
    node.device = ''
  used = _functions_used(out)
  functions = [f for f in out.library.function if f.signature.name in used]
  gradients = [g for g in out.library.gradient if g.function_name in used]
  del out.library.function[:]
  del out.library.gradient[:]
  out.library.function.extend(functions)
  out.library.gradient.extend(gradients)
  return out


def op_histogram(graph_def):
  """Counter of op type -> number of nodes."""
  return collections.Counter(n.op for n in graph_def.node)


@dataclasses.dataclass
class GraphStats:
  nodes: int
  bytes: int
  functions: int
  ops: collections.Counter

  @classmethod
  def of(cls, graph_def):
    return cls(nodes=len(graph_def.node), bytes=graph_def.ByteSize(),
               functions=len(graph_def.library.function), ops=op_histogram(graph_def))


def log_cut(before, after):
  """Logs node counts, bytes and the op-type histogram before and after."""
  logging.info('nodes: %d -> %d; library functions: %d -> %d; size: %s -> %s',
               before.nodes, after.nodes, before.functions, after.functions,
               utils.human_bytes(before.bytes), utils.human_bytes(after.bytes))
  width = max([len(op) for op in before.ops] + [10])
  logging.info('%-*s %8s %8s', width, 'op', 'before', 'after')
  for op in sorted(set(before.ops) | set(after.ops),
                   key=lambda o: (-before.ops.get(o, 0), o)):
    # Op types whose count changed at INFO; the unchanged rest at --verbosity=1.
    changed = before.ops.get(op, 0) != after.ops.get(op, 0)
    logging.vlog(0 if changed else 1, '%-*s %8d %8d', width, op, before.ops.get(op, 0),
                 after.ops.get(op, 0))


def grappler_optimize(graph_def, keep_nodes):
  """Runs Grappler's inference-safe passes (constant folding, arithmetic, dependency, ...).

  Args:
    graph_def: GraphDef to optimise.
    keep_nodes: nodes that must survive under their own names (signature inputs and outputs,
      the table init op).

  Returns:
    The optimised GraphDef.
  """
  # Imported here: Grappler's Python binding is heavy and only this optional step needs it.
  from tensorflow.core.protobuf import config_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.python.grappler import tf_optimizer  # pylint: disable=g-import-not-at-top

  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  meta_graph = tf1.train.export_meta_graph(graph=graph, graph_def=graph_def)
  fetch = meta_graph.collection_def['train_op']  # the collection Grappler keeps alive
  fetch.node_list.value.extend(keep_nodes)
  config = config_pb2.ConfigProto()
  rewrite = config.graph_options.rewrite_options
  rewrite.optimizers.extend(['pruning', 'constfold', 'arithmetic', 'dependency', 'function'])
  rewrite.meta_optimizer_iterations = 2  # ONE/TWO enum: two passes of the list above
  optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
  optimized.versions.CopyFrom(graph_def.versions)
  return optimized


def cut_to_signatures(graph_def, signatures, extra_keep=()):
  """Signature inputs to placeholders, then only what the signatures (and `extra_keep`) need.

  Returns:
    (GraphDef with devices cleared, signatures with the placeholders' names, nodes kept alive).
  """
  graph_def, signatures, _ = inputs_to_placeholders(graph_def, signatures)
  keep = saved_model_io.signature_output_nodes(signatures)
  # Inputs no output depends on must stay too: the signature promises them.
  keep += [saved_model_io.node_name(i.name) for s in signatures.values()
           for i in s.inputs.values()]
  keep = list(dict.fromkeys(keep + [k for k in extra_keep if k]))
  return strip(graph_def, keep), signatures, keep


def optimize_frozen(frozen, grappler=True):
  """The serving graph of a FrozenModel: placeholders in, only inference left, devices cleared.

  Args:
    frozen: saved_model_io.FrozenModel (not modified).
    grappler: also run grappler_optimize.

  Returns:
    (new FrozenModel, GraphStats before, GraphStats after).
  """
  before = GraphStats.of(frozen.graph_def)
  extra_keep = [frozen.table_init_op]
  if frozen.saver_def is not None:
    # Kept variables (freezer.py --keep_as_variables): no output reaches the saver's restore and
    # save ops, which loading runs.
    extra_keep += saved_model_io.saver_op_names(frozen.saver_def)
  graph_def, signatures, keep = cut_to_signatures(frozen.graph_def, frozen.signatures,
                                                  extra_keep)
  if grappler:
    graph_def = strip(grappler_optimize(graph_def, keep), keep)
  result = dataclasses.replace(frozen, graph_def=graph_def, signatures=signatures)
  return result, before, GraphStats.of(graph_def)
