"""export/from_frozen: a frozen GraphDef becomes a serving SavedModel (and/or GraphDef).

(The demo model, TF Serving's models, every loader and the C API: tests/test_optimize_from_pb.py.)
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.verify import loaders
import small_graphs

tf1 = tf.compat.v1
IDS = [0, 4, 5, 9]


@pytest.fixture(scope='module')
def frozen(tmp_path_factory):
  """small_graphs.stateful_model frozen: {'plain': path, 'kept': path keeping w}."""
  root = tmp_path_factory.mktemp('from_frozen')
  model = small_graphs.stateful_model(root / 'm')
  freeze.graph_from_saved_model(model, str(root / 'plain.pb'))
  freeze.graph_from_saved_model(model, str(root / 'kept.pb'), keep_as_variables='w')
  return {'plain': str(root / 'plain.pb'), 'kept': str(root / 'kept.pb')}


def _answers(model, ids=IDS):
  got = model.run('serving_default', {'ids': np.array(ids)})
  np.testing.assert_allclose(got['y'], small_graphs.stateful_expected(ids))


def _ops(graph_def):
  return {n.op for n in graph_def.node}


def test_big_constants_become_variables_of_the_saved_model(frozen, tmp_path):
  out, graph = str(tmp_path / 'out'), str(tmp_path / 'g.pb')
  result, before, after = from_frozen.saved_model_from_frozen_graph(
      frozen['plain'], output_saved_model_dir=out, output_graph=graph,
      constants_as_variables=1000)
  assert result.saver_def is not None and after.nodes < before.nodes
  saved = loaders.load_saved_model(out)
  _answers(saved)
  assert 'VarHandleOp' in _ops(saved.graph_def)  # w: 4000 bytes
  reader = tf.train.load_checkpoint(out + '/variables/variables')
  assert list(reader.get_variable_to_shape_map()) == ['w']
  plain = loaders.load_frozen_graph(graph)  # the GraphDef keeps its constants
  assert 'VarHandleOp' not in _ops(plain.graph_def)
  _answers(plain)


def test_without_constants_as_variables_and_in_tf_servings_layout(frozen, tmp_path):
  result, _, _ = from_frozen.saved_model_from_frozen_graph(
      frozen['plain'], output_saved_model_dir=str(tmp_path / 'base'), version='auto',
      constants_as_variables=None, grappler=False)
  assert result.saver_def is None
  assert os.listdir(tmp_path / 'base') == ['1']
  assert os.listdir(tmp_path / 'base' / '1' / 'variables') == []
  saved = loaders.load_saved_model(str(tmp_path / 'base' / '1'))
  assert not _ops(saved.graph_def) & {'VarHandleOp', 'VariableV2'}
  _answers(saved)


def test_kept_variables_come_from_the_checkpoint_beside_the_graph(frozen, tmp_path):
  out, graph = str(tmp_path / 'out'), str(tmp_path / 'g.pb')
  from_frozen.saved_model_from_frozen_graph(frozen['kept'], output_saved_model_dir=out,
                                            output_graph=graph)
  reader = tf.train.load_checkpoint(out + '/variables/variables')
  assert sorted(reader.get_variable_to_shape_map()) == ['w']
  _answers(loaders.load_saved_model(out))
  assert sorted(os.listdir(tmp_path)) == ['g.pb', 'g.pb.variables', 'out']
  _answers(loaders.load_frozen_graph(graph))


def test_outputs_are_checked_before_anything_is_read(frozen, tmp_path):
  with pytest.raises(errors.UserError, match='nothing to write'):
    from_frozen.saved_model_from_frozen_graph(frozen['plain'])
  (tmp_path / 'out').mkdir()
  with pytest.raises(errors.UserError, match='out already exists'):
    from_frozen.saved_model_from_frozen_graph(str(tmp_path / 'missing.pb'),
                                              output_saved_model_dir=str(tmp_path / 'out'))
  with pytest.raises(errors.UserError, match='graph file .*missing.pb does not exist'):
    from_frozen.saved_model_from_frozen_graph(str(tmp_path / 'missing.pb'),
                                              output_graph=str(tmp_path / 'g.pb'))


def _plain_graph(tmp_path):
  """A GraphDef not written by freezer.py: x -> y = x * 3, an op `init`, and z = ReadFile(x)."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    tf.multiply(x, 3.0, name='y')
    tf.no_op(name='init')
    tf.io.read_file(tf1.placeholder(tf.string, [], name='path'), name='z')
  path = str(tmp_path / 'plain.pb')
  frozen_graph.write_graph_def(graph.as_graph_def(), path)
  return path


