"""optimize_from_pb.py --constants_as_variables: big constants go to the SavedModel's
variables/, restored on load; the GraphDef output keeps them as constants."""

import io

import numpy as np
import pytest

import capi_runner
from conftest import assert_one_line_error
from conftest import meta_graph_of
from conftest import run_main_as_process
from conftest import run_script
from conftest import run_tf2_signatures
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders
import optimize_from_pb  # its command line, in-process once

# On the tiny model's frozen graph, constants of 100 bytes or more: the embedding partitions,
# hidden_0's kernel and the tables' keys and values (string keys included).
THRESHOLD = 100


def _check(reference, new):
  out = io.StringIO()
  passed, results = compare.check(reference, new, num_examples=120,
                                                batch_sizes=(), out=out)
  assert passed and len(results) == 4, out.getvalue()


def _big_consts(graph_def):
  return {n.name for n in graph_def.node
          if n.op == 'Const' and n.attr['value'].tensor.ByteSize() >= THRESHOLD}


@pytest.fixture(scope='module')
def redumped(tiny_frozen, tmp_path_factory):
  root = tmp_path_factory.mktemp('consts')
  paths = {'saved_model': str(root / 'serving'), 'graph': str(root / 'optimized.pb'),
           'plain': str(root / 'plain')}
  # Without the serving rewrites (tests/freezerlib/transforms/ and tests/test_serving_tables.py
  # cover those), so the constants are the frozen graph's own.
  from_frozen.saved_model_from_frozen_graph(tiny_frozen, paths['saved_model'], paths['graph'],
                            constants_as_variables=THRESHOLD, rewrites=())
  from_frozen.saved_model_from_frozen_graph(
      tiny_frozen, paths['plain'], constants_as_variables=None,
      rewrites=())
  return paths


def test_big_constants_are_variables_of_the_saved_model(tiny_model, tiny_frozen, redumped):
  plain = meta_graph_of(redumped['plain']).graph_def
  moved = _big_consts(plain)
  assert len(moved) >= 8, moved
  assert any(n.attr['dtype'].type == 7 for n in plain.node if n.name in moved)  # DT_STRING
  table_consts = {n for n in moved if n.startswith('freezer/tables/')}
  assert len(table_consts) == 4, moved
  meta_graph = meta_graph_of(redumped['saved_model'])
  nodes = {n.name: n for n in meta_graph.graph_def.node}
  saver = saved_model.saver_nodes(meta_graph.graph_def, meta_graph.saver_def)
  assert not _big_consts(meta_graph.graph_def) - saver  # only the saver's lists of names
  for name in moved - table_consts:  # same names, now reads of variables
    assert nodes[name].op == 'ReadVariableOp', name
  # The tables' contents are neither constants nor variables: the saver imports them straight
  # into the tables, and the init op that filled them is gone with its fills.
  assert not table_consts & set(nodes)
  assert not [n for n in nodes if 'freezer/tables' in n or 'init_tables' in n]
  assert 'saved_model_main_op' not in meta_graph.collection_def
  imports = [n for n in meta_graph.graph_def.node if n.op == 'LookupTableImportV2']
  assert sorted(n.input[0] for n in imports) == ['category_stats', 'user_stats']
  assert all(n.name in saver for n in imports)
  assert meta_graph.saver_def.restore_op_name
  reader = __import__('tensorflow').train.load_checkpoint(
      redumped['saved_model'] + '/variables/variables')
  assert set(reader.get_variable_to_shape_map()) == (moved - table_consts) | {
      'user_stats-keys', 'user_stats-values', 'category_stats-keys', 'category_stats-values'}
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  _check(reference, loaders.load_saved_model(redumped['saved_model']))
  _check(reference, loaders.load_saved_model(redumped['plain']))


def test_graph_output_keeps_constants(tiny_model, redumped):
  graph_def = frozen_graph.read_graph_def(redumped['graph'])
  assert not {n.op for n in graph_def.node} & {'VarHandleOp', 'ReadVariableOp', 'RestoreV2',
                                                'SaveV2'}
  plain = meta_graph_of(redumped['plain']).graph_def
  assert _big_consts(graph_def) - {frozen_graph.METADATA_NODE} == _big_consts(plain)
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  _check(reference, loaders.load_frozen_graph(redumped['graph']))


def test_serves_through_the_c_api_and_tf2(tiny_model, redumped, capi):
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  maker = inputs.InputMaker(reference, seed=5)
  feeds = {k: maker.make(k, 60) for k in reference.signatures}
  served = capi_runner.run_signatures(capi, redumped['saved_model'], feeds)
  loaded = run_tf2_signatures(redumped['saved_model'], feeds)
  for key, feed in feeds.items():
    for name, value in reference.run(key, feed).items():
      np.testing.assert_allclose(served[key][name], value, atol=1e-6, rtol=0, err_msg=name)
      np.testing.assert_allclose(loaded[key][name], value, atol=1e-6, rtol=0, err_msg=name)


def test_bad_size_is_one_line(tiny_frozen, tmp_path, capsys):
  out = tmp_path / 'serving'
  proc = run_script('optimize_from_pb.py', '--input_graph=%s' % tiny_frozen,
                    '--output_saved_model_dir=%s' % out, '--constants_as_variables=12parsecs')
  assert_one_line_error(proc, 'optimize_from_pb.py', '--constants_as_variables=12parsecs')
  assert not out.exists()
  # A size with a fraction, in-process (the conversion loads TensorFlow, already loaded here).
  proc = run_main_as_process(optimize_from_pb, ['--input_graph=%s' % tiny_frozen,
                                                '--output_saved_model_dir=%s' % out,
                                                '--constants_as_variables=0.1KiB'], capsys)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert {n.op for n in meta_graph_of(out).graph_def.node} >= {'VarHandleOp', 'RestoreV2'}
