"""A partitioned embedding's lookup in a frozen graph becomes one gather over one matrix.

`embedding_lookup` over a partitioned variable of N parts splits the ids by part
(DynamicPartition, twice: the rows and the positions), gathers from each part and stitches the
rows back in order (ParallelDynamicStitch): 2 + N kernels and N + 2 intermediate tensors per
lookup, where serving, which never writes the parts, can read one matrix whose row i is id i's
row. Here the parts (Consts of a frozen graph) become that matrix, and the lookup one
GatherV2 of it:

- `div` strategy: id i is in part p at row r with the parts in order, so the matrix is the
  parts concatenated (what the checkpoint stores as the variable's whole tensor);
- `mod` strategy: id i is in part i mod N at row i div N, so row i of the matrix is that row
  of that part: matrix[p::N] = part p.

Ids out of range behave as before: with the parts' sizes as TensorFlow's partitioners make
them (the first V mod N parts one row longer, V rows in all), the original lookup fails for
the ids outside [0, V) (DynamicPartition or the part's Gather refuses them), and so does a
GatherV2 over V rows (the CPU kernel refuses an index outside [0, V)). One exception, where
TensorFlow's own lookup is wrong: `div` computes the part in int64 and casts it to int32, so
for ids beyond about +-2^31 V/N it wraps around into a valid part and returns another id's row
(id -(2^63 - 1) gets id 1's row from a 10-row, 3-part embedding); the one gather refuses those
ids as it refuses every id outside [0, V). `mod` parts never overflow: it is exact for every
id.

A stitch is rewritten only when the structure matches (the positions are range(size(ids)),
every part is a Const read only by its gather, one id tensor feeds both partitions) and the
graph's own ops, run on the ids, give the part and row the strategy says: for every id in
[0, V) when V is at most 4M rows, else for 1M ids drawn at random plus every part's first and
last rows; and an invalid part or row for ids outside [0, V) (ids just below and past the
ends, and far out, short of the int32 wrap above). When the stitch's result is only reshaped
back to the ids' shape (embedding_lookup's last step), that reshape is what becomes the gather.
"""

import dataclasses
import re

from absl import logging

from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import numpy as np
from freezerlib.core.lean_tf import tensorflow as tf

_STITCH_OPS = frozenset({'ParallelDynamicStitch', 'DynamicStitch'})
_GATHER_OPS = frozenset({'GatherV2', 'Gather'})
_PART = re.compile(r'/part_\d+$')
_EXHAUSTIVE_ROWS = 1 << 22
_SAMPLE_IDS = 1 << 20


@dataclasses.dataclass
class Merged:
  """One lookup rewritten: the node that is now a gather, the matrix, strategy, parts, rows."""
  node: str
  matrix: str
  strategy: str
  parts: int
  rows: int
  nbytes: int


def _resolve(nodes, tensor):
  """The node producing `tensor`, through Identity ops, and the name of the first one."""
  name = graphs.node_name(tensor)
  seen = 0
  while name in nodes and nodes[name].op == 'Identity' and seen < 10:
    name = graphs.node_name(nodes[name].input[0])
    seen += 1
  return nodes.get(name)


def _output(tensor):
  """(node name, output index) of a tensor name."""
  name, _, index = tensor.partition(':')
  return name, int(index or 0)


def _data_inputs(node):
  return [i for i in node.input if not i.startswith('^')]


def _const_value(node):
  return tf.make_ndarray(node.attr['value'].tensor)


def _shape(node):
  return [d.size for d in node.attr['value'].tensor.tensor_shape.dim]


