"""Signature inputs become placeholders: the reader's outputs are cut from what feeds them."""

from absl import logging

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use


def inputs_to_placeholders(graph_def, signatures, op_defs=None, where='the graph'):
  """Makes every signature input that is not a Placeholder into one, where that is sound.

  A reader output (`IteratorGetNext:3`) or an intermediate tensor (`x2:0`) becomes a Placeholder
  of the signature's dtype and shape, named after its signature key where that name is free.
  Every consumer of that tensor is rewired to the placeholder, so what fed it (dataset,
  iterator, parser) is left without consumers and is stripped later.

  A sparse input (a coo_sparse TensorInfo: the reader's `DeserializeSparse_k` outputs) becomes
  three placeholders, KEY/indices (int64 [N, rank]), KEY/values and KEY/dense_shape (int64
  [rank]); a composite one (a RaggedTensor: `RaggedTensorFromVariant` outputs) one placeholder
  per component, KEY/values and KEY/row_splits (KEY/row_splits_1, ... for more ragged
  dimensions; KEY/component_k for other composites). The TensorInfo keeps its encoding with the
  placeholders' names, so clients still send a SparseTensor (or RaggedTensor) under KEY. Their
  dtypes and shapes come from the TensorInfo, which states them: no shape inference is needed.

  An input that another signature computes from its own inputs (`x:0` of half_plus_two's
  `serving_default`, which `classify_x_to_y` derives from `tf_example:0`) stays as it is:
  cutting it would break that signature, and a Session (TF Serving's included) can feed any
  tensor.

  Every TensorInfo is set to what the graph really has (signatures can be wrong). That takes
  TensorFlow's shape inference, except where the graph states it: a Placeholder's attributes,
  an output's dtype from its OpDef. With `op_defs` (the MetaGraph's stripped op list) and only
  Placeholder or sparse inputs, TensorFlow is not loaded: input TensorInfos come from the
  placeholders (or the sparse TensorInfos), output dtypes from the OpDefs, and output shapes
  stay as the signature gives them.

  Args:
    graph_def: GraphDef (not modified).
    signatures: key -> SignatureDef (not modified).
    op_defs: optional OpList of the ops in `graph_def`; None: always use shape inference.
    where: the graph's file, for messages.

  Returns:
    (new GraphDef, new signatures with the placeholders' names,
     dict old tensor name -> placeholder tensor name).

  Raises:
    errors.UserError: TensorFlow does not import the graph (shape inference needs it).
  """
  nodes = {n.name: n for n in graph_def.node}
  taken = set(nodes)
  computed = {key: graphs.computed_tensors(graph_def, sig) for key, sig in signatures.items()}
  types = _TensorTypes(graph_def, op_defs, where)
  replaced = {}   # (node, index) -> placeholder node name
  kept = set()
  new_nodes = []
  signatures = {k: copy_signature(v) for k, v in signatures.items()}
  for sig_key in sorted(signatures):
    sig = signatures[sig_key]
    for input_key in sorted(sig.inputs):
      info = sig.inputs[input_key]
      for part in components(info):
        key = graphs.tensor_key(part.info.name)
        node = nodes[key[0]]
        if (node.op == 'Placeholder' and key[1] == 0) or key in kept:
          continue
        if key not in replaced:
          users = sorted(k for k, c in computed.items() if key in c or (key[0], None) in c)
          if users:
            kept.add(key)
            logging.warning('signature %r input %r (%s) stays an intermediate tensor: '
                            'signature %r computes it', sig_key, input_key, part.info.name,
                            users[0])
            continue
          base = graphs.name_for_key(input_key)
          name = graphs.unique_name(base + '/' + part.role if part.role else base, taken)
          if not part.role:
            types.fix(part.info, exact=True)
          placeholder = lean_tf.NodeDef(name=name, op='Placeholder')
          placeholder.attr['dtype'].type = part.info.dtype
          placeholder.attr['shape'].shape.CopyFrom(part.info.tensor_shape)
          new_nodes.append(placeholder)
          replaced[key] = name
          logging.info('signature %r input %r%s: %s -> placeholder %s', sig_key, input_key,
                       ' (%s)' % part.role if part.role else '', part.info.name, name)
        part.set_name(replaced[key] + ':0')
  # An output that is a replaced input (a sparse output sharing its input's dense shape) is
  # the placeholder now.
  for sig in signatures.values():
    for info in sig.outputs.values():
      for part in components(info):
        key = graphs.tensor_key(part.info.name)
        if key in replaced:
          part.set_name(replaced[key] + ':0')
  # Every TensorInfo states what the graph really has, so loaders that build feeds from the
  # signature (tf.saved_model.load) work on models whose signatures were wrong.
  for sig in signatures.values():
    for info in list(sig.inputs.values()) + list(sig.outputs.values()):
      if (info.WhichOneof('encoding') == 'name' and
          info.name not in {v + ':0' for v in replaced.values()}):
        types.fix(info, exact=False)
  out = graph_pb2.GraphDef()
  out.CopyFrom(graph_def)
  for node in out.node:
    if node.op == 'Placeholder':
      # Old graphs (half_plus_three) write an unknown shape as `shape {}`, which the graph's
      # producer version makes mean "unknown" but which reads as a scalar once re-dumped with a
      # current version: state what the graph really has.
      node.attr['shape'].shape.CopyFrom(placeholder_shape(node, graph_def.versions.producer))
    for i, graph_input in enumerate(node.input if replaced else ()):
      key = graphs.input_key(graph_input)
      if key in replaced:
        node.input[i] = replaced[key]
      elif graph_input.startswith('^') and (graph_input[1:], 0) in replaced:
        # A control edge on a node whose output 0 is now fed: depend on the placeholder instead.
        node.input[i] = '^' + replaced[(graph_input[1:], 0)]
  out.node.extend(new_nodes)
  _fetch_through_identities(out, signatures, taken)
  return out, signatures, {'%s:%d' % k: v + ':0' for k, v in replaced.items()}


