"""A saver over chosen variables and tables, read from a graph's own saver.

The structure graph's own saver says which checkpoint tensor (and which slice of it) each
variable and table is restored from: its RestoreV2 ops list names and slice specs, and the
Assign / AssignVariableOp / LookupTableImportV2 ops that consume them name the targets. That
mapping is read here, cut down to what the serving graph keeps, and rebuilt as a new saver
over only those tensors.
"""

import copy
import dataclasses
from typing import List

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import saver_pb2
from freezerlib.formats import checkpoint_index
from freezerlib.transforms import tables

_RESTORE_OPS = frozenset({'RestoreV2'})
_ASSIGN_OPS = frozenset({'Assign', 'AssignVariableOp'})
_IMPORT_OPS = frozenset({'LookupTableImportV2', 'LookupTableImport'})
VARIABLE_OPS = frozenset({'VariableV2', 'Variable', 'VarHandleOp'})
_STATIC_INIT_OPS = frozenset({'InitializeTableV2', 'InitializeTable',
                              'InitializeTableFromTextFileV2', 'InitializeTableFromTextFile',
                              'LookupTableImportV2', 'LookupTableImport'})


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
  node = nodes.get(graphs.node_name(name))
  if node is None or node.op != 'Const':
    raise errors.UserError('the saver reads tensor names from %s, which is not a constant' % name)
  try:
    return lean_tf.string_values(node.attr['value'].tensor)
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.UserError('the saver reads tensor names from %s, which does not hold names (%s)'
                          % (name, e)) from e


def restores_of_saver(graph_def, saver_def, where):
  """Reads what the saver `saver_def` restores into which variable or table.

  Raises:
    errors.UserError: the graph has no saver or one this cannot read.
  """
  if not saver_def.restore_op_name:
    raise errors.UserError('%s has no saver (saver_def): nothing says how its variables map to '
                          'checkpoint tensors' % where)
  restore_op = graphs.node_name(saver_def.restore_op_name)
  try:
    sub = graphs.extract_sub_graph(graph_def, [restore_op])
  except KeyError as e:
    raise errors.UserError('%s: its saver\'s restore op %s is not in the graph'
                           % (where, restore_op)) from e
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
    while name in nodes and nodes[name].op in graphs.IDENTITY_OPS and seen < 20:
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
    raise errors.UserError('%s: cannot tell which variables its saver restores' % where)
  return result


def _state_node(nodes, tensor):
  name = graphs.node_name(tensor)
  while name in nodes and nodes[name].op in graphs.IDENTITY_OPS:
    name = graphs.node_name(nodes[name].input[0])
  return name


def wants(restores, graph_def):
  """The checkpoint tensors `restores` read, as checkpoint_index.Want (specs merged per name)."""
  nodes = {n.name: n for n in graph_def.node}
  by_name = {}
  for r in restores:
    for name, spec, dtype in zip(r.names, r.specs, r.dtypes):
      want = by_name.setdefault(name, checkpoint_index.Want(name, dtype))
      want.specs.append(spec)
      target = nodes.get(r.target)
      if not spec and r.op.op in _ASSIGN_OPS and target is not None and 'shape' in target.attr:
        shape = target.attr['shape'].shape
        if not shape.unknown_rank and all(d.size >= 0 for d in shape.dim):
          want.shape = [d.size for d in shape.dim]
  return list(by_name.values())


def node_def(name, op, inputs=(), **attrs):
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
  scope = graphs.unique_scope('save', taken)
  nodes = {n.name: n for n in graph_def.node}
  names, specs, dtypes, reads = [], [], [], []
  new = [_string_const(scope + '/filename/input', 'model'),
         node_def(scope + '/filename', 'PlaceholderWithDefault', [scope + '/filename/input'],
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
      export = node_def('%s/export_%d' % (scope, i), 'LookupTableExportV2', [r.target],
                     Tkeys=r.dtypes[0], Tvalues=r.dtypes[1])
      new.append(export)
      reads.extend([export.name + ':0', export.name + ':1'])
    elif target.op == 'VarHandleOp':
      read = node_def('%s/read_%d' % (scope, i), 'ReadVariableOp', [r.target], dtype=r.dtypes[0])
      new.append(read)
      reads.append(read.name + ':0')
    else:
      reads.append(r.target + ':0')
  new += [_string_const(scope + '/RestoreV2/tensor_names', names),
          _string_const(scope + '/RestoreV2/shape_and_slices', specs),
          node_def(scope + '/RestoreV2', 'RestoreV2',
                [filename, scope + '/RestoreV2/tensor_names',
                 scope + '/RestoreV2/shape_and_slices'],
                dtypes=dtypes)]
  new += assigns
  new.append(node_def(scope + '/restore_all', 'NoOp', ['^' + a.name for a in assigns]))
  new += [_string_const(scope + '/SaveV2/tensor_names', names),
          _string_const(scope + '/SaveV2/shape_and_slices', specs),
          node_def(scope + '/SaveV2', 'SaveV2',
                [filename, scope + '/SaveV2/tensor_names', scope + '/SaveV2/shape_and_slices']
                + reads, dtypes=dtypes),
          node_def(scope + '/control_dependency', 'Identity', [filename, '^' + scope + '/SaveV2'],
                T=lean_tf.DType(lean_tf.types_pb2.DT_STRING))]
  graph_def.node.extend(new)
  return saver_pb2.SaverDef(
      filename_tensor_name=filename + ':0',
      save_tensor_name=scope + '/control_dependency:0',
      restore_op_name=scope + '/restore_all', max_to_keep=5, sharded=False,
      keep_checkpoint_every_n_hours=10000.0, version=saver_pb2.SaverDef.V2)


def owned_nodes(graph_def, saver_def):
  """Names of the nodes a saver is made of: those under its restore op's scope (`save/` for
  add_saver's and tf.compat.v1.train.Saver's savers), not the variables and tables it
  restores. Empty for no saver."""
  if saver_def is None or not saver_def.restore_op_name:
    return set()
  scope = graphs.node_name(saver_def.restore_op_name).rpartition('/')[0]
  if not scope:
    return {graphs.node_name(saver_def.restore_op_name)}
  return {n.name for n in graph_def.node if n.name.startswith(scope + '/')}


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