def _expected(ids, sizes, strategy):
  """(part, row) of each id under `strategy`, as embedding_lookup computes them."""
  n = len(sizes)
  if strategy == 'mod':
    return ids % n, ids // n
  total = sum(sizes)
  per, extras = total // n, total % n
  part = np.maximum(ids // (per + 1), (ids - extras) // max(per, 1))
  row = np.where(part < extras, ids % (per + 1), (ids - extras) % max(per, 1))
  return part, row


def _standard_sizes(sizes):
  total, n = sum(sizes), len(sizes)
  return sizes == [total // n + (1 if k < total % n else 0) for k in range(n)]


def _test_ids(total, sizes, dtype):
  """Ids in range (all, or a sample with every part's ends) and ids out of range."""
  if total <= _EXHAUSTIVE_ROWS:
    valid = np.arange(total, dtype=np.int64)
  else:
    rng = np.random.RandomState(0)
    ends = []
    n = len(sizes)
    for k in range(n):  # each part's first and last rows, under both strategies
      ends += [k, k + (sizes[k] - 1) * n]
    start = 0
    for size in sizes:
      ends += [start, start + size - 1]
      start += size
    valid = np.unique(np.concatenate([rng.randint(0, total, _SAMPLE_IDS), np.array(ends)]))
  n = len(sizes)
  limit = np.iinfo(dtype).max
  invalid = [-1, -2, -n, -n - 1, total, total + 1, total + n - 1, total + n, 2 * total + 1,
             limit // 2, limit, -limit]
  return valid.astype(dtype), np.array(invalid, dtype=np.int64).astype(dtype)


def _partition_of(graph_def, ids_tensor, partitions, new_ids, dtype):
  """A callable(ids) -> (partitions, new ids) running the graph's own ops on fed ids, or None
  when they read anything but the ids."""
  tf1 = tf.compat.v1
  sub = graphs.extract_sub_graph(graph_def, [graphs.node_name(partitions),
                                             graphs.node_name(new_ids)])
  graph = tf.Graph()
  with graph.as_default():
    fed = tf1.placeholder(dtype, [None])
    try:
      p, r = tf.graph_util.import_graph_def(
          sub, input_map={graphs.tensor_name(ids_tensor): fed},
          return_elements=[graphs.tensor_name(partitions), graphs.tensor_name(new_ids)], name='')
    except (ValueError, tf.errors.OpError):
      return None
  session = tf1.Session(graph=graph)

  def run(ids):
    return session.run([p, r], {fed: ids})
  return run, session


def _strategy(graph_def, ids_tensor, partitions, new_ids, sizes, dtype):
  """'mod' or 'div' when the graph computes that assignment (see the module doc), else None."""
  total = sum(sizes)
  found = _partition_of(graph_def, ids_tensor, partitions, new_ids, dtype)
  if found is None:
    return None
  run, session = found
  valid, invalid = _test_ids(total, sizes, dtype)
  try:
    parts, rows = [], []
    for start in range(0, len(valid), _SAMPLE_IDS):
      p, r = run(valid[start:start + _SAMPLE_IDS])
      parts.append(p)
      rows.append(r)
    got_part, got_row = np.concatenate(parts), np.concatenate(rows)
    bad_part, bad_row = run(invalid)
  except (tf.errors.OpError, ValueError):
    return None  # reads other inputs, or fails on ids the lookup accepts
  finally:
    session.close()
  wide = valid.astype(np.int64)
  for strategy in ('mod', 'div'):
    part, row = _expected(wide, sizes, strategy)
    if np.array_equal(got_part, part) and np.array_equal(got_row, row):
      break
  else:
    return None
  # embedding_lookup casts the part to int32: past that, its lookup wraps around (see the
  # module doc), so only ids whose part fits are held to being refused.
  part, _ = _expected(invalid.astype(np.int64), sizes, strategy)
  fits = (part >= np.iinfo(np.int32).min) & (part <= np.iinfo(np.int32).max)
  bad_part, bad_row = bad_part.astype(np.int64)[fits], bad_row[fits]
  size_of = np.array(sizes + [0])
  in_part = (bad_part >= 0) & (bad_part < len(sizes))
  refused = ~in_part | (bad_row < 0) | (bad_row >= size_of[np.where(in_part, bad_part, -1)])
  return strategy if refused.all() else None


def _match(stitch, nodes, consumers):
  """The parts of the lookup `stitch` ends, or None: (parts Const nodes, gathers, ids tensor,
  partitions tensor, new ids tensor, names of the nodes only the stitch needs: the parts,
  what reads them, the gathers)."""
  inputs = _data_inputs(stitch)
  n = stitch.attr['N'].i
  if n < 2 or len(inputs) != 2 * n:
    return None
  positions = [_output(i) for i in inputs[:n]]
  if len({p[0] for p in positions}) != 1 or [p[1] for p in positions] != list(range(n)):
    return None
  split_positions = nodes.get(positions[0][0])
  if split_positions is None or split_positions.op != 'DynamicPartition' or (
      split_positions.attr['num_partitions'].i != n):
    return None
  consts, gathers, split_ids, gone = [], [], None, set()
  for k, data in enumerate(inputs[n:]):
    gather = nodes.get(graphs.node_name(data))
    if (gather is None or gather.op not in _GATHER_OPS or _output(data)[1] or
        consumers.get(gather.name) != [stitch.name]):
      return None
    gather_inputs = _data_inputs(gather)
    if gather.op == 'GatherV2':
      axis = _resolve(nodes, gather_inputs[2])
      if (axis is None or axis.op != 'Const' or int(_const_value(axis)) != 0 or
          ('batch_dims' in gather.attr and gather.attr['batch_dims'].i != 0)):
        return None
    const = _resolve(nodes, gather_inputs[0])
    if const is None or const.op != 'Const':
      return None
    readers = {graphs.node_name(gather_inputs[0]), const.name}
    if any(set(consumers.get(r, [])) - readers - {gather.name} for r in readers):
      return None  # the part is read elsewhere too: it stays, so merging would hold it twice
    gone.update(readers | {gather.name})
    split, index = _output(gather_inputs[1])
    if index != k or (split_ids is not None and split != split_ids):
      return None
    split_ids = split
    consts.append(const)
    gathers.append(gather)
  split_ids = nodes.get(split_ids)
  if (split_ids is None or split_ids.op != 'DynamicPartition' or
      split_ids.attr['num_partitions'].i != n or
      graphs.tensor_name(split_ids.input[1]) != graphs.tensor_name(split_positions.input[1])):
    return None
  # The positions are range(size(ids)): the ids are whatever Size counts.
  positions_range = _resolve(nodes, split_positions.input[0])
  if positions_range is None or positions_range.op != 'Range':
    return None
  start, size, delta = (_resolve(nodes, i) for i in _data_inputs(positions_range))
  if (start is None or delta is None or size is None or start.op != 'Const' or
      delta.op != 'Const' or int(_const_value(start)) != 0 or int(_const_value(delta)) != 1 or
      size.op != 'Size'):
    return None
  ids = size.input[0]
  return consts, gathers, ids, split_ids.input[1], split_ids.input[0], gone


def _reshape_back(stitch, ids, nodes, consumers):
  """embedding_lookup's last step, Reshape(stitch, concat(shape(ids0), [D...])) where
  ids = Reshape(ids0, [-1]): (that Reshape node, ids0), or None."""
  users = consumers.get(stitch.name, [])
  flat = _resolve(nodes, ids)
  if len(users) != 1 or flat is None or flat.op != 'Reshape':
    return None
  reshape = nodes[users[0]]
  shape = nodes.get(graphs.node_name(reshape.input[1])) if reshape.op == 'Reshape' else None
  flat_shape = _resolve(nodes, flat.input[1])
  if (shape is None or shape.op != 'ConcatV2' or flat_shape is None or
      flat_shape.op != 'Const' or list(np.reshape(_const_value(flat_shape), -1)) != [-1]):
    return None
  parts = _data_inputs(shape)
  of_ids = _resolve(nodes, parts[0])
  if (len(parts) != 3 or of_ids is None or of_ids.op != 'Shape' or
      graphs.tensor_name(of_ids.input[0]) != graphs.tensor_name(flat.input[0])):
    return None
  return reshape, flat.input[0]


def _matrix(consts, strategy):
  parts = [_const_value(c) for c in consts]
  if strategy == 'div':
    return np.concatenate(parts)
  n = len(parts)
  matrix = np.empty((sum(len(p) for p in parts),) + parts[0].shape[1:], parts[0].dtype)
  for k, part in enumerate(parts):
    matrix[k::n] = part
  return matrix


def merge_partitioned_lookups(graph_def, keep=()):
  """Rewrites every partitioned embedding lookup of the frozen `graph_def` as one gather.

  The nodes only the old lookups needed (the partitions, positions, stitch) go too.

  Args:
    graph_def: a frozen GraphDef (modified in place).
    keep: names of nodes to keep even if nothing reads them (signature outputs, init op).

  Returns:
    list of Merged.
  """
  nodes = {n.name: n for n in graph_def.node}
  consumers = {}
  for node in graph_def.node:
    for i in node.input:
      consumers.setdefault(graphs.node_name(i), []).append(node.name)
  taken = set(nodes)
  done, dropped, added, dead = [], set(), [], set()
  for stitch in [n for n in graph_def.node if n.op in _STITCH_OPS]:
    matched = _match(stitch, nodes, consumers)
    if matched is None:
      continue
    consts, gathers, ids, partitions, new_ids, gone = matched
    shapes = [_shape(c) for c in consts]
    dtypes = {c.attr['dtype'].type for c in consts}
    if (len(dtypes) != 1 or any(len(s) < 1 or s[0] < 1 or s[1:] != shapes[0][1:]
                                for s in shapes) or
        not _standard_sizes([s[0] for s in shapes])):
      continue
    ids_dtype = tf.as_dtype(gathers[0].attr['Tindices'].type)
    sizes = [s[0] for s in shapes]
    strategy = _strategy(graph_def, ids, partitions, new_ids, sizes,
                         ids_dtype.as_numpy_dtype)
    if strategy is None:
      continue
    matrix = _matrix(consts, strategy)
    base = _PART.sub('', consts[0].name)
    const = lean_tf.NodeDef(name=graphs.unique_name(base + '/by_id', taken), op='Const')
    const.attr['dtype'].type = dtypes.pop()
    const.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(matrix))
    nbytes = matrix.nbytes
    del matrix
    axis = lean_tf.NodeDef(name=graphs.unique_name(const.name + '/axis', taken), op='Const')
    axis.attr['dtype'].type = lean_tf.types_pb2.DT_INT32
    axis.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(0, tf.int32))
    back = _reshape_back(stitch, ids, nodes, consumers)
    target, indices = back if back else (stitch, ids)
    dead |= graphs.reachable(graph_def, [target.name]) - {target.name}
    name, device = target.name, target.device
    target.Clear()
    target.name, target.op, target.device = name, 'GatherV2', device
    target.input.extend([const.name, indices, axis.name])
    target.attr['Tparams'].type = const.attr['dtype'].type
    target.attr['Tindices'].type = ids_dtype.as_datatype_enum
    target.attr['Taxis'].type = lean_tf.types_pb2.DT_INT32
    target.attr['batch_dims'].i = 0
    added.extend([const, axis])
    dropped.update(gone)
    if target is not stitch:
      dropped.add(stitch.name)
    done.append(Merged(target.name, const.name, strategy, len(consts), sum(sizes), nbytes))
    logging.info('lookup %s: %d parts of %s (%s strategy, %d rows, %s) gathered as one matrix, '
                 '%s', target.name, len(consts), base, strategy, sum(sizes),
                 units.human_bytes(nbytes), const.name)
  if dropped:
    kept = [n for n in graph_def.node if n.name not in dropped]
    del graph_def.node[:]
    graph_def.node.extend(kept)
  graph_def.node.extend(added)
  graphs.remove_unused(graph_def, dead - dropped, keep)
  return done
