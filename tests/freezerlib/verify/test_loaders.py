"""verify/loaders: models loaded as their servers load them, run signature by signature."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.verify import loaders
import small_graphs

tf1 = tf.compat.v1
IDS = [0, 4, 5, 9]


def test_tf1_saved_model(tmp_path):
  path = small_graphs.linear_model(tmp_path / 'm', w=3.0, b=0.5)
  model = loaders.load_saved_model(path)
  assert isinstance(model, loaders.Model) and list(model.signatures) == ['serving_default']
  assert model.run('serving_default', {'x': np.float32([1, 2])})['y'].tolist() == [3.5, 6.5]
  assert model.run('serving_default', {'x': np.float32([0])})['y'].tolist() == [0.5]
  assert len(model._callables) == 1  # made once per feeds
  assert model.nodes == len(model.graph_def.node) > 5
  assert model.size_bytes == saved_model.directory_size(path) and model.load_seconds > 0
  model.close()
  shutil.rmtree(os.path.join(path, 'variables'))
  with pytest.raises(errors.UserError, match='cannot load SavedModel .*/m: '):
    loaders.load_saved_model(path)


def test_tf2_saved_model_runs_as_tf_saved_model_load_runs_it(tmp_path):
  module = tf.Module()
  module.v = tf.Variable(4.0)
  module.f = tf.function(lambda x: {'y': x * module.v},
                         input_signature=[tf.TensorSpec([None], tf.float32, name='x')])
  tf.saved_model.save(module, str(tmp_path / 'm'), signatures=module.f)
  model = loaders.load_saved_model(str(tmp_path / 'm'))
  assert isinstance(model, loaders.LoadedModel) and model.session is None
  assert list(model.signatures) == ['serving_default']
  assert model.run('serving_default', {'x': [1.0, 2.0]})['y'].tolist() == [4.0, 8.0]
  assert model.nodes == len(model.graph_def.node)
  # Feeds the signature cannot take are ValueErrors, as a session's are (compare.run_or_explain
  # makes them one line).
  with pytest.raises(ValueError):
    model.run('serving_default', {'x': ['a']})
  model.close()


def test_frozen_graph_with_tables_and_kept_variables(tmp_path):
  path = small_graphs.stateful_model(tmp_path / 'm')
  for name, keep in (('plain.pb', None), ('kept.pb', 'w,table')):
    out = str(tmp_path / name)
    freeze.graph_from_saved_model(path, out, keep_as_variables=keep)
    model = loaders.load_frozen_graph(out)
    got = model.run('serving_default', {'ids': np.array(IDS)})
    np.testing.assert_allclose(got['y'], small_graphs.stateful_expected(IDS))
    beside = saved_model.directory_size(out + '.variables') if keep else 0
    assert model.size_bytes == os.path.getsize(out) + beside
  frozen = frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(out), out)
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(frozen.graph_def, name='')
    with tf1.Session(graph=graph) as session:
      with pytest.raises(errors.UserError, match='cannot restore .*nope: '):
        loaders.restore(session, frozen, str(tmp_path / 'nope'))


def test_frozen_graphs_that_cannot_be_served(tmp_path):
  plain = str(tmp_path / 'plain.pb')
  graph = tf.Graph()
  with graph.as_default():
    tf.identity(tf1.placeholder(tf.float32, name='x'), name='y')
  frozen_graph.write_graph_def(graph.as_graph_def(), plain)
  with pytest.raises(errors.UserError, match='plain.pb has no freezer_metadata node: it was not '
                                             'written by freezer.py'):
    loaders.load_frozen_graph(plain)
  unknown = frozen_graph.FrozenModel(
      graph_def=small_graphs.graph_def('node { name: "a" op: "NoSuchOp" }'), signatures={},
      tags=['serve'])
  with pytest.raises(errors.UserError, match='cannot import u.pb: .*NoSuchOp'):
    loaders.load_frozen_graph('u.pb', unknown)


def test_sparse_and_ragged_values_fed_and_read_part_by_part():
  info = small_graphs.signature({'x': 'x:0'}, {}).inputs['x']
  assert loaders.feed_arrays(info, [1, 2]) == [('x:0', [1, 2])]
  sparse_value = loaders.sparse_value([[0, 1]], [7.0], [2, 3])
  with pytest.raises(ValueError, match='a dense input is fed a SparseTensorValue'):
    loaders.feed_arrays(info, sparse_value)
  sparse = lean_tf.meta_graph_pb2.TensorInfo()
  sparse.coo_sparse.indices_tensor_name = 'i:0'
  sparse.coo_sparse.values_tensor_name = 'v:0'
  sparse.coo_sparse.dense_shape_tensor_name = 's:0'
  fed = loaders.feed_arrays(sparse, sparse_value)
  assert [(n, a.tolist()) for n, a in fed] == [('i:0', [[0, 1]]), ('v:0', [7.0]), ('s:0', [2, 3])]
  assert fed[0][1].dtype == np.int64
  back = loaders.output_value(sparse, [a for _, a in fed])
  assert back.indices.tolist() == [[0, 1]] and back.dense_shape.tolist() == [2, 3]
  assert loaders.output_tensors(sparse) == ['i:0', 'v:0', 's:0']
  with pytest.raises(ValueError, match='a sparse input is fed a ndarray'):
    loaders.feed_arrays(sparse, np.zeros(2))
  ragged = lean_tf.meta_graph_pb2.TensorInfo()
  for name, dtype in (('values:0', tf.float32), ('outer:0', tf.int32), ('inner:0', tf.int32)):
    ragged.composite_tensor.components.add(name=name, dtype=dtype.as_datatype_enum)
  value = loaders.ragged_value([1.0, 2.0, 3.0], [0, 2], [0, 1, 3])  # [[[1], [2, 3]]]
  assert tf.RaggedTensor.from_nested_row_splits(
      value.flat_values, value.nested_row_splits).to_list() == [[[1.0], [2.0, 3.0]]]
  fed = loaders.feed_arrays(ragged, value)
  assert [n for n, _ in fed] == ['values:0', 'outer:0', 'inner:0']
  assert fed[1][1].dtype == fed[2][1].dtype == np.int32  # as the signature states, not int64
  assert loaders.output_value(ragged, [a for _, a in fed]).to_list() == [[[1.0], [2.0, 3.0]]]
  with pytest.raises(ValueError, match='a composite input of 3 components is fed 2'):
    loaders.feed_arrays(ragged, loaders.ragged_value([1.0], [0, 1]))
