"""TF2 object graphs: the TrackableObjectGraph an object-based checkpoint (tf.train.Checkpoint,
a TF2 SavedModel's variables/) stores under `_CHECKPOINTABLE_OBJECT_GRAPH`, and which index keys
each object owns. Read by the TF2 checkpoint path (export/from_tf2_checkpoint) and by
freeze/keep for TF2 SavedModels, so it sits here, below both stages."""

import collections.abc

from google.protobuf import message as pb_message

from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.formats import checkpoint_index

trackable_object_graph_pb2 = lean_tf.load('tensorflow.core.protobuf.trackable_object_graph_pb2')
# The key under which a tf.train.Checkpoint stores its object graph (a TrackableObjectGraph).
OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'




def read_object_graph(checkpoint):
  """The TrackableObjectGraph of an object-based checkpoint (checkpoints.Checkpoint).

  Raises:
    errors.UserError: the checkpoint has none (a tf.compat.v1 Saver wrote it), or it is corrupt.
  """
  if OBJECT_GRAPH_KEY not in checkpoint.entries:
    raise errors.UserError(
        'checkpoint %s is name-based (written by a tf.compat.v1 Saver: it has no %s); a TF2 '
        'structure needs a checkpoint written by tf.train.Checkpoint'
        % (checkpoint.prefix, OBJECT_GRAPH_KEY))
  values = checkpoint_index.read_string_tensor(checkpoint, OBJECT_GRAPH_KEY)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  try:
    if len(values) != 1:
      raise ValueError('%d values, not one' % len(values))
    graph.ParseFromString(values[0])
  except (ValueError, pb_message.DecodeError) as e:
    raise errors.UserError('checkpoint %s: %s is not an object graph (%s)'
                          % (checkpoint.prefix, OBJECT_GRAPH_KEY, e)) from e
  if not graph.nodes:
    raise errors.UserError('checkpoint %s: its object graph is empty' % checkpoint.prefix)
  return graph


def keys_by_object(structure, index):
  """(object graph node id -> {attribute name: [(key, suffix)]}, keys owned by no attribute)
  of an object-based checkpoint's `index`, `structure` being its object graph.

  A key of the structure's index belongs to the attribute whose checkpoint_key is its longest
  prefix: a variable's value is stored under the key itself, a table's under key + '-keys' and
  key + '-values' (the suffix, kept when the key is renamed).
  """
  by_key = {}
  for node_id, node in enumerate(structure.nodes):
    for attr in node.attributes:
      by_key[attr.checkpoint_key] = (node_id, attr.name)
  owned = collections.defaultdict(lambda: collections.defaultdict(list))
  stray = []
  for key in sorted(index.entries):
    if key == OBJECT_GRAPH_KEY:
      continue
    end = key.rfind('/.ATTRIBUTES/')
    for cut in range(len(key), max(end, 0), -1):
      if key[:cut] in by_key:
        node_id, name = by_key[key[:cut]]
        owned[node_id][name].append((key, key[cut:]))
        break
    else:
      stray.append(key)
  return owned, stray
