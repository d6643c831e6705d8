"""Where a signature input goes: the tables it is looked up in, the parser it feeds, the
embedding it indexes. Input generation draws ids from what it finds.

A tensor is followed forward through ops that pass its values on unchanged (Identity, Reshape,
Cast, SparseFillEmptyRows' values, a select between it and something else, ...), into the
library functions that TF2 SavedModels call (StatefulPartitionedCall: argument k is input k),
and stops at what it finds:
- a table lookup (LookupTableFindV2's keys): the table, whose keys are known ids;
- a tf.Example parser (ParseExample, ParseExampleV2): the features it reads, each followed in
  turn from the parser's output;
- the indices of a gather (GatherV2, ResourceGather): the first dimension of what is gathered
  (a variable's shape, a constant's), the ids valid there: an embedding of 100 rows takes ids
  0 to 99 and fails on any other;
- a range check against a constant (Less(ids, N)): ids below N;
- the partition arithmetic of a partitioned embedding (embedding_lookup's FloorDiv or
  FloorMod of the ids, then DynamicPartition): ids below the partitions' rows together. An
  identity feature column's ids reach its partitioned embedding only this way (no gather
  takes them as they are), and one past the rows makes a partition index no partition has
  (`partitions[1] = -1387410735 is not in [0, 2)`).
A table or variable handle inside a function is followed back to the graph node that makes it
(through the call's inputs).
"""

import collections
import dataclasses
from typing import Dict, List, Optional

import numpy as np

from freezerlib.core import graphs
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.transforms import tables

# op -> {input position: output indices} through which values pass unchanged. Ops not named
# here pass nothing (a hash, an arithmetic op: the values that reach a table are others).
_ALL = (0, 1, 2, 3)
_PASS = {
    'Identity': {0: (0,)}, 'StopGradient': {0: (0,)}, 'Snapshot': {0: (0,)},
    'Reshape': {0: (0,)}, 'ExpandDims': {0: (0,)}, 'Squeeze': {0: (0,)},
    'Cast': {0: (0,)}, 'Tile': {0: (0,)}, 'Unique': {0: (0,)}, 'UniqueV2': {0: (0,)},
    'GatherV2': {0: (0,)}, 'Gather': {0: (0,)}, 'ResourceGather': {},
    'StringStrip': {0: (0,)}, 'StringLower': {0: (0,)},
    'ConcatV2': {i: (0,) for i in range(64)}, 'Pack': {i: (0,) for i in range(64)},
    'IdentityN': {i: (i,) for i in range(64)},
    'DynamicPartition': {0: tuple(range(64))},
    'Switch': {0: (0, 1)}, 'Merge': {i: (0,) for i in range(8)}, 'Enter': {0: (0,)},
    'Exit': {0: (0,)},
    'SelectV2': {1: (0,), 2: (0,)}, 'Select': {1: (0,), 2: (0,)},
    'SparseFillEmptyRows': {1: (1,)}, 'SparseReorder': {1: (1,)},
    'SparseSlice': {1: (1,)}, 'SparseReshape': {},
}
_CALL_OPS = frozenset({'StatefulPartitionedCall', 'PartitionedCall'})
_LOOKUP_OPS = frozenset({'LookupTableFindV2', 'LookupTableFind'})
_PARSE_OPS = frozenset({'ParseExample', 'ParseExampleV2'})
_GATHER_OPS = frozenset({'GatherV2', 'Gather', 'ResourceGather'})
_VARIABLE_OPS = frozenset({'VarHandleOp', 'VariableV2', 'Variable'})
_LESS_OPS = frozenset({'Less'})
_PARTITION_MATH_OPS = frozenset({'FloorDiv', 'FloorMod'})
_PARTITION_HOPS = 6  # ops from the ids' FloorDiv to the DynamicPartition (embedding_lookup: 3)


@dataclasses.dataclass
class Feature:
  """One feature a tf.Example parser reads: `kind` is 'dense', 'sparse' or 'ragged'; `shape`
  the dense shape of one example's value (None otherwise); `required` for a dense feature
  without default; `trace` where its values go."""
  name: str
  kind: str
  dtype: object  # tf.DType
  shape: Optional[tuple] = None
  required: bool = False
  trace: Optional['Trace'] = None


@dataclasses.dataclass
class Trace:
  """What a tensor's values reach: tables (NodeDefs of the graph), the features of a parser
  it feeds (None when it feeds none), and the exclusive bound of ids a gather accepts (None:
  no gather found, or one of unknown size)."""
  tables: List[object] = dataclasses.field(default_factory=list)
  features: Optional[Dict[str, Feature]] = None
  bound: Optional[int] = None


