"""Grappler's inference-safe passes over a serving graph."""

from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use


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
  from tensorflow.core.protobuf import config_pb2
  from tensorflow.python.grappler import tf_optimizer

  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  meta_graph = tf.compat.v1.train.export_meta_graph(graph=graph, graph_def=graph_def)
  fetch = meta_graph.collection_def['train_op']  # the collection Grappler keeps alive
  fetch.node_list.value.extend(keep_nodes)
  config = config_pb2.ConfigProto()
  rewrite = config.graph_options.rewrite_options
  rewrite.optimizers.extend(['pruning', 'constfold', 'arithmetic', 'dependency', 'function'])
  rewrite.meta_optimizer_iterations = 2  # ONE/TWO enum: two passes of the list above
  optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
  optimized.versions.CopyFrom(graph_def.versions)
  return optimized
