"""Keep only what serving runs: prune to the signatures, clear devices, count what went."""

import collections
import dataclasses

from absl import logging

from freezerlib.core import graphs
from freezerlib.core import units
from freezerlib.formats import saved_model
from freezerlib.transforms import placeholders


def strip(graph_def, keep_nodes):
  """Keeps only what `keep_nodes` need; clears devices; drops unused library functions.

  Args:
    graph_def: GraphDef (not modified).
    keep_nodes: node names to keep with everything they depend on.

  Returns:
    The stripped GraphDef.
  """
  out = graphs.extract_sub_graph(graph_def, list(keep_nodes))
  for node in out.node:
    node.device = ''
  used = graphs.functions_used(out)
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
               units.human_bytes(before.bytes), units.human_bytes(after.bytes))
  width = max([len(op) for op in before.ops] + [10])
  logging.info('%-*s %8s %8s', width, 'op', 'before', 'after')
  for op in sorted(set(before.ops) | set(after.ops),
                   key=lambda o: (-before.ops.get(o, 0), o)):
    # Op types whose count changed at INFO; the unchanged rest at --verbosity=1.
    changed = before.ops.get(op, 0) != after.ops.get(op, 0)
    logging.vlog(0 if changed else 1, '%-*s %8d %8d', width, op, before.ops.get(op, 0),
                 after.ops.get(op, 0))


def cut_to_signatures(graph_def, signatures, extra_keep=(), where='the graph'):
  """Signature inputs to placeholders, then only what the signatures (and `extra_keep`) need.

  `where` names the graph's file in messages.

  Returns:
    (GraphDef with devices cleared, signatures with the placeholders' names, nodes kept alive).
  """
  graph_def, signatures, _ = placeholders.inputs_to_placeholders(graph_def, signatures,
                                                                 where=where)
  keep = saved_model.signature_output_nodes(signatures)
  # Inputs no output depends on must stay too: the signature promises them.
  keep += saved_model.signature_input_nodes(signatures)
  keep = list(dict.fromkeys(keep + [k for k in extra_keep if k]))
  return strip(graph_def, keep), signatures, keep
