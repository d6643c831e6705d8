"""freeze (its __init__): the one entry point reads and checks the SavedModel once, picks the
freezer, and reports what it wrote.

(The demo model, TF Serving's models and the command line: tests/test_freezer.py.)
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.formats import frozen_graph
from freezerlib.verify import loaders
import small_graphs

tf1 = tf.compat.v1
IDS = [0, 4, 5, 9]


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  return small_graphs.stateful_model(tmp_path_factory.mktemp('freeze') / 'm')


def _answers(path):
  got = loaders.load_frozen_graph(path).run('serving_default', {'ids': np.array(IDS)})
  np.testing.assert_allclose(got['y'], small_graphs.stateful_expected(IDS))


@pytest.mark.parametrize('streaming_allowed,freezer', [(True, 'streaming'),
                                                      (False, 'in_memory')])
def test_either_freezer_reports_the_same(model, tmp_path, streaming_allowed, freezer):
  out = str(tmp_path / 'f.pb')
  result = freeze.graph_from_saved_model(model, out, streaming_allowed=streaming_allowed)
  assert (result.freezer, result.path, result.bytes) == (freezer, out, os.path.getsize(out))
  assert result.variables == ['b', 'emb/part_0', 'emb/part_1', 'emb/part_2', 'w']
  assert [t.name for t in result.tables] == ['table'] and result.kept == []
  assert sorted(result.model.signatures) == ['embeddings', 'serving_default']
  # The report's graph is the structure: the frozen variables' values are in the file only.
  nodes = {n.name: n for n in result.model.graph_def.node}
  assert all(nodes[v].op == 'Const' and 'value' not in nodes[v].attr for v in result.variables)
  assert result.model.table_init_op in nodes
  _answers(out)


def test_keep_as_variables_and_overwrite(model, tmp_path):
  out = str(tmp_path / 'f.pb')
  result = freeze.graph_from_saved_model(model, out, keep_as_variables='w')
  assert result.kept == ['w'] and 'w' not in result.variables
  assert sorted(os.listdir(tmp_path)) == ['f.pb', 'f.pb.variables']
  _answers(out)
  with pytest.raises(errors.UserError, match='f.pb already exists; pass --overwrite'):
    freeze.graph_from_saved_model(model, out)
  with pytest.raises(errors.UserError, match='--keep_as_variables needs the streaming freezer'):
    freeze.graph_from_saved_model(model, out, overwrite=True, keep_as_variables='w',
                                  streaming_allowed=False)
  # Replaced by a graph that keeps nothing: the old checkpoint beside it goes too.
  freeze.graph_from_saved_model(model, out, overwrite=True, streaming_allowed=False)
  assert sorted(os.listdir(tmp_path)) == ['f.pb']
  _answers(out)
  assert frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(out), out).saver_def is None


def test_read_checked_refuses_before_anything_is_written(tmp_path):
  asset = tmp_path / 'note.txt'
  asset.write_text('hello')

  def reads_its_asset():
    path = tf.constant(str(asset), name='asset_path')
    tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, path)
    x = tf1.placeholder(tf.int32, [], name='x')
    return {'x': x}, {'n': tf.strings.length(tf.io.read_file(path)) + x}

  export_dir = small_graphs.save_tf1(tmp_path / 'm', reads_its_asset)
  with pytest.raises(errors.UserError, match=r"signature 'serving_default' of .*/m opens the asset "
                                             r"file 'note.txt' each time it runs \(op ReadFile"):
    freeze.graph_from_saved_model(export_dir, str(tmp_path / 'f.pb'), allow_ops=['ReadFile'])
  module = tf.Module()
  module.f = tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'tf2'), signatures=module.f)
  with pytest.raises(errors.UserError, match='--keep_as_variables works on TF1 SavedModels'):
    freeze.graph_from_saved_model(str(tmp_path / 'tf2'), str(tmp_path / 'f.pb'),
                                  keep_as_variables='1MB')
  with pytest.raises(errors.UserError, match='is not a size'):
    freeze.graph_from_saved_model(str(tmp_path / 'tf2'), str(tmp_path / 'f.pb'),
                                  keep_as_variables='1XB')
  assert sorted(os.listdir(tmp_path)) == ['m', 'note.txt', 'tf2']
  result = freeze.graph_from_saved_model(str(tmp_path / 'tf2'), str(tmp_path / 'f.pb'))
  assert result.freezer == 'tf2' and result.variables == []
  got = loaders.load_frozen_graph(str(tmp_path / 'f.pb')).run('serving_default',
                                                              {'x': np.float32(2.0)})
  assert list(got.values()) == [3.0]