class _Scope:
  """The graph, or one library function as a graph (its arguments are placeholders named
  after them), with the call that entered it."""

  def __init__(self, graph_def, parent=None, call=None, args=()):
    self.nodes = {n.name: n for n in graph_def.node}
    self.consumers = collections.defaultdict(list)
    for node in graph_def.node:
      for pos, name in enumerate(node.input):
        if not name.startswith('^'):
          self.consumers[graphs.tensor_key(name)].append((node, pos))
    self.parent = parent   # _Scope of the caller, None for the graph
    self.call = call       # the caller's NodeDef
    self.args = {a: i for i, a in enumerate(args)}


class Tracer:
  """Follows tensors of one graph (and its library functions)."""

  def __init__(self, graph_def):
    self._top = _Scope(graph_def)
    self._converter = graphs.FunctionGraphs(graph_def.library)
    self._library = {f.signature.name: f for f in graph_def.library.function}
    self._functions = {}

  def _enter(self, scope, call):
    name = call.attr['f'].func.name
    function = self._library.get(name)
    if function is None:
      return None
    key = (id(scope), call.name)
    if key not in self._functions:
      try:
        graph_def, _ = self._converter.convert(function)
      except (ValueError, KeyError, TypeError):
        self._functions[key] = None
      else:
        self._functions[key] = _Scope(graph_def, scope, call,
                                      [a.name for a in function.signature.input_arg])
    return self._functions[key]

  def source(self, scope, tensor):
    """(scope, NodeDef) making `tensor` (a name in `scope`), through identities and function
    arguments; None when it leaves the graph."""
    name = graphs.node_name(tensor)
    for _ in range(1000):
      node = scope.nodes.get(name)
      if node is None:
        return None
      if node.op in graphs.IDENTITY_OPS and node.input:
        name = graphs.node_name(node.input[0])
      elif node.op == 'ReadVariableOp' and node.input:
        name = graphs.node_name(node.input[0])
      elif node.op == 'Placeholder' and scope.parent is not None and name in scope.args:
        inputs = graphs.data_inputs(scope.call)
        index = scope.args[name]
        if index >= len(inputs):
          return None
        name, scope = graphs.node_name(inputs[index]), scope.parent
      else:
        return scope, node
    return None

  def _rows(self, scope, tensor):
    """The first dimension of what `tensor` (gather params or a resource) holds, or None."""
    found = self.source(scope, tensor)
    if found is None:
      return None
    _, node = found
    if node.op in _VARIABLE_OPS:
      dims = node.attr['shape'].shape.dim
    elif node.op == 'Const':
      dims = node.attr['value'].tensor.tensor_shape.dim
    else:
      return None
    return dims[0].size if dims and dims[0].size > 0 else None

  def _partitioned_rows(self, scope, start):
    """The rows of the partitions a DynamicPartition downstream of `start` (the ids'
    partition arithmetic) routes ids to, each partition's found at the gather its output
    feeds; None when that is not what follows."""
    frontier, seen = [start], set()
    for _ in range(_PARTITION_HOPS):
      following = []
      for node in frontier:
        for output in range(4):
          for consumer, pos in scope.consumers.get((node.name, output), []):
            if consumer.op == 'DynamicPartition' and pos == 1:
              return self._partition_rows(scope, consumer)
            if consumer.name not in seen:
              seen.add(consumer.name)
              following.append(consumer)
      frontier = following
    return None

  def _partition_rows(self, scope, partition):
    total = 0
    for output in range(partition.attr['num_partitions'].i):
      rows, frontier = None, [(partition.name, output)]
      for _ in range(_PARTITION_HOPS):
        following = []
        for tensor in frontier:
          for node, pos in scope.consumers.get(tensor, []):
            if node.op in _GATHER_OPS and pos == 1:
              rows = rows or self._rows(scope, node.input[0])
            for index in _PASS.get(node.op, {}).get(pos, ()):
              following.append((node.name, index))
        frontier = following
      if not rows:
        return None
      total += rows
    return total

  def _scalar(self, scope, tensor):
    """The integer value of a scalar Const `tensor` is (through identities), or None."""
    found = self.source(scope, tensor)
    if found is None or found[1].op != 'Const':
      return None
    value = found[1].attr['value'].tensor
    if value.tensor_shape.dim or value.dtype not in (tf.int32.as_datatype_enum,
                                                     tf.int64.as_datatype_enum):
      return None
    values = list(value.int64_val) or list(value.int_val)
    if len(values) != 1:
      return None
    return int(values[0])

  def trace(self, tensor_name):
    """The Trace of graph tensor `tensor_name` ('x:0')."""
    return self._trace(self._top, graphs.tensor_key(tensor_name))

  def _trace(self, scope, start):
    result = Trace()
    bounds = []
    frontier, seen = [(scope, start)], set()
    while frontier:
      scope, tensor = frontier.pop()
      if (id(scope), tensor) in seen or len(seen) > 5000:
        continue
      seen.add((id(scope), tensor))
      for node, pos in scope.consumers.get(tensor, []):
        if node.op in _LOOKUP_OPS and pos == 1:
          found = self.source(scope, node.input[0])
          if found is not None and found[1].op in tables.TABLE_OPS:
            if all(t.name != found[1].name for t in result.tables):
              result.tables.append(found[1])
        elif node.op in _PARSE_OPS and pos == 0 and result.features is None:
          result.features = self._features(scope, node)
        elif node.op in _GATHER_OPS and pos == 1:
          rows = self._rows(scope, node.input[0])
          if rows:
            bounds.append(rows)
        elif node.op in _PARTITION_MATH_OPS and pos == 0:
          rows = self._partitioned_rows(scope, node)
          if rows:
            bounds.append(rows)
        elif node.op in _LESS_OPS and pos == 0 and len(node.input) > 1:
          limit = self._scalar(scope, node.input[1])
          if limit is not None and limit > 0:
            bounds.append(limit)
        elif node.op in _CALL_OPS:
          inner = self._enter(scope, node)
          names = [a for a, _ in sorted(inner.args.items(), key=lambda kv: kv[1])] if inner else []
          data = [i for i, x in enumerate(node.input) if not x.startswith('^')]
          if inner is not None and pos in data and data.index(pos) < len(names):
            frontier.append((inner, (names[data.index(pos)], 0)))
        if node.op in _PASS:
          for index in _PASS[node.op].get(pos, ()):
            frontier.append((scope, (node.name, index)))
    # Ids must fit every gather they reach.
    result.bound = min(bounds) if bounds else None
    return result

  def _features(self, scope, node):
    """name -> Feature of a ParseExample(V2) node, each traced from its output."""
    spec = parse_spec(scope.nodes, node)
    for feature, output in spec:
      feature.trace = self._trace(scope, (node.name, output))
    return {f.name: f for f, _ in spec}


