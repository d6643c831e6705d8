"""Graphs TensorFlow would refuse, found where they are read: one line naming the file and node.

A GraphDef from a file can be corrupt in ways protobuf parsing does not see (the kinds
TensorFlow's own `cc/saved_model/testdata/fuzz_generated` holds): a Const without its value, a
negative dimension, an attribute of the wrong type, an input naming no node, a cycle; and what
a fuzzer finds (tests/test_fuzz.py): an input or signature tensor naming an output its node
does not have, a node with fewer or more inputs than its op takes, a dtype no release has, a
tensor whose content is shorter or longer than its shape says, a shape whose size overflows or
asks for more memory than a graph can hold, a function argument without a type.
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
_DTYPES = frozenset(lean_tf.types_pb2.DataType.values())  # refs (101...) included
_REF = 100
# A tensor in a graph never holds more than protobuf's 2 GB limit for the whole graph; one that
# says it does (a shape of 2^40 filled from one value) would be allocated whole by TensorFlow
# and by numpy here, from a file of a few bytes.
MAX_TENSOR_BYTES = 2**31 - 1
_MAX_ELEMENTS = 2**62  # past it, TensorFlow's int64 sizes overflow


def _value_fields():
  """DataType enum -> (the TensorProto field holding its values, values per element)."""
  out = {}
  for names, field, per in (
      (('DT_FLOAT',), 'float_val', 1), (('DT_DOUBLE',), 'double_val', 1),
      (('DT_INT32', 'DT_INT16', 'DT_INT8', 'DT_UINT8', 'DT_UINT16', 'DT_QINT8', 'DT_QUINT8',
        'DT_QINT16', 'DT_QUINT16', 'DT_QINT32'), 'int_val', 1),
      (('DT_INT64',), 'int64_val', 1), (('DT_BOOL',), 'bool_val', 1),
      (('DT_STRING',), 'string_val', 1), (('DT_HALF', 'DT_BFLOAT16'), 'half_val', 1),
      (('DT_COMPLEX64',), 'scomplex_val', 2), (('DT_COMPLEX128',), 'dcomplex_val', 2),
      (('DT_UINT32',), 'uint32_val', 1), (('DT_UINT64',), 'uint64_val', 1),
      (('DT_RESOURCE',), 'resource_handle_val', 1), (('DT_VARIANT',), 'variant_val', 1)):
    for name in names:
      out[lean_tf.types_pb2.DataType.Value(name)] = (field, per)
  return out


_VALUE_FIELDS = _value_fields()


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
  unknown size); every tensor passes `tensor_problem` (dtype, size, content length) and every
  type attribute is a TensorFlow type; attributes have the type their op declares and
  required ones are there (with `op_defs`); every input names a node (or, in a function, an
  argument) and, in the graph, an output that node has, and a node has as many data inputs as
  its op takes (with `op_defs`, or its library function); function signatures type every
  argument; node names are unique; and the graph has no cycle but a while loop's back edges.

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
  _check_edges(graph_def, where, op_defs, functions)


def output_counts(graph_def, op_defs=None):
  """A callable: node name -> how many outputs the node has, or None where that is unknown
  (no OpDef for its op, or not a node). Counted from the OpDef (or the library function its op
  calls) and the node's attributes, as TensorFlow counts them."""
  functions = {f.signature.name: f.signature for f in graph_def.library.function}
  nodes = {n.name: n for n in graph_def.node}
  counts = {}

  def count(name):
    if name not in counts:
      node = nodes.get(name)
      counts[name] = None if node is None else _arg_total(
          _op_def(node.op, op_defs, functions), node, 'output_arg')
    return counts[name]
  return count


def _op_def(op, op_defs, functions):
  if op in functions:
    return functions[op]
  return op_defs.get(op) if op_defs is not None else None


def _arg_total(op_def, node, kind):
  """Tensors the args `kind` ('input_arg' or 'output_arg') of `op_def` stand for at `node`;
  None when unknown (no OpDef, an attribute missing)."""
  if op_def is None:
    return None
  total = 0
  for arg in getattr(op_def, kind):
    if arg.number_attr:
      value = _attr_or_default(op_def, node, arg.number_attr)
      if value is None or value.WhichOneof('value') != 'i':
        return None
      total += value.i
    elif arg.type_list_attr:
      value = _attr_or_default(op_def, node, arg.type_list_attr)
      if value is None or value.WhichOneof('value') not in ('list', None):
        return None
      total += len(value.list.type)
    else:
      total += 1
  return total


def _attr_or_default(op_def, node, name):
  if name in node.attr:
    return node.attr[name]
  for attr_def in op_def.attr:
    if attr_def.name == name and attr_def.HasField('default_value'):
      return attr_def.default_value
  return None


