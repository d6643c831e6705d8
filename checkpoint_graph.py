"""A serving graph that restores its variables and tables from a checkpoint.

The structure graph's own saver says which checkpoint tensor (and which slice of it) each
variable and table is restored from: its RestoreV2 ops list names and slice specs, and the
Assign / AssignVariableOp / LookupTableImportV2 ops that consume them name the targets. That
mapping is read here, cut down to what the serving graph keeps, and rebuilt as a new saver
over only those tensors.
"""

import copy
import dataclasses
from typing import List

import checkpoints
import graph_edit
import lean_tf
from lean_tf import saver_pb2
import saved_model_io
import tables
import utils

_RESTORE_OPS = frozenset({'RestoreV2'})
_ASSIGN_OPS = frozenset({'Assign', 'AssignVariableOp'})
_IMPORT_OPS = frozenset({'LookupTableImportV2', 'LookupTableImport'})
_VARIABLE_OPS = frozenset({'VariableV2', 'Variable', 'VarHandleOp'})
_STATIC_INIT_OPS = frozenset({'InitializeTableV2', 'InitializeTable',
                              'InitializeTableFromTextFileV2', 'InitializeTableFromTextFile',
                              'LookupTableImportV2', 'LookupTableImport'})
_PASS_THROUGH = frozenset({'Identity', 'RefIdentity'})


@dataclasses.dataclass
class Restore:
  """How one variable or table is restored.

  Attributes:
    target: the variable or table node.
    op: the structure's NodeDef that writes it (AssignVariableOp, Assign, LookupTableImportV2).
    names: checkpoint tensor names (one for a variable, keys and values for a table).
    specs: slice spec of each ('' for a whole tensor).
    dtypes: tf.DType (lean_tf.DType) of each.
  """
  target: str
  op: object
  names: List[str]
  specs: List[str]
  dtypes: List[object]


def _const(nodes, name):
  node = nodes.get(saved_model_io.node_name(name))
  if node is None or node.op != 'Const':
    raise utils.UserError('the saver reads tensor names from %s, which is not a constant' % name)
  try:
    return lean_tf.string_values(node.attr['value'].tensor)
  except (ValueError, UnicodeDecodeError) as e:
    raise utils.UserError('the saver reads tensor names from %s, which does not hold names (%s)'
                          % (name, e)) from e


def restores_of_saver(graph_def, saver_def, where):
  """Reads what the saver `saver_def` restores into which variable or table.

  Raises:
    utils.UserError: the graph has no saver or one this cannot read.
  """
  if not saver_def.restore_op_name:
    raise utils.UserError('%s has no saver (saver_def): nothing says how its variables map to '
                          'checkpoint tensors' % where)
  restore_op = saved_model_io.node_name(saver_def.restore_op_name)
  try:
    sub = lean_tf.extract_sub_graph(graph_def, [restore_op])
  except KeyError as e:
    raise utils.UserError('%s: its saver\'s restore op %s is not in the graph' % (where, restore_op)) from e
  nodes = {n.name: n for n in sub.node}
  sources = {}  # (restore node, output index) -> (name, spec, dtype)
  for node in sub.node:
    if node.op in _RESTORE_OPS:
      names = _const(nodes, node.input[1])
      specs = _const(nodes, node.input[2])
      dtypes = [lean_tf.as_dtype(t) for t in node.attr['dtypes'].list.type]
      for i, (name, spec, dtype) in enumerate(zip(names, specs, dtypes)):
        sources[(node.name, i)] = (name, spec, dtype)

  def source_of(tensor):
    name, _, index = tensor.partition(':')
    seen = 0
    while name in nodes and nodes[name].op in _PASS_THROUGH and seen < 20:
      name, _, index = nodes[name].input[0].partition(':')
      seen += 1
    return sources.get((name, int(index or 0)))

  result = []
  for node in sub.node:
    if node.op in _ASSIGN_OPS:
      src = source_of(node.input[1])
      if src:
        result.append(Restore(_state_node(nodes, node.input[0]), node, [src[0]], [src[1]],
                              [src[2]]))
    elif node.op in _IMPORT_OPS:
      keys, values = source_of(node.input[1]), source_of(node.input[2])
      if keys and values:
        result.append(Restore(_state_node(nodes, node.input[0]), node,
                              [keys[0], values[0]], [keys[1], values[1]], [keys[2], values[2]]))
  if not result and sources:
    raise utils.UserError('%s: cannot tell which variables its saver restores' % where)
  return result