def _fetch_through_identities(graph_def, signatures, taken):
  """Output tensors that are also fed (a sparse output sharing its input's indices) get an
  Identity each: TensorFlow's C++ session, TF Serving's, refuses to feed and fetch one tensor
  in the same run. In place."""
  fed = {graphs.tensor_key(t) for s in signatures.values()
         for t in graphs.signature_tensors(s, 'inputs')}
  if not fed:
    return
  nodes = None  # name -> node, built when an output is fed
  made = {}
  for sig in signatures.values():
    for out_key in sorted(sig.outputs):
      for part in components(sig.outputs[out_key]):
        key = graphs.tensor_key(part.info.name)
        if key not in fed:
          continue
        if key not in made:
          base = graphs.name_for_key(out_key)
          name = graphs.unique_name(base + '/' + part.role if part.role else base + '/output',
                                    taken)
          identity = lean_tf.NodeDef(name=name, op='Identity', input=['%s:%d' % key])
          if nodes is None:
            nodes = {n.name: n for n in graph_def.node}
          source = nodes.get(key[0])
          dtype = (source.attr['dtype'].type if source is not None and 'dtype' in source.attr
                   else part.info.dtype)
          identity.attr['T'].type = graphs.base_dtype(dtype)
          graph_def.node.append(identity)
          made[key] = name
          logging.info('output %r: %s is also fed; fetched through %s', out_key,
                       part.info.name, name)
        part.set_name(made[key] + ':0')


_RAGGED_TENSOR_SPEC = 3  # struct.proto's TypeSpecProto.RAGGED_TENSOR_SPEC


class Component:
  """One tensor of a signature input: `info` states its name, dtype and shape; `role` is ''
  for a dense input, else the placeholder's name under the input's key ('indices', ...)."""

  def __init__(self, role, info, set_name):
    self.role = role
    self.info = info
    self.set_name = set_name