def _check_edges(graph_def, where, op_defs, functions):
  """Each input names an output its node has ('x:9' of a node with one output is refused),
  control inputs name no output, and a node has as many data inputs as its op takes."""
  signatures = {name: f.signature for name, f in functions.items()}
  count = output_counts(graph_def, op_defs)
  for node in graph_def.node:
    data = 0
    for graph_input in node.input:
      if graph_input.startswith('^'):
        if ':' in graph_input:
          raise CorruptGraphError('%s is corrupt: node %r takes control input %r, which names '
                                  'an output (a control input names a node)'
                                  % (where, node.name, graph_input))
        continue
      data += 1
      problem = _output_problem(graph_input, count)
      if problem:
        raise CorruptGraphError('%s is corrupt: node %r takes input %r, %s'
                                % (where, node.name, graph_input, problem))
    wanted = _arg_total(_op_def(node.op, op_defs, signatures), node, 'input_arg')
    if wanted is not None and wanted != data:
      raise CorruptGraphError('%s is corrupt: node %r (%s) has %d data inputs, its op takes %d'
                              % (where, node.name, node.op, data, wanted))


def _output_problem(tensor, count):
  """What is wrong with tensor name `tensor` ('node' or 'node:k'), None when nothing is."""
  node, colon, index = tensor.partition(':')
  if colon and not (index.isdigit() and index.isascii()):
    return 'which is not a tensor name (node:index)'
  outputs = count(node)
  if outputs is not None and colon and int(index) >= outputs:
    return 'but node %r has %d output%s' % (node, outputs, '' if outputs == 1 else 's')
  return None


def check_signature_tensors(graph_def, signatures, where, op_defs=None):
  """Every tensor of every signature is `node:index` of a node of `graph_def` that has that
  output, and every TensorInfo's dtype is one TensorFlow has.

  Args:
    graph_def: the graph the signatures name tensors of.
    signatures: signature key -> SignatureDef.
    where: the file, for messages.
    op_defs: {op name: OpDef}, to count outputs; None checks the names and nodes only.

  Raises:
    CorruptGraphError: naming the signature, its key and the tensor.
  """
  count = output_counts(graph_def, op_defs)
  nodes = {n.name for n in graph_def.node}
  for sig_key in sorted(signatures):
    sig = signatures[sig_key]
    for kind, infos in (('input', sig.inputs), ('output', sig.outputs)):
      for key in sorted(infos):
        info = infos[key]
        if info.dtype not in _DTYPES:
          raise CorruptGraphError('%s is corrupt: signature %r %s %r has dtype %d, which is not '
                                  'a TensorFlow type' % (where, sig_key, kind, key, info.dtype))
        for tensor in graphs.info_tensors(info):
          node, colon, index = tensor.partition(':')
          if not colon or not index.isdigit() or not index.isascii() or tensor.startswith('^'):
            raise CorruptGraphError('%s is corrupt: signature %r %s %r names %r, which is not a '
                                    'tensor name (node:index)' % (where, sig_key, kind, key,
                                                                   tensor))
          if node not in nodes:
            raise CorruptGraphError('%s is corrupt: signature %r %s %r names %s, which is not '
                                    'a node of the graph' % (where, sig_key, kind, key, tensor))
          problem = _output_problem(tensor, count)
          if problem:
            raise CorruptGraphError('%s is corrupt: signature %r %s %r names %s, %s'
                                    % (where, sig_key, kind, key, tensor, problem))
    fed = {graphs.tensor_key(t) for t in graphs.signature_tensors(sig, 'inputs')}
    unfed = unfed_placeholders(graph_def, graphs.signature_tensors(sig, 'outputs'), fed)
    if unfed:
      raise CorruptGraphError('%s is corrupt: signature %r needs placeholder %r, which is not '
                              'one of its inputs: no request can feed it'
                              % (where, sig_key, unfed[0]))


def check_tensor_names(graph_def, names, where, what, op_defs=None):
  """Each of `names` is a tensor 'node:k' (or 'node', its output 0) of a node of `graph_def`
  that has that output (counted with `op_defs`, where given).

  Raises:
    CorruptGraphError: naming `what` and the tensor.
  """
  count = output_counts(graph_def, op_defs)
  nodes = {n.name for n in graph_def.node}
  for name in names:
    problem = _output_problem(name, count)
    if problem is None and graphs.node_name(name) not in nodes:
      problem = 'which is not a node of the graph'
    if problem is None and name.startswith('^'):
      problem = 'which is not a tensor name (node:index)'
    if problem:
      raise CorruptGraphError('%s is corrupt: %s %r, %s' % (where, what, name, problem))


_PLACEHOLDER_OPS = frozenset({'Placeholder', 'PlaceholderV2'})