def _const(nodes, name):
  node = nodes.get(graphs.node_name(name))
  if node is None or node.op != 'Const':
    return None
  return tf.make_ndarray(node.attr['value'].tensor)


def _names(value):
  return [k.decode() if isinstance(k, bytes) else str(k) for k in np.ravel(value)]


def parse_spec(nodes, node):
  """[(Feature, index of its values among the node's outputs)] of a ParseExample(V2) node.

  Features whose keys are not constants are left out.
  """
  attr = node.attr
  dense_types = [tf.as_dtype(t) for t in attr['Tdense'].list.type]
  shapes = [tuple(d.size for d in s.dim) for s in attr['dense_shapes'].list.shape]
  sparse_types = [tf.as_dtype(t) for t in attr['sparse_types'].list.type]
  ragged_types = [tf.as_dtype(t) for t in attr['ragged_value_types'].list.type]
  inputs = graphs.data_inputs(node)
  if node.op == 'ParseExample':
    ns, nd = attr['Nsparse'].i, attr['Ndense'].i
    sparse_keys = [_names(_const(nodes, inputs[2 + i])) for i in range(ns)]
    dense_keys = [_names(_const(nodes, inputs[2 + ns + i])) for i in range(nd)]
    if any(len(k) != 1 for k in sparse_keys + dense_keys):
      return []
    sparse_keys = [k[0] for k in sparse_keys]
    dense_keys = [k[0] for k in dense_keys]
    ragged_keys = []
    defaults = inputs[2 + ns + nd:]
  else:
    keys = [_const(nodes, inputs[i]) for i in (2, 3, 4)]
    if any(k is None for k in keys):
      return []
    sparse_keys, dense_keys, ragged_keys = [_names(k) for k in keys]
    ns = len(sparse_keys)
    defaults = inputs[5:]
  out = []
  for i, (key, dtype) in enumerate(zip(sparse_keys, sparse_types)):
    out.append((Feature(key, 'sparse', dtype), ns + i))  # sparse_values
  base = 3 * ns
  for i, (key, dtype, shape) in enumerate(zip(dense_keys, dense_types, shapes)):
    default = _const(nodes, defaults[i]) if i < len(defaults) else None
    required = default is not None and np.size(default) == 0
    out.append((Feature(key, 'dense', dtype, shape, required), base + i))
  base += len(dense_keys)
  for i, (key, dtype) in enumerate(zip(ragged_keys, ragged_types)):
    out.append((Feature(key, 'ragged', dtype), base + i))  # ragged_values
  return out
