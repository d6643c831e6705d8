"""Big constants of a frozen graph become variables of the serving SavedModel.

A frozen GraphDef carries its values in Const nodes. In a SavedModel that costs load time:
every loader parses the whole graph and hands copies of it to the session. On a graph with
355 MiB of constants, TensorFlow 2.21's Python loader spent 1.2 s parsing, 1.1 s importing and
2.4 s in ExtendSession, about 4 s in all, where the training SavedModel restoring 1 GiB from
its checkpoint loaded in 1.1 s. So optimize_from_pb.py writes every Const of at least
`--constants_as_variables` bytes as a resource variable: a VarHandleOp, and a ReadVariableOp
under the Const's own name (every consumer, signature and the table fill op are unchanged),
whose value the SavedModel's `variables/` holds and whose saver restores it before the main op
runs. The GraphDef written with `--output_graph` keeps them as constants.
"""

import dataclasses

from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.core.lean_tf import numpy as np
from freezerlib.core.lean_tf import tensorflow as tf
from freezerlib.formats import saved_model
from freezerlib.transforms import saver

_NOT_STORABLE = frozenset({lean_tf.types_pb2.DT_RESOURCE, lean_tf.types_pb2.DT_VARIANT})


@dataclasses.dataclass
class Split:
  """A FrozenModel whose big constants are variables, and their values.

  Attributes:
    frozen: the FrozenModel, with a saver (`saver_def`) over the new variables.
    values: checkpoint name -> (VarHandleOp name, TensorProto of the value).
  """
  frozen: object
  values: dict


def parse_threshold(text):
  """--constants_as_variables: a size, or 'off' -> None.

  Raises:
    errors.UserError: not a size.
  """
  if text is None or text.strip().lower() in ('', 'off', 'none'):
    return None
  return units.parse_size(text, '--constants_as_variables', ", or 'off'")


def split(frozen, min_bytes):
  """Turns every Const of `frozen` holding at least `min_bytes` into a variable.

  Args:
    frozen: frozen_graph.FrozenModel without a saver (not modified; the values returned are
      its own TensorProtos, not copies).
    min_bytes: the threshold, compared with the bytes of each Const's values.

  Returns:
    Split, or None when no constant is that big.
  """
  graph_def = lean_tf.graph_pb2.GraphDef()
  graph_def.versions.CopyFrom(frozen.graph_def.versions)
  graph_def.library.CopyFrom(frozen.graph_def.library)
  taken = {n.name for n in frozen.graph_def.node}
  restores, values, handles = [], {}, []
  for node in frozen.graph_def.node:
    dtype = node.attr['dtype'].type if node.op == 'Const' else None
    if (dtype is None or dtype in _NOT_STORABLE or
        lean_tf.tensor_nbytes(node.attr['value'].tensor) < min_bytes):
      graph_def.node.add().CopyFrom(node)
      continue
    tensor = node.attr['value'].tensor  # not copied: `frozen` holds it
    handle = lean_tf.NodeDef(name=graphs.unique_name(node.name + '/variable', taken),
                             op='VarHandleOp')
    handle.attr['dtype'].type = dtype
    handle.attr['shape'].shape.CopyFrom(tensor.tensor_shape)
    handle.attr['shared_name'].s = handle.name.encode('utf-8')
    handle.attr['container'].s = b''
    handles.append(handle)
    values[node.name] = (handle.name, tensor)
    assign = lean_tf.NodeDef(op='AssignVariableOp')
    assign.attr['dtype'].type = dtype
    restores.append(saver.Restore(target=handle.name, op=assign, names=[node.name],
                                             specs=[''], dtypes=[lean_tf.as_dtype(dtype)]))
    controls = [i for i in node.input if i.startswith('^')]
    read = graph_def.node.add(name=node.name, op='ReadVariableOp', input=[handle.name] + controls)
    read.attr['dtype'].type = dtype
  if not restores:
    return None
  graph_def.node.extend(handles)
  saver_def = saver.add_saver(graph_def, restores)
  return Split(dataclasses.replace(frozen, graph_def=graph_def, saver_def=saver_def), values)


def inline(the_split):
  """The FrozenModel of `the_split` with its variables as Consts again and no saver: what a
  GraphDef file holds. The ReadVariableOps (which carry the Consts' names) become the Consts,
  with their control inputs."""
  frozen = the_split.frozen
  saver_nodes = saved_model.saver_nodes(frozen.graph_def, frozen.saver_def)
  graph_def = lean_tf.graph_pb2.GraphDef()
  graph_def.versions.CopyFrom(frozen.graph_def.versions)
  graph_def.library.CopyFrom(frozen.graph_def.library)
  for node in frozen.graph_def.node:
    if node.name in saver_nodes:
      continue
    if node.name in the_split.values and node.op == 'ReadVariableOp':
      const = lean_tf.NodeDef(name=node.name, op='Const',
                              input=[i for i in node.input if i.startswith('^')])
      const.attr['dtype'].type = node.attr['dtype'].type
      const.attr['value'].tensor.CopyFrom(the_split.values[node.name][1])
      graph_def.node.append(const)
    else:
      graph_def.node.add().CopyFrom(node)
  return dataclasses.replace(frozen, graph_def=graph_def, saver_def=None)


def _array(tensor):
  """The value of a TensorProto; a view of its bytes when it has tensor_content (what
  tf.make_ndarray copies once more)."""
  if tensor.tensor_content and tensor.dtype not in (lean_tf.types_pb2.DT_STRING,):
    dtype = tf.as_dtype(tensor.dtype).as_numpy_dtype
    shape = [d.size for d in tensor.tensor_shape.dim]
    return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
  return tf.make_ndarray(tensor)


def variables_writer(the_split):
  """A callable(variables_dir) writing the values of `the_split`'s variables as its saver's
  checkpoint there, one value in memory at a time (for saved_model.write_saved_model)."""
  frozen = the_split.frozen

  def write(variables_dir):
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
      tf.graph_util.import_graph_def(frozen.graph_def, name='')
      feeds = {}
      for name, (handle, tensor) in the_split.values.items():
        value = tf1.placeholder(tensor.dtype, name=None)
        assign = tf.raw_ops.AssignVariableOp(
            resource=graph.get_tensor_by_name(handle + ':0'), value=value)
        feeds[name] = (assign, value, tensor)
    with tf1.Session(graph=graph) as session:
      for assign, value, tensor in feeds.values():
        session.run(assign, {value: _array(tensor)})
      session.run(frozen.saver_def.save_tensor_name,
                  {frozen.saver_def.filename_tensor_name: variables_dir + '/variables'})

  return write