def _shape(dims):
  return lean_tf.tensor_shape_pb2.TensorShapeProto(
      dim=[lean_tf.tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def components(info):
  """The tensors of a signature input, each with its dtype and shape, as Components.

  A dense TensorInfo is one Component (the TensorInfo itself). A coo_sparse one is three:
  indices (int64 [-1, rank]), values (its dtype, [-1]) and dense_shape (int64 [rank]), rank
  read from its shape (-1 when unknown). A composite one is its components, named values and
  row_splits (row_splits_1, ...) for a RaggedTensor, component_k otherwise. Setting a
  Component's name (`set_name`) renames that tensor in `info`.
  """
  encoding = info.WhichOneof('encoding')
  if encoding == 'name':
    def set_name(name):
      info.name = name
    return [Component('', info, set_name)]
  if encoding == 'coo_sparse':
    coo = info.coo_sparse
    shape = info.tensor_shape
    rank = -1 if shape.unknown_rank or not shape.dim else len(shape.dim)
    int64 = lean_tf.types_pb2.DT_INT64
    parts = []
    for role, field, dtype, dims in (
        ('indices', 'indices_tensor_name', int64, [-1, rank]),
        ('values', 'values_tensor_name', graphs.base_dtype(info.dtype), [-1]),
        ('dense_shape', 'dense_shape_tensor_name', int64, [rank])):
      part = lean_tf.meta_graph_pb2.TensorInfo(name=getattr(coo, field), dtype=dtype,
                                               tensor_shape=_shape(dims))

      def set_name(name, field=field, part=part):
        setattr(coo, field, name)
        part.name = name
      parts.append(Component(role, part, set_name))
    return parts
  if encoding == 'composite_tensor':
    spec = info.composite_tensor.type_spec
    ragged = (spec.type_spec_class_name == 'RaggedTensorSpec' or
              spec.type_spec_class == _RAGGED_TENSOR_SPEC)
    parts = []
    for i, component in enumerate(info.composite_tensor.components):
      if ragged:
        role = 'values' if i == 0 else ('row_splits' if i == 1 else 'row_splits_%d' % (i - 1))
      else:
        role = 'component_%d' % i

      def set_name(name, component=component):
        component.name = name
      parts.append(Component(role, component, set_name))
    return parts
  return []


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

  def __init__(self, graph_def, op_defs, where):
    self._graph_def = graph_def
    self._where = where
    self._nodes = {n.name: n for n in graph_def.node}
    self._op_defs = None
    if op_defs is not None:
      self._op_defs = {o.name: o for o in op_defs.op}
      self._op_defs.update({f.signature.name: f.signature for f in graph_def.library.function})
    self._graph = None

  def _imported(self):
    if self._graph is None:
      self._graph = _imported(self._graph_def, self._where)
    return self._graph

  def fix(self, info, exact):
    """Sets a TensorInfo's dtype and shape to what the graph's tensor really has.

    Signatures can be wrong (half_plus_three's call tf_example:0 a float scalar); a placeholder
    made from such a TensorInfo would break the graph. Where the graph does not know the
    shape, the shape is left unknown rather than trusted. Without shape inference (op_defs
    given, `exact` False, not a Placeholder), only the dtype is checked.
    """
    node_name, index = graphs.tensor_key(info.name)
    node = self._nodes[node_name]
    if self._graph is None and self._op_defs is not None:
      if node.op == 'Placeholder' and index == 0:
        info.dtype = graphs.base_dtype(node.attr['dtype'].type)
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
      return graphs.base_dtype(types[index - position]) or None
    position += len(types)
  return None


def _imported(graph_def, where):
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(graph_def, name='')
    except (ValueError, TypeError, tf.errors.OpError) as e:
      # What formats.graph_check does not know to look for (an op this TensorFlow lacks, ...).
      raise errors.UserError('TensorFlow cannot import the graph of %s: %s'
                             % (where, errors.tf_error_message(e))) from e
  return graph


def copy_signature(sig):
  copy = meta_graph_pb2.SignatureDef()
  copy.CopyFrom(sig)
  return copy
