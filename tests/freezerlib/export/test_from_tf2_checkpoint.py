"""export/from_tf2_checkpoint: a TF2 structure and a tf.train.Checkpoint, matched object by
object, become a serving SavedModel.

(Keras exports, sharded variables from a cluster, every loader: tests/test_tf2_checkpoint.py.)
"""

import os

from absl import logging
import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.export import from_checkpoint
from freezerlib.export import from_tf2_checkpoint as tf2ckpt
from freezerlib.formats import checkpoint_index

tf1 = tf.compat.v1
TrackableObjectGraph = tf2ckpt.trackable_object_graph_pb2.TrackableObjectGraph
FEEDS = {'ids': np.array([1, 3, 7], np.int64)}


class _Model(tf.Module):
  """y = kernel[0] * ids + table(ids); `kernel` [2] and a mutable table."""

  def __init__(self, scale, entries, size=2):
    super().__init__()
    self.kernel = tf.Variable([scale] * size)
    self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0)
    self.table.insert(tf.constant(list(entries), tf.int64),
                      tf.constant(list(entries.values()), tf.float32))

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name='ids')])
  def serve(self, ids):
    return {'y': self.kernel[0] * tf.cast(ids, tf.float32) + self.table.lookup(ids)}


def _answer(scale, entries):
  return [scale * i + entries.get(i, -1.0) for i in FEEDS['ids']]


@pytest.fixture(scope='module')
def case(tmp_path_factory):
  """A structure saved untrained, and checkpoints of trained copies: one with the model under
  `model` (beside an optimizer-like object), one with two models, one of another shape."""
  root = tmp_path_factory.mktemp('tf2ckpt')
  structure = _Model(1.0, {})
  tf.saved_model.save(structure, str(root / 'structure'), signatures=structure.serve)
  trained = _Model(2.0, {3: 30.0})
  other = _Model(5.0, {7: 70.0})
  extra = tf.Module()
  extra.step = tf.Variable(9, dtype=tf.int64)
  return {
      'root': root, 'structure': str(root / 'structure'),
      'one': tf.train.Checkpoint(model=trained, optimizer=extra).write(str(root / 'one' / 'c')),
      'two': tf.train.Checkpoint(a=trained, b=other).write(str(root / 'two' / 'c')),
      'bad': tf.train.Checkpoint(model=_Model(1.0, {}, size=3)).write(str(root / 'bad' / 'c')),
  }


def _serve(path):
  loaded = tf.saved_model.load(path)
  return loaded.signatures['serving_default'](ids=tf.constant(FEEDS['ids']))['y'].numpy()


def test_export_serves_the_trained_values(case, tmp_path):
  out = str(tmp_path / 'out')
  report = from_checkpoint.saved_model_from_checkpoint(case['one'], out,
                                                       saved_model_dir=case['structure'])
  assert isinstance(report, tf2ckpt.ExportReport)
  assert (report.checkpoint_object, report.matched_by) == ('model', 'path')
  assert report.tensors_exported == 3  # kernel, table keys and values
  np.testing.assert_array_equal(_serve(out), _answer(2.0, {3: 30.0}))
  # Nothing but the library differs from the structure's (no training functions to drop here).
  out_graph = tf2ckpt.saved_model.read_meta_graph(out, ['serve'])
  structure_graph = tf2ckpt.saved_model.read_meta_graph(case['structure'], ['serve'])
  assert out_graph == structure_graph
  index = checkpoint_index.read_index(out + '/variables/variables')
  structure = checkpoint_index.read_index(case['structure'] + '/variables/variables')
  assert sorted(index.entries) == sorted(structure.entries)  # the structure's keys


def test_two_matching_objects_need_checkpoint_object(case, tmp_path):
  with pytest.raises(errors.UserError, match='holds 2 objects that match .*: a, b; choose one '
                                             'with --checkpoint_object'):
    tf2ckpt.export(case['two'], str(tmp_path / 'out'), case['structure'])
  tf2ckpt.export(case['two'], str(tmp_path / 'out'), case['structure'], checkpoint_object='b')
  np.testing.assert_array_equal(_serve(str(tmp_path / 'out')), _answer(5.0, {7: 70.0}))
  with pytest.raises(errors.UserError, match='has no object a/nope: a holds kernel, table'):
    tf2ckpt.export(case['two'], str(tmp_path / 'x'), case['structure'],
                   checkpoint_object='a/nope')