def _state_node(nodes, tensor):
  name = saved_model_io.node_name(tensor)
  while name in nodes and nodes[name].op in _PASS_THROUGH:
    name = saved_model_io.node_name(nodes[name].input[0])
  return name


def wants(restores, graph_def):
  """The checkpoint tensors `restores` read, as checkpoints.Want (specs merged per name)."""
  nodes = {n.name: n for n in graph_def.node}
  by_name = {}
  for r in restores:
    for name, spec, dtype in zip(r.names, r.specs, r.dtypes):
      want = by_name.setdefault(name, checkpoints.Want(name, dtype))
      want.specs.append(spec)
      target = nodes.get(r.target)
      if not spec and r.op.op in _ASSIGN_OPS and target is not None and 'shape' in target.attr:
        shape = target.attr['shape'].shape
        if not shape.unknown_rank and all(d.size >= 0 for d in shape.dim):
          want.shape = [d.size for d in shape.dim]
  return list(by_name.values())


def _unique_scope(base, taken):
  scope, i = base, 1
  while any(n == scope or n.startswith(scope + '/') for n in taken):
    scope = '%s_%d' % (base, i)
    i += 1
  return scope


def _node(name, op, inputs=(), **attrs):
  node = lean_tf.NodeDef(name=name, op=op, input=list(inputs))
  for key, value in attrs.items():
    if isinstance(value, list):
      node.attr[key].list.type.extend(v.as_datatype_enum for v in value)
    elif isinstance(value, bool):
      node.attr[key].b = value
    else:  # a tf.DType or lean_tf.DType
      node.attr[key].type = value.as_datatype_enum
  return node


def _string_const(name, values):
  node = lean_tf.NodeDef(name=name, op='Const')
  node.attr['dtype'].type = lean_tf.types_pb2.DT_STRING
  node.attr['value'].tensor.CopyFrom(lean_tf.string_tensor(values))
  return node


def add_saver(graph_def, restores):
  """Adds to `graph_def` a V2 saver over exactly `restores`; returns its SaverDef.

  The restore op runs one RestoreV2 over every tensor, then the structure's own kind of assign
  or import op for each target; the save op reads the same tensors back (ReadVariableOp for
  resource variables, LookupTableExportV2 for tables) with the same names and slices.
  """
  taken = {n.name for n in graph_def.node}
  scope = _unique_scope('save', taken)
  nodes = {n.name: n for n in graph_def.node}
  names, specs, dtypes, reads = [], [], [], []
  new = [_string_const(scope + '/filename/input', 'model'),
         _node(scope + '/filename', 'PlaceholderWithDefault', [scope + '/filename/input'],
               dtype=lean_tf.DType(lean_tf.types_pb2.DT_STRING))]
  new[-1].attr['shape'].shape.SetInParent()
  filename = scope + '/filename'
  assigns = []
  for i, r in enumerate(restores):
    first = len(names)
    names.extend(r.names)
    specs.extend(r.specs)
    dtypes.extend(r.dtypes)
    op = copy.deepcopy(r.op)
    op.name = '%s/restore_%d' % (scope, i)
    op.device = ''
    del op.input[:]
    op.input.append(r.target)
    op.input.extend('%s/RestoreV2:%d' % (scope, first + k) for k in range(len(r.names)))
    for key in [k for k in op.attr if k.startswith('_')]:
      del op.attr[key]
    assigns.append(op)
    target = nodes[r.target]
    if r.op.op in _IMPORT_OPS:
      export = _node('%s/export_%d' % (scope, i), 'LookupTableExportV2', [r.target],
                     Tkeys=r.dtypes[0], Tvalues=r.dtypes[1])
      new.append(export)
      reads.extend([export.name + ':0', export.name + ':1'])
    elif target.op == 'VarHandleOp':
      read = _node('%s/read_%d' % (scope, i), 'ReadVariableOp', [r.target], dtype=r.dtypes[0])
      new.append(read)
      reads.append(read.name + ':0')
    else:
      reads.append(r.target + ':0')
  new += [_string_const(scope + '/RestoreV2/tensor_names', names),
          _string_const(scope + '/RestoreV2/shape_and_slices', specs),
          _node(scope + '/RestoreV2', 'RestoreV2',
                [filename, scope + '/RestoreV2/tensor_names', scope + '/RestoreV2/shape_and_slices'],
                dtypes=dtypes)]
  new += assigns
  new.append(_node(scope + '/restore_all', 'NoOp', ['^' + a.name for a in assigns]))
  new += [_string_const(scope + '/SaveV2/tensor_names', names),
          _string_const(scope + '/SaveV2/shape_and_slices', specs),
          _node(scope + '/SaveV2', 'SaveV2',
                [filename, scope + '/SaveV2/tensor_names', scope + '/SaveV2/shape_and_slices']
                + reads, dtypes=dtypes),
          _node(scope + '/control_dependency', 'Identity', [filename, '^' + scope + '/SaveV2'],
                T=lean_tf.DType(lean_tf.types_pb2.DT_STRING))]
  graph_def.node.extend(new)
  return saver_pb2.SaverDef(
      filename_tensor_name=filename + ':0',
      save_tensor_name=scope + '/control_dependency:0',
      restore_op_name=scope + '/restore_all', max_to_keep=5, sharded=False,
      keep_checkpoint_every_n_hours=10000.0, version=saver_pb2.SaverDef.V2)