def unfed_placeholders(graph_def, roots, fed=()):
  """The Placeholder nodes (sorted) that computing `roots` (tensor or op names) needs through
  data and control inputs, where no tensor of `fed` ({(node, index)}) stops the walk: what a
  request would have to feed and cannot."""
  nodes = {n.name: n for n in graph_def.node}
  fed = set(fed)
  stack = [graphs.node_name(r) for r in roots
           if r.startswith('^') or ':' not in r or graphs.tensor_key(r) not in fed]
  seen, found = set(), set()
  while stack:
    name = stack.pop()
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    node = nodes[name]
    if node.op in _PLACEHOLDER_OPS:
      found.add(name)
    for graph_input in node.input:
      if graph_input.startswith('^'):
        stack.append(graph_input[1:])
        continue
      source, _, index = graph_input.partition(':')
      if (source, int(index) if index.isdigit() else 0) not in fed:
        stack.append(source)
  return sorted(found)


def check_runs_unfed(graph_def, ops, where, what, fed=()):
  """Each of `ops` (init ops a loader runs) needs no Placeholder but the tensors the loader
  feeds, `fed` (tensor names: a SavedModel's asset paths).

  Raises:
    CorruptGraphError: naming `what`, the op and the placeholder.
  """
  fed = {graphs.tensor_key(t) for t in fed}
  for op in ops:
    unfed = unfed_placeholders(graph_def, [op], fed)
    if unfed:
      raise CorruptGraphError('%s is corrupt: %s %r needs placeholder %r, which a loader does '
                              'not feed' % (where, what, op, unfed[0]))


def check_node_names(graph_def, names, where, what, tensors=False):
  """Each of `names` is the name of a node of `graph_def` exactly (an op such as an init op:
  no '^', no ':k'), or with `tensors`, a node or a tensor 'node:k' of one.

  Raises:
    CorruptGraphError: naming `what` ('the main op') and the missing node.
  """
  nodes = {n.name for n in graph_def.node}
  for name in names:
    node, colon, index = name.partition(':')
    if tensors and colon and index.isdigit() and index.isascii():
      name_ok = node in nodes
    else:
      name_ok = name in nodes
    if not name_ok:
      raise CorruptGraphError('%s is corrupt: %s %r is not a%s of the graph'
                              % (where, what, name, ' tensor' if tensors else ' node'))


def _check_function(function, where, op_defs, functions, cache):
  name = function.signature.name
  problem = _signature_problem(function.signature)
  if problem:
    raise CorruptGraphError('%s is corrupt: function %s: %s' % (where, name, problem))
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


def _signature_problem(signature):
  """What is wrong with a function's signature (an OpDef), None when nothing is: every
  argument named once, with a type TensorFlow has or an attribute of the signature giving it."""
  attrs = {a.name for a in signature.attr}
  seen = set()
  for kind, args in (('argument', signature.input_arg), ('result', signature.output_arg)):
    for arg in args:
      if not arg.name or arg.name in seen:
        return '%s %r is unnamed or named twice' % (kind, arg.name)
      seen.add(arg.name)
      typed_by = [a for a in (arg.type_attr, arg.type_list_attr) if a]
      for attr in typed_by + ([arg.number_attr] if arg.number_attr else []):
        if attr not in attrs:
          return '%s %r takes its type or length from attribute %r, which it lacks' % (
              kind, arg.name, attr)
      if not typed_by and (arg.type not in _DTYPES or arg.type == 0 or arg.type > _REF):
        return '%s %r has no type (dtype %d)' % (kind, arg.name, arg.type)
  return None


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
    if kind == 'type' and value.type not in _DTYPES:
      return 'has attribute %r = dtype %d, which is not a TensorFlow type' % (key, value.type)
    if kind == 'list' and any(t not in _DTYPES for t in value.list.type):
      return 'has attribute %r listing a dtype that is not a TensorFlow type' % key
    if kind == 'shape':
      shapes, tensors = (value.shape,), ()
    elif kind == 'tensor':
      shapes, tensors = (), (value.tensor,)
    elif kind == 'list':
      shapes, tensors = value.list.shape, value.list.tensor
    else:
      continue
    for shape in shapes:
      size = 1
      for dim in shape.dim:
        if dim.size < -1:
          return _negative(dim.size, key)
        size *= max(dim.size, 1)
      if size > _MAX_ELEMENTS:
        return 'has a shape in attribute %r whose size overflows (%s)' % (
            key, 'x'.join(str(d.size) for d in shape.dim))
    for tensor in tensors:
      for dim in tensor.tensor_shape.dim:
        if dim.size < 0:
          return _negative(dim.size, key)
      problem = tensor_problem(tensor)
      if problem:
        return 'has a tensor in attribute %r that %s' % (key, problem)
  if op in _PLACEHOLDER_OPS and 'shape' in attrs and '_output_shapes' in attrs:
    declared, recorded = attrs['shape'].shape, attrs['_output_shapes'].list.shape
    if (not declared.unknown_rank and recorded and not recorded[0].unknown_rank and
        [d.size for d in declared.dim] != [d.size for d in recorded[0].dim]):
      return 'has _output_shapes %s, its shape attribute says %s' % (
          shape_text(recorded[0]), shape_text(declared))
  if op == 'Const':
    if 'value' not in attrs or attrs['value'].WhichOneof('value') != 'tensor':
      return 'has no value'
    if 'dtype' in attrs and attrs['dtype'].WhichOneof('value') == 'type':
      declared, stored = attrs['dtype'].type, attrs['value'].tensor.dtype
      if declared != stored:
        return 'holds a %s value but its dtype attribute says %s' % (
            lean_tf.as_dtype(stored).name, lean_tf.as_dtype(declared).name)
  if op in _CALL_OPS and 'f' in attrs:
    problem = _call_types_problem(attrs, functions.get(attrs['f'].func.name))
    if problem:
      return problem
  if op_defs is not None and op not in functions:
    rules = cache[op] if op in cache else _attr_rules(op_defs, op, cache)
    if rules:
      return _attrs_problem(node, attrs, rules)
  return None