class _WithState(_Model):
  """_Model with state the checkpoint of a _Model lacks: `seen` (no signature reads it, as a
  compiled Keras model's metric accumulators) and `bias` (read when `reads_bias`)."""

  def __init__(self, reads_bias):
    super().__init__(1.0, {})
    self.seen = tf.Variable(7, dtype=tf.int64)
    self.bias = tf.Variable(0.5)
    self.reads_bias = reads_bias

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name='ids')])
  def serve(self, ids):
    y = self.kernel[0] * tf.cast(ids, tf.float32) + self.table.lookup(ids)
    return {'y': y + self.bias if self.reads_bias else y}


@pytest.fixture
def info_log(caplog):
  """caplog with absl's INFO lines."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  caplog.set_level('INFO', logger='absl')
  yield caplog
  logging.set_verbosity(verbosity)


def test_state_no_signature_reads_keeps_the_structures_value(case, tmp_path, info_log):
  model = _WithState(reads_bias=False)
  structure = str(tmp_path / 'structure')
  tf.saved_model.save(model, structure, signatures=model.serve)
  out = str(tmp_path / 'out')
  report = tf2ckpt.export(case['one'], out, structure)
  assert report.checkpoint_object == 'model'
  assert 'kept the structure\'s own value of 2 objects the checkpoint does not hold and no ' \
         'signature reads: bias, seen' in info_log.text
  np.testing.assert_array_equal(_serve(out), _answer(2.0, {3: 30.0}))
  copy = tf.train.load_checkpoint(out + '/variables/variables')
  assert copy.get_tensor('seen/.ATTRIBUTES/VARIABLE_VALUE') == 7


def test_state_a_signature_reads_is_still_refused(case, tmp_path):
  model = _WithState(reads_bias=True)
  structure = str(tmp_path / 'structure')
  tf.saved_model.save(model, structure, signatures=model.serve)
  with pytest.raises(errors.UserError) as caught:
    tf2ckpt.export(case['one'], str(tmp_path / 'out'), structure)
  message = str(caught.value)
  assert '\n' not in message
  assert message.endswith('(closest: model, by path, 2 of 4 variables and tables): bias missing')
  assert not (tmp_path / 'out').exists()


def test_objects_naming_the_same_tensors_are_one_match():
  """The root and an object tracking the same variables under the same names (a Keras model's
  keras_api) are one match, not two."""
  key = 'w/.ATTRIBUTES/VARIABLE_VALUE'
  structure = _graph([({'w': 1}, []), ({}, [('VARIABLE_VALUE', 'w', key)])])
  checkpoint = _graph([({'w': 1, 'keras_api': 2}, []), ({}, [('VARIABLE_VALUE', 'w', key)]),
                       ({'w': 1}, [])])
  plan = tf2ckpt.match(structure, _index([key]), checkpoint, _index([key]))
  assert (plan.object_path, [r.checkpoint_key for r in plan.renames]) == ('', [key])
  # Two objects holding different tensors still are two.
  other = 'x/.ATTRIBUTES/VARIABLE_VALUE'
  checkpoint = _graph([({'w': 1, 'ema': 2}, []), ({}, [('VARIABLE_VALUE', 'w', key)]),
                       ({'w': 3}, []), ({}, [('VARIABLE_VALUE', 'w', other)])])
  with pytest.raises(errors.UserError, match='2 objects that match .*: \\(the root\\), ema'):
    tf2ckpt.match(structure, _index([key]), checkpoint, _index([key, other]))


def test_mismatches_are_listed_and_nothing_is_written(case, tmp_path):
  with pytest.raises(errors.UserError) as caught:
    tf2ckpt.export(case['bad'], str(tmp_path / 'out'), case['structure'])
  assert 'closest: model, by path, 1 of 2 variables and tables' in str(caught.value)
  assert str(caught.value).endswith(
      'tables): kernel has shape [3] in the checkpoint, [2] in the structure')
  assert os.listdir(tmp_path) == []


def test_object_graphs(case, tmp_path):
  graph = tf2ckpt.read_object_graph(checkpoint_index.read_index(case['one']))
  paths = graphs.object_paths(graph)
  assert sorted(p for p in paths.values() if p.count('/') == 0) == ['', 'model', 'optimizer']
  assert {'model/kernel', 'model/table', 'optimizer/step'} <= set(paths.values())
  with tf1.Session(graph=tf.Graph()) as session:
    v = tf1.get_variable('v', initializer=tf.constant(1.0))
    session.run(v.initializer)
    name_based = tf1.train.Saver().save(session, str(tmp_path / 'tf1' / 'c'))
  with pytest.raises(errors.UserError, match='is name-based .* needs a checkpoint written by '
                                             'tf.train.Checkpoint'):
    tf2ckpt.read_object_graph(checkpoint_index.read_index(name_based))


def _graph(nodes):
  """A TrackableObjectGraph: nodes = [(children {name: id}, attributes [(name, full, key)])]."""
  graph = TrackableObjectGraph()
  for children, attributes in nodes:
    node = graph.nodes.add()
    for name, node_id in children.items():
      node.children.add(local_name=name, node_id=node_id)
    for name, full_name, key in attributes:
      node.attributes.add(name=name, full_name=full_name, checkpoint_key=key)
  return graph


def _index(keys, shape=(2,)):
  entries = {}
  for key in keys:
    entry = lean_tf.tensor_bundle_pb2.BundleEntryProto(dtype=tf.float32.as_datatype_enum)
    for n in shape:
      entry.shape.dim.add().size = n
    entries[key] = entry
  return checkpoint_index.Checkpoint('ckpt', 1, entries, {})


def test_match_by_full_name_when_no_path_matches():
  """A Keras export tracks its variables as variables/k: matched by their full names."""
  structure = _graph([({'variables': 1}, []), ({'0': 2}, []),
                      ({}, [('VARIABLE_VALUE', 'dense/kernel', 'variables/0/.ATTRIBUTES/V')])])
  checkpoint = _graph([({'model': 1}, []), ({'dense': 2}, []),
                       ({}, [('VARIABLE_VALUE', 'dense/kernel', 'model/dense/.ATTRIBUTES/V')])])
  plan = tf2ckpt.match(structure, _index(['variables/0/.ATTRIBUTES/V']), checkpoint,
                       _index(['model/dense/.ATTRIBUTES/V']))
  assert (plan.matched_by, plan.object_path, plan.matched, plan.total) == ('full name', '', 1, 1)
  assert [(r.structure_key, r.checkpoint_key) for r in plan.renames] == [
      ('variables/0/.ATTRIBUTES/V', 'model/dense/.ATTRIBUTES/V')]
  # Two checkpoint objects of that full name: ambiguous, said so.
  twice = _graph([({'a': 1, 'b': 2}, []),
                  ({}, [('VARIABLE_VALUE', 'dense/kernel', 'a/.ATTRIBUTES/V')]),
                  ({}, [('VARIABLE_VALUE', 'dense/kernel', 'b/.ATTRIBUTES/V')])])
  with pytest.raises(errors.UserError, match='full name dense/kernel names 2 checkpoint objects '
                                             r'\(a, b\)'):
    tf2ckpt.match(structure, _index(['variables/0/.ATTRIBUTES/V']), twice,
                  _index(['a/.ATTRIBUTES/V', 'b/.ATTRIBUTES/V']))


def test_match_names_what_is_missing_or_different():
  structure = _graph([({'w': 1, 'v': 2}, []), ({}, [('VARIABLE_VALUE', 'w', 'w/.A/V')]),
                      ({}, [('VARIABLE_VALUE', 'v', 'v/.A/V')])])
  checkpoint = _graph([({'m': 1}, []), ({'w': 2}, []),
                       ({}, [('VARIABLE_VALUE', 'x', 'm/w/.A/V')])])
  index = _index(['m/w/.A/V'])
  index.entries['m/w/.A/V'].dtype = tf.int64.as_datatype_enum
  with pytest.raises(errors.UserError) as caught:
    tf2ckpt.match(structure, _index(['w/.A/V', 'v/.A/V']), checkpoint, index)
  assert str(caught.value) == (
      'checkpoint ckpt does not match the structure (none of its objects (m) holds any of the 2 '
      'variables and tables): w is int64 in the checkpoint, float32 in the structure; v missing')
  with pytest.raises(errors.UserError, match=r'checkpoint ckpt does not match the structure \('
                                             r'none of its objects \(m\) holds any of the 1 '):
    tf2ckpt.match(_graph([({'z': 1}, []), ({}, [('VARIABLE_VALUE', 'z', 'z/.A/V')])]),
                  _index(['z/.A/V']), checkpoint, index)
