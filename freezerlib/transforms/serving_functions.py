"""A TF2 SavedModel's MetaGraph cut to what serving runs: its function library and object graph
without training functions.

`tf.saved_model.save` writes every concrete function the saved objects hold: a module's
`train_step` (gradients, optimizer updates, table inserts), a Keras layer's traces with
`training=True` (batch-norm statistics updates), a function that reads a dataset. None of
them runs when a model serves, but the checkpoint path's output would keep them, and with them
ops that write state. What serving runs:

- the functions the MetaGraph's own nodes call (TF Serving, the TF1 and C++ loaders run these
  nodes): the signatures' calls, the init op's (a table's initializer), the saver's save and
  restore functions, and every function those call;
- what `tf.saved_model.load` runs besides: each resource's `_create_resource`, `_initialize`
  and `_destroy_resource` functions (it recreates tables through them), the save and restore
  functions of objects saved through `saveable_objects`, and the signature map's functions.

The rest goes from the library, and the object graph stays consistent with it:
`concrete_functions` loses the entries of functions removed, a `function` object lists only
the concrete functions kept (one left with none loads, and says so when called), and a
`bare_concrete_function` object whose function was removed becomes a plain object (its node
id stays: the checkpoint's object graph is matched to this one node by node). The MetaGraph's
stripped op list keeps the op types still used.

Protos only: no TensorFlow.
"""

import collections
import copy
import dataclasses
from typing import Dict, List, Set

from freezerlib.core import graphs

# Children of a `resource` object that tf.saved_model.load calls to recreate it.
_RESOURCE_FUNCTIONS = ('_create_resource', '_initialize', '_destroy_resource')
# What a bare concrete function becomes when its function is removed: the identifier
# tf.saved_model.load revives as a plain trackable object.
_PLAIN_OBJECT = '_generic_user_object'


def _functions_of(node):
  """Names of the concrete functions an object of the SavedObjectGraph refers to."""
  kind = node.WhichOneof('kind')
  if kind == 'function':
    return list(node.function.concrete_functions)
  if kind == 'bare_concrete_function':
    return [node.bare_concrete_function.concrete_function_name]
  return []


def serving_functions(meta_graph):
  """Names of the library functions serving runs (see the module doc), each with the
  functions it calls."""
  objects = meta_graph.object_graph_def
  roots = []
  for node in objects.nodes:
    kind = node.WhichOneof('kind')
    if kind == 'resource':
      roots += [name for c in node.children if c.local_name in _RESOURCE_FUNCTIONS
                for name in _functions_of(objects.nodes[c.node_id])]
    if kind == 'user_object' and node.user_object.identifier == 'signature_map':
      roots += [name for c in node.children for name in _functions_of(objects.nodes[c.node_id])]
    for saveable in node.saveable_objects.values():
      for node_id in (saveable.save_function, saveable.restore_function):
        roots += _functions_of(objects.nodes[node_id])
  return graphs.functions_used(meta_graph.graph_def, roots)


def objects_read(meta_graph, functions):
  """Object node ids the concrete functions `functions` capture (their bound inputs): the
  variables, tables and constants they read."""
  concrete = meta_graph.object_graph_def.concrete_functions
  return {node_id for name in functions if name in concrete
          for node_id in concrete[name].bound_inputs}


@dataclasses.dataclass
class Cut:
  """A MetaGraph cut to what serving runs."""
  meta_graph: object  # MetaGraphDef (a copy)
  kept: Set[str]  # library functions kept
  removed: List[str]  # library functions removed, sorted
  removed_ops: Dict[str, int]  # op type -> count, in the functions removed

  def summary(self, shown=6):
    """'N functions (op: count, ...)' of what was removed, for the log."""
    ops = ', '.join('%s: %d' % kv for kv in sorted(
        self.removed_ops.items(), key=lambda kv: (-kv[1], kv[0]))[:shown])
    more = len(self.removed_ops) - shown
    return '%d functions (%s%s)' % (len(self.removed), ops or 'no ops',
                                    ', and %d more op types' % more if more > 0 else '')


def _ops_used(graph_def):
  ops = {n.op for n in graph_def.node}
  for function in graph_def.library.function:
    ops.update(n.op for n in function.node_def)
  return ops


def cut_to_serving(meta_graph):
  """The MetaGraph without the library functions serving does not run (see the module doc).

  Args:
    meta_graph: a TF2 SavedModel's MetaGraphDef (not modified).

  Returns:
    Cut.
  """
  kept = serving_functions(meta_graph)
  out = copy.deepcopy(meta_graph)
  library = out.graph_def.library
  removed_ops = collections.Counter()
  removed = []
  for function in library.function:
    if function.signature.name not in kept:
      removed.append(function.signature.name)
      removed_ops.update(n.op for n in function.node_def)
  if not removed:
    return Cut(out, kept, [], {})
  functions = [f for f in library.function if f.signature.name in kept]
  del library.function[:]
  library.function.extend(functions)
  gradients = [g for g in library.gradient
               if g.function_name in kept and g.gradient_func in kept]
  del library.gradient[:]
  library.gradient.extend(gradients)
  objects = out.object_graph_def
  for name in list(objects.concrete_functions):
    if name not in kept:
      del objects.concrete_functions[name]
  for node in objects.nodes:
    kind = node.WhichOneof('kind')
    if kind == 'function':
      names = [n for n in node.function.concrete_functions if n in kept]
      del node.function.concrete_functions[:]
      node.function.concrete_functions.extend(names)
    elif kind == 'bare_concrete_function' and (
        node.bare_concrete_function.concrete_function_name not in kept):
      node.user_object.identifier = _PLAIN_OBJECT  # (replaces the oneof `kind`)
      node.user_object.version.producer = 1
      node.user_object.version.min_consumer = 1
  if out.meta_info_def.HasField('stripped_op_list'):
    used = _ops_used(out.graph_def)
    ops = [op for op in out.meta_info_def.stripped_op_list.op if op.name in used]
    del out.meta_info_def.stripped_op_list.op[:]
    out.meta_info_def.stripped_op_list.op.extend(ops)
  return Cut(out, kept, sorted(removed), dict(removed_ops))