def static_table_inits(graph_def, table_names, exclude):
  """Nodes of `graph_def` that initialise the static tables among `table_names`."""
  nodes = {n.name: n for n in graph_def.node}
  found = []
  for node in graph_def.node:
    if (node.op in _STATIC_INIT_OPS and node.name not in exclude and node.input and
        _state_node(nodes, node.input[0]) in table_names and
        nodes[_state_node(nodes, node.input[0])].op in tables.HASH_TABLE_OPS):
      found.append(node.name)
  return found


@dataclasses.dataclass
class ServingGraph:
  """What optimize_from_ckpt.py writes: graph, signatures, saver, init op (or None), and the
  restores its saver performs."""
  graph_def: object
  signatures: dict
  saver_def: object
  main_op: str
  restores: List[Restore]


def serving_graph(graph_def, signatures, saver_def, where, op_defs=None):
  """Cuts the structure graph to serving and gives it a saver over what it keeps.

  Args:
    graph_def: the structure graph (not modified).
    signatures: signature key -> SignatureDef to serve.
    saver_def: the structure's SaverDef (how its variables map to checkpoint tensors).
    where: the structure's path, for messages.
    op_defs: the structure's OpList, for graph_edit.inputs_to_placeholders.

  Returns:
    ServingGraph.

  Raises:
    utils.UserError: a variable the outputs need that the saver does not restore.
  """
  restores = restores_of_saver(graph_def, saver_def, where)
  cut, signatures, _ = graph_edit.inputs_to_placeholders(graph_def, signatures, op_defs)
  keep = saved_model_io.signature_output_nodes(signatures)
  keep += [saved_model_io.node_name(i.name) for s in signatures.values()
           for i in s.inputs.values()]
  kept = lean_tf.reachable(cut, list(dict.fromkeys(keep)))
  # Static tables are not in checkpoints: their own initialisers (constants, asset files) go
  # into the main op.
  restore_ops = {r.op.name for r in restores}
  inits = static_table_inits(cut, kept, restore_ops)
  keep += inits
  stripped = graph_edit.strip(cut, list(dict.fromkeys(keep)))
  kept = {n.name for n in stripped.node}
  needed = [r for r in restores if r.target in kept]
  restored = {r.target for r in needed}
  unrestored = sorted(n.name for n in stripped.node if n.op in _VARIABLE_OPS and
                      n.name not in restored)
  if unrestored:
    raise utils.UserError('%s: the saver does not restore %s, which the signatures need'
                          % (where, ', '.join(unrestored)))
  mutable = sorted(n.name for n in stripped.node
                   if n.op in tables.MUTABLE_TABLE_OPS | tables.DENSE_TABLE_OPS
                   and n.name not in restored)
  if mutable:
    raise utils.UserError('%s: the saver does not restore table %s, which the signatures read '
                          '(it would serve empty)' % (where, ', '.join(mutable)))
  saver = add_saver(stripped, needed)
  main_op = None
  if inits:
    main_op = _unique_scope('freezer/init_tables', {n.name for n in stripped.node})
    stripped.node.append(_node(main_op, 'NoOp', ['^' + i for i in inits]))
  return ServingGraph(stripped, signatures, saver, main_op, needed)