_CALL_OPS = frozenset({'PartitionedCall', 'StatefulPartitionedCall'})


def _call_types_problem(attrs, function):
  """What is wrong with a call's Tin and Tout against the function it calls (None when
  nothing is, or when the function's arguments take their types from attributes): TensorFlow
  runs such a call and fails every request ('Output 0 of type float does not match declared
  output type int32')."""
  if function is None:
    return None
  for attr, args in (('Tin', function.signature.input_arg),
                     ('Tout', function.signature.output_arg)):
    if attr not in attrs or any(a.type_attr or a.type_list_attr or a.number_attr
                                for a in args):
      continue
    declared = list(attrs[attr].list.type)
    expected = [a.type for a in args]
    if declared != expected:
      return 'calls %s with %s %s, where the function\'s %s are %s' % (
          function.signature.name, attr, _types_text(declared),
          'arguments' if attr == 'Tin' else 'results', _types_text(expected))
  return None


def _types_text(types):
  return '[%s]' % ', '.join(lean_tf.as_dtype(t).name for t in types)


def dtype_and_size(dtype, sizes):
  """(problem, elements) of a stored tensor's declared dtype and dimension sizes: problem is a
  phrase ('has dtype -7, which is not a TensorFlow type', 'has a negative dimension (-2)', 'has a
  shape whose size overflows') or None; elements is their product (0 with a problem), checked
  against overflow as it is multiplied, so nothing is allocated from it unchecked."""
  if dtype not in _DTYPES or dtype == 0 or dtype > _REF:
    return 'has dtype %d, which is not a TensorFlow type' % dtype, 0
  elements = 1
  for size in sizes:
    if size < 0:
      return 'has a negative dimension (%d)' % size, 0
    elements *= size
    if elements > _MAX_ELEMENTS:
      return 'has a shape whose size overflows', 0
  return None, elements


def tensor_problem(tensor):
  """What is wrong with a TensorProto, None when nothing is: a dtype TensorFlow has (not a
  reference); a size that does not overflow, nor pass MAX_TENSOR_BYTES once filled; content
  of exactly its shape's bytes (`tensor_content`), or no more values than elements.

  A phrase to follow 'tensor ...' ('holds 12 bytes of content, its shape [4] of float needs
  16')."""
  dtype = tensor.dtype
  problem, elements = dtype_and_size(dtype, (d.size for d in tensor.tensor_shape.dim))
  if problem:
    if problem.endswith('overflows'):
      problem += ' (%s)' % shape_text(tensor.tensor_shape)
    return problem
  item = lean_tf.ITEM_BYTES.get(dtype)
  if elements * (item or 1) > MAX_TENSOR_BYTES:
    return 'has shape %s of %s, %d bytes: past the %d a graph can hold' % (
        shape_text(tensor.tensor_shape), lean_tf.as_dtype(dtype).name, elements * (item or 1),
        MAX_TENSOR_BYTES)
  content = len(tensor.tensor_content)
  if content:
    if item is not None and content != elements * item:
      return 'holds %d bytes of content, its shape %s of %s needs %d' % (
          content, shape_text(tensor.tensor_shape), lean_tf.as_dtype(dtype).name,
          elements * item)
    return None
  field, per = _VALUE_FIELDS.get(dtype, (None, 1))
  if field is not None:
    values = len(getattr(tensor, field))
    if values > elements * per:
      return 'holds %d values, its shape %s has %d elements' % (
          values // per, shape_text(tensor.tensor_shape), elements)
  return None


def shape_text(shape):
  """'[2,3]' of a TensorShapeProto."""
  return '[%s]' % ','.join(str(d.size) for d in shape.dim)


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
