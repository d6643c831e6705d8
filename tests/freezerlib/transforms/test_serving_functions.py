"""transforms/serving_functions: a TF2 MetaGraph cut to the functions serving runs.

(The checkpoint path's outputs through every loader: tests/test_tf2_checkpoint.py.)
"""

import pytest
import tensorflow as tf

from freezerlib.formats import saved_model
from freezerlib.transforms import serving_functions


class _Counter(tf.Module):
  """Serves `w * x + table(x)`; `step` is a saved training function (a gradient, a variable
  update, a table insert), `trace` a bare concrete function of it; `seen` nothing serves."""

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(2.0)
    self.seen = tf.Variable(0, dtype=tf.int64)
    self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.5)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name='x')])
  def serve(self, x):
    return {'y': self.w * tf.cast(x, tf.float32) + self.table.lookup(x)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def step(self, x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(self.serve(x)['y'] ** 2)
    self.w.assign_sub(0.1 * tape.gradient(loss, self.w))
    self.table.insert(x, tf.ones_like(x, tf.float32))
    self.seen.assign_add(1)
    return loss


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  module = _Counter()
  module.trace = module.step.get_concrete_function()
  path = str(tmp_path_factory.mktemp('counter') / 'm')
  tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  return path


def _ops(function):
  return {n.op for n in function.node_def}


def test_training_functions_go_and_the_object_graph_stays_consistent(saved, tmp_path):
  meta_graph = saved_model.read_meta_graph(saved, ['serve'])
  cut = serving_functions.cut_to_serving(meta_graph)
  assert any(n.startswith('__inference_step_') for n in cut.removed)
  assert cut.removed_ops['AssignSubVariableOp'] >= 1 and 'LookupTableInsertV2' in cut.removed_ops
  assert cut.summary().startswith('%d functions (' % len(cut.removed))
  library = cut.meta_graph.graph_def.library
  assert not [f for f in library.function
              if {'AssignSubVariableOp', 'AssignAddVariableOp', 'LookupTableInsertV2'} & _ops(f)]
  assert {f.signature.name for f in library.function} == cut.kept
  assert set(cut.meta_graph.object_graph_def.concrete_functions) <= cut.kept
  kinds = {n.WhichOneof('kind') for n in cut.meta_graph.object_graph_def.nodes}
  assert 'bare_concrete_function' in kinds  # the signature's, kept
  trace = next(c.node_id for c in cut.meta_graph.object_graph_def.nodes[0].children
               if c.local_name == 'trace')
  assert cut.meta_graph.object_graph_def.nodes[trace].user_object.identifier == (
      '_generic_user_object')  # its function is gone
  assert len(cut.meta_graph.object_graph_def.nodes) == len(meta_graph.object_graph_def.nodes)
  assert meta_graph.graph_def.library.function != library.function  # the input is untouched
  # Written and loaded back: the signature answers, the trained function has no traces left.
  out = str(tmp_path / 'out')
  _copy_tree(saved + '/variables', out + '/variables')
  saved_model.write_saved_model_proto(cut.meta_graph, out)
  loaded = tf.saved_model.load(out)
  y = loaded.signatures['serving_default'](x=tf.constant([1, 2], tf.int64))['y']
  assert y.numpy().tolist() == [2.5, 4.5]
  with pytest.raises((ValueError, TypeError)):
    loaded.step(tf.constant([1], tf.int64))


def _copy_tree(src, dst):
  tf.io.gfile.makedirs(dst)
  for name in tf.io.gfile.listdir(src):
    tf.io.gfile.copy(src + '/' + name, dst + '/' + name)


def test_objects_read_are_those_serving_captures(saved):
  meta_graph = saved_model.read_meta_graph(saved, ['serve'])
  objects = meta_graph.object_graph_def
  by_name = {c.local_name: c.node_id for c in objects.nodes[0].children}
  cut = serving_functions.cut_to_serving(meta_graph)
  read = serving_functions.objects_read(meta_graph, cut.kept)
  assert {by_name['w'], by_name['table']} <= read
  assert by_name['seen'] not in read
  everything = {f.signature.name for f in meta_graph.graph_def.library.function}
  assert by_name['seen'] in serving_functions.objects_read(meta_graph, everything)


def test_a_model_without_training_functions_is_unchanged(tmp_path):
  module = tf.Module()
  module.v = tf.Variable(3.0)
  module.f = tf.function(lambda x: x * module.v,
                         input_signature=[tf.TensorSpec([], tf.float32, name='x')])
  tf.saved_model.save(module, str(tmp_path), signatures=module.f)
  meta_graph = saved_model.read_meta_graph(str(tmp_path), ['serve'])
  cut = serving_functions.cut_to_serving(meta_graph)
  assert cut.removed == [] and cut.meta_graph == meta_graph