def test_frozen_from_file(frozen, tmp_path):
  plain = _plain_graph(tmp_path)
  with pytest.raises(errors.UserError, match='plain.pb was not written by freezer.py: give both '
                                             '--inputs and --outputs'):
    from_frozen.frozen_from_file(plain)
  model = from_frozen.frozen_from_file(plain, ['x'], ['y:0'], init_op='init', tags=['t'])
  assert list(model.signatures) == ['serving_default'] and model.tags == ['t']
  assert model.table_init_op == 'init'
  with pytest.raises(errors.UserError, match='--init_op names nope, which is not an op'):
    from_frozen.frozen_from_file(plain, ['x'], ['y'], init_op='nope')
  model = from_frozen.frozen_from_file(frozen['plain'], signature_names=['embeddings'])
  assert list(model.signatures) == ['embeddings'] and model.table_init_op
  assert 'freezer_metadata' not in {n.name for n in model.graph_def.node}
  with pytest.raises(errors.UserError, match="has no signature 'nope'; choose --signature_def "
                                             'from: embeddings, serving_default'):
    from_frozen.frozen_from_file(frozen['plain'], signature_names=['nope'])
  # --inputs/--outputs replace the signatures; the saver of kept variables stays.
  kept = from_frozen.frozen_from_file(frozen['kept'], ['ids'], ['y'])
  assert list(kept.signatures) == ['serving_default'] and kept.saver_def is not None


def test_unsafe_ops_the_signatures_run_are_refused(tmp_path):
  plain = _plain_graph(tmp_path)
  out = str(tmp_path / 'out')
  with pytest.raises(errors.UserError, match='runs ops that touch files.*: z \\(ReadFile\\)'):
    from_frozen.saved_model_from_frozen_graph(plain, output_saved_model_dir=out,
                                              inputs=['path'], outputs=['z'])
  result, _, _ = from_frozen.saved_model_from_frozen_graph(
      plain, output_saved_model_dir=out, inputs=['x'], outputs=['y'], grappler=False)
  assert 'ReadFile' not in _ops(result.graph_def)  # outside the signature: cut
  got = loaders.load_saved_model(out).run('serving_default', {'x': np.float32([1, 2])})
  np.testing.assert_array_equal(got['y'], [3.0, 6.0])


def test_serving_graph_with_and_without_grappler(frozen):
  model = from_frozen.frozen_from_file(frozen['plain'])
  cut, before, after = from_frozen.serving_graph(model, grappler=False)
  optimized, _, after_grappler = from_frozen.serving_graph(model, grappler=True)
  # freezer.py cut the graph already; Grappler folds what the constants make constant.
  assert before.nodes == after.nodes > after_grappler.nodes
  for result in (cut, optimized):
    names = {n.name for n in result.graph_def.node}
    assert {'ids', 'y', 'rows', result.table_init_op} <= names


def test_tensorboard_graph(frozen, tmp_path):
  from_frozen.write_tensorboard_graph(from_frozen.frozen_from_file(frozen['plain']).graph_def,
                                      str(tmp_path / 'log'))
  events = os.listdir(tmp_path / 'log')
  assert len(events) == 1 and events[0].startswith('events.out.tfevents.')
  records = list(tf.data.TFRecordDataset(str(tmp_path / 'log' / events[0])))
  graphs = [tf.compat.v1.Event.FromString(r.numpy()).graph_def for r in records]
  assert any(tf1.GraphDef.FromString(g).node for g in graphs if g)
