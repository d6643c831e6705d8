"""optimize_from_pb.py: frozen graph -> lean serving SavedModel that every loader serves.

The tiny model_gen model goes through the README's command; TF Serving's half_plus_two and
half_plus_three go through the whole freeze path and must give the values their README lists,
through the Python loaders and through TensorFlow's C API (the C++ loader TF Serving uses).
"""

import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from conftest import assert_one_line_error
from conftest import meta_graph_of
from conftest import run_main_as_process
from conftest import run_script
from conftest import run_tf2_signatures
from conftest import tf_serving_model
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.verify import inputs
from freezerlib.verify import loaders
import optimize_from_pb  # its command line, in-process for one bad input

tf1 = tf.compat.v1

TINY_PLACEHOLDERS = {'user_id', 'item_id', 'category', 'dense'}
# Training-only op types: the reader, the optimizer, the saver, summaries, variables, the table
# updates. Each is in model_gen's training SavedModel (checked below), none may be served.
TRAINING_OPS = {'IteratorGetNext', 'OneShotIterator', 'ResourceApplyAdam', 'SaveV2', 'RestoreV2',
                'ScalarSummary', 'VarHandleOp', 'ReadVariableOp', 'AssignVariableOp',
                'LookupTableInsertV2'}
HALF_PLUS_TWO_METHODS = {
    'serving_default': 'tensorflow/serving/predict',
    'classify_x_to_y': 'tensorflow/serving/classify',
    'regress_x_to_y': 'tensorflow/serving/regress',
    'regress_x_to_y2': 'tensorflow/serving/regress',
    'regress_x2_to_y3': 'tensorflow/serving/regress',
}


def _example(x):
  feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
  return tf.train.Example(features=tf.train.Features(feature={'x': feature})).SerializeToString()


# signature key -> (feeds by input key, expected outputs by output key). half_plus_two's README:
# y = 0.5 x + 2, y2 = 0.5 x + 3 (from the Example's x), y3 = 0.5 x2 + 3.
HALF_PLUS_TWO_CASES = {
    'serving_default': ({'x': np.float32([[1], [2]])}, {'y': np.float32([[2.5], [3.0]])}),
    'regress_x2_to_y3': ({'inputs': np.float32([[4]])}, {'outputs': np.float32([[5.0]])}),
    'regress_x_to_y': ({'inputs': np.array([_example(4.0)], dtype=object)},
                       {'outputs': np.float32([[4.0]])}),
    'regress_x_to_y2': ({'inputs': np.array([_example(4.0)], dtype=object)},
                        {'outputs': np.float32([[5.0]])}),
    'classify_x_to_y': ({'inputs': np.array([_example(4.0), _example(-1.5)], dtype=object)},
                        {'scores': np.float32([[4.0], [1.25]])}),
}
HALF_PLUS_THREE_CASES = {
    'serving_default': ({'x': np.float32([[1], [2]])}, {'y': np.float32([[3.5], [4.0]])}),
    'tensorflow/serving/regress': ({'inputs': np.array([_example(4.0)], dtype=object)},
                                   {'outputs': np.float32([[5.0]])}),
}


# ------------------------------------------------------------------------------------------
# Helpers


_meta_graph = meta_graph_of


def _all_ops(graph_def):
  ops = collections.Counter(n.op for n in graph_def.node)
  for function in graph_def.library.function:
    ops.update(n.op for n in function.node_def)
  return ops


def _run_tf1(export_dir, feeds_by_signature):
  """{sig: {output: array}} through tf.compat.v1.saved_model.loader.load."""
  results = {}
  with tf1.Session(graph=tf.Graph()) as sess:
    meta_graph = tf1.saved_model.loader.load(sess, ['serve'], str(export_dir))
    for key, feeds in feeds_by_signature.items():
      sig = meta_graph.signature_def[key]
      fetches = {k: v.name for k, v in sig.outputs.items()}
      results[key] = sess.run(fetches, {sig.inputs[k].name: v for k, v in feeds.items()})
  return results


_run_tf2 = run_tf2_signatures


_run_capi = capi_runner.run_signatures


_RUNNERS = {'tf1_loader': lambda runner, d, f: _run_tf1(d, f),
            'tf2_loader': lambda runner, d, f: _run_tf2(d, f),
            'c_api': _run_capi}


def _assert_outputs_equal(got, expected, atol=1e-6):
  assert sorted(got) == sorted(expected)
  for key in expected:
    assert sorted(got[key]) == sorted(expected[key]), key
    for out in expected[key]:
      assert np.shape(got[key][out]) == np.shape(expected[key][out]), (key, out)
      np.testing.assert_allclose(got[key][out], expected[key][out], rtol=1e-6, atol=atol,
                                 err_msg='%s/%s' % (key, out))


def _freeze_and_optimize(saved_model_dir, out_dir, **kwargs):
  frozen_path = str(out_dir / 'frozen.pb')
  freeze.graph_from_saved_model(saved_model_dir, frozen_path)
  serving = str(out_dir / 'serving')
  result = from_frozen.saved_model_from_frozen_graph(frozen_path, serving, **kwargs)
  return frozen_path, serving, result


# ------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope='module')
def tiny_reference(tiny_model):
  """The original training SavedModel, loaded with the TF1 loader (loaders.Model)."""
  model = loaders.load_saved_model(tiny_model['saved_model'])
  yield model
  model.close()


@pytest.fixture(scope='module')
def tiny_feeds(tiny_reference):
  """{sig: {input: array}}: 64 rows per signature, ids half known table keys, half unseen."""
  maker = inputs.InputMaker(tiny_reference, seed=0)
  return {key: maker.make(key, 64) for key in sorted(tiny_reference.signatures)}


@pytest.fixture(scope='module')
def tiny_expected(tiny_reference, tiny_feeds):
  """The original model's outputs on `tiny_feeds`, run directly on its TF1 session."""
  results = {}
  for key, feeds in tiny_feeds.items():
    sig = tiny_reference.signatures[key]
    graph = tiny_reference.graph
    fetches = {k: graph.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}
    results[key] = tiny_reference.session.run(
        fetches, {graph.get_tensor_by_name(sig.inputs[k].name): v for k, v in feeds.items()})
  return results


@pytest.fixture(scope='module')
def tiny_serving(tiny_frozen, tmp_path_factory):
  """The README's command on the tiny frozen graph: {'dir', 'proc', 'input_digest_before'}."""
  out = tmp_path_factory.mktemp('tiny_serving') / 'serving'
  before = tree_digest(tiny_frozen)
  proc = run_script('optimize_from_pb.py', '--input_graph=%s' % tiny_frozen,
                    '--output_saved_model_dir=%s' % out)
  return {'dir': str(out), 'proc': proc, 'input_digest_before': before}


@pytest.fixture(scope='module')
def half_plus_two_plain(tmp_path_factory):
  """half_plus_two frozen by TensorFlow's own convert_variables_to_constants: no metadata."""
  src = tf_serving_model('saved_model_half_plus_two_cpu')
  with tf1.Session(graph=tf.Graph()) as sess:
    tf1.saved_model.loader.load(sess, ['serve'], src)
    graph_def = tf1.graph_util.convert_variables_to_constants(
        sess, sess.graph.as_graph_def(), ['y', 'y2', 'y3'])
  path = tmp_path_factory.mktemp('plain') / 'half_plus_two_plain.pb'
  path.write_bytes(graph_def.SerializeToString())
  return str(path)


@pytest.fixture(scope='module')
def half_plus_two(tmp_path_factory):
  src = tf_serving_model('saved_model_half_plus_two_cpu')
  frozen, serving, (result, before, after) = _freeze_and_optimize(
      src, tmp_path_factory.mktemp('half_plus_two'))
  return {'src': src, 'frozen': frozen, 'dir': serving, 'result': result}


@pytest.fixture(scope='module')
def half_plus_three(tmp_path_factory):
  src = tf_serving_model('saved_model_half_plus_three')
  frozen, serving, (result, before, after) = _freeze_and_optimize(
      src, tmp_path_factory.mktemp('half_plus_three'))
  return {'src': src, 'frozen': frozen, 'dir': serving, 'result': result}


# ------------------------------------------------------------------------------------------
# The tiny model through the README's command


def test_readme_command_writes_serving_model(tiny_serving, tiny_frozen):
  proc = tiny_serving['proc']
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert os.path.isfile(os.path.join(tiny_serving['dir'], 'saved_model.pb'))
  assert tree_digest(tiny_frozen) == tiny_serving['input_digest_before']
  parent = os.path.dirname(tiny_serving['dir'])
  assert sorted(os.listdir(parent)) == ['serving']  # no temporary directory left beside it


def test_tiny_graph_is_cut_to_serving(tiny_serving, tiny_model):
  original = _meta_graph(tiny_model['saved_model'])
  # The checks below mean something only because the training graph has all of these.
  assert TRAINING_OPS <= set(_all_ops(original.graph_def))
  assert any('Dataset' in op for op in _all_ops(original.graph_def))

  meta_graph = _meta_graph(tiny_serving['dir'])
  graph_def = meta_graph.graph_def
  ops = _all_ops(graph_def)
  assert not TRAINING_OPS & set(ops), TRAINING_OPS & set(ops)
  assert not [op for op in ops if 'Dataset' in op or 'Iterator' in op or 'Summary' in op]
  assert not graph_def.library.function  # the reader's map function is gone with the reader
  # Placeholders named after the signature keys, with the dtypes the reader produced.
  placeholders = {n.name: n for n in graph_def.node if n.op == 'Placeholder'}
  assert set(placeholders) == TINY_PLACEHOLDERS
  assert placeholders['user_id'].attr['dtype'].type == tf.int64.as_datatype_enum
  assert placeholders['category'].attr['dtype'].type == tf.string.as_datatype_enum
  assert [d.size for d in placeholders['dense'].attr['shape'].shape.dim] == [-1, 3]
  for sig in meta_graph.signature_def.values():
    for key, info in sig.inputs.items():
      assert info.name == key + ':0'
  # Both tables are filled, by the main op every loader runs.
  assert ops['LookupTableImportV2'] == 2
  main_op = meta_graph.collection_def['saved_model_main_op'].node_list.value
  assert len(main_op) == 1
  assert not [n.name for n in graph_def.node if n.device]
  # No variables left to restore.
  assert not os.listdir(os.path.join(tiny_serving['dir'], 'variables'))


def test_tiny_keeps_signature_keys_methods_and_tensor_keys(tiny_serving, tiny_model):
  original = _meta_graph(tiny_model['saved_model']).signature_def
  new = _meta_graph(tiny_serving['dir']).signature_def
  assert sorted(new) == sorted(original) == ['embeddings', 'serving_default']
  for key in original:
    assert new[key].method_name == original[key].method_name
    assert sorted(new[key].inputs) == sorted(original[key].inputs)
    assert sorted(new[key].outputs) == sorted(original[key].outputs)
    for name, info in original[key].inputs.items():
      assert new[key].inputs[name].dtype == info.dtype


def test_tiny_feeds_hit_the_tables(tiny_feeds, tiny_expected, tiny_model):
  """The comparisons below would catch empty tables: feeds hold known and unseen user ids."""
  keys = tf.train.load_checkpoint(tiny_model['checkpoint']).get_tensor('user_stats-keys')
  user_ids = tiny_feeds['embeddings']['user_id']
  known = np.isin(user_ids, keys)
  assert 5 < known.sum() < len(user_ids) - 5
  stats = tiny_expected['embeddings']['user_stats']
  assert np.all(stats[known, 0] >= 1)  # every key was inserted with at least one impression
  assert np.all(stats[~known] == 0)  # the table's default
  categories = tiny_feeds['serving_default']['category']
  assert 0 < sum(c.startswith(b'cat_') for c in categories) < len(categories)


def test_tiny_c_api_serves_original_outputs(capi, tiny_serving, tiny_feeds, tiny_expected,
                                            tiny_model):
  got = _run_capi(capi, tiny_serving['dir'], tiny_feeds)
  _assert_outputs_equal(got, tiny_expected)
  keys = tf.train.load_checkpoint(tiny_model['checkpoint']).get_tensor('user_stats-keys')
  known = np.isin(tiny_feeds['embeddings']['user_id'], keys)
  stats = got['embeddings']['user_stats']
  assert np.all(stats[known, 0] >= 1) and np.all(stats[~known] == 0)


@pytest.mark.parametrize('loader', ['tf1_loader', 'tf2_loader'])
def test_tiny_python_loaders_serve_original_outputs(loader, tiny_serving, tiny_feeds,
                                                    tiny_expected):
  got = _RUNNERS[loader](None, tiny_serving['dir'], tiny_feeds)
  _assert_outputs_equal(got, tiny_expected)


def test_saved_model_cli_shows_every_signature(tiny_serving):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  proc = subprocess.run([cli, 'show', '--all', '--dir', tiny_serving['dir']],
                        capture_output=True, text=True, timeout=300, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "signature_def['embeddings']" in out
  assert "signature_def['serving_default']" in out
  for name in TINY_PLACEHOLDERS:
    assert 'name: %s:0' % name in out
  assert out.count('Method name is: tensorflow/serving/predict') == 2
  assert 'IteratorGetNext' not in out


# ------------------------------------------------------------------------------------------
# Options, as functions


def test_log_dir_and_nooptimize_give_equal_outputs(tiny_frozen, tmp_path, tiny_feeds,
                                                   tiny_expected):
  log_dir = tmp_path / 'logs'
  _, before, optimized = from_frozen.saved_model_from_frozen_graph(
      tiny_frozen, str(tmp_path / 'default'), log_dir=str(log_dir))
  _, _, plain = from_frozen.saved_model_from_frozen_graph(tiny_frozen, str(tmp_path / 'nooptimize'),
                                          grappler=False)
  # Grappler ran by default and not with grappler=False (--nooptimize): it removes nodes.
  # (freezer.py already left the reader out, so the cut alone removes nothing here.)
  assert optimized.nodes < plain.nodes == before.nodes
  assert before.ops['IteratorGetNext'] == 0 and before.ops['Placeholder'] == 4
  assert len(_meta_graph(tmp_path / 'default').graph_def.node) == optimized.nodes
  assert len(_meta_graph(tmp_path / 'nooptimize').graph_def.node) == plain.nodes

  graphs = {}
  for phase in ('before', 'after'):
    files = list((log_dir / phase).glob('events.out.tfevents.*'))
    assert len(files) == 1, phase
    for event in tf1.train.summary_iterator(str(files[0])):
      if event.graph_def:
        graphs[phase] = tf1.GraphDef.FromString(event.graph_def)
  assert len(graphs['before'].node) == before.nodes > len(graphs['after'].node)
  assert {n.name for n in graphs['after'].node if n.op == 'Placeholder'} == TINY_PLACEHOLDERS
  assert len(graphs['after'].node) == optimized.nodes

  default_out = _run_tf1(tmp_path / 'default', tiny_feeds)
  plain_out = _run_tf1(tmp_path / 'nooptimize', tiny_feeds)
  _assert_outputs_equal(default_out, tiny_expected)
  _assert_outputs_equal(plain_out, default_out)


def test_devices_are_cleared(tiny_frozen, tmp_path, tiny_feeds, tiny_expected):
  """A graph pinned to a device this machine lacks serves once optimize_from_pb cleared it."""
  graph_def = frozen_graph.read_graph_def(tiny_frozen)
  for node in graph_def.node:
    node.device = '/job:worker/replica:0/task:3/device:GPU:7'
  pinned = tmp_path / 'pinned.pb'
  pinned.write_bytes(graph_def.SerializeToString())
  from_frozen.saved_model_from_frozen_graph(str(pinned), str(tmp_path / 'serving'))
  assert not [n.name for n in _meta_graph(tmp_path / 'serving').graph_def.node if n.device]
  _assert_outputs_equal(_run_tf1(tmp_path / 'serving', tiny_feeds), tiny_expected)


def test_existing_output_needs_overwrite(half_plus_two, tmp_path):
  out = tmp_path / 'serving'
  out.mkdir()
  (out / 'keep.txt').write_text('old model')
  digest = tree_digest(out)
  with pytest.raises(errors.UserError, match='already exists'):
    from_frozen.saved_model_from_frozen_graph(half_plus_two['frozen'], str(out))
  assert tree_digest(out) == digest

  from_frozen.saved_model_from_frozen_graph(half_plus_two['frozen'], str(out), overwrite=True)
  assert sorted(os.listdir(out)) == ['saved_model.pb', 'variables']
  assert sorted(os.listdir(tmp_path)) == ['serving']
  got = _run_tf1(out, {'serving_default': {'x': np.float32([[1], [2]])}})
  np.testing.assert_array_equal(got['serving_default']['y'], np.float32([[2.5], [3.0]]))


def test_graph_def_not_from_freezer_with_inputs_outputs(half_plus_two_plain, tmp_path, capi):
  digest = tree_digest(half_plus_two_plain)
  out = tmp_path / 'serving'
  result, _, _ = from_frozen.saved_model_from_frozen_graph(
      half_plus_two_plain, str(out), inputs=['x:0'],
      outputs=['y:0'])
  assert tree_digest(half_plus_two_plain) == digest
  meta_graph = _meta_graph(out)
  assert sorted(meta_graph.signature_def) == ['serving_default']
  sig = meta_graph.signature_def['serving_default']
  assert sig.method_name == 'tensorflow/serving/predict'
  assert sorted(sig.inputs) == ['x'] and sorted(sig.outputs) == ['y']
  # x was computed from the parsed tf.Example; now it is fed, so the parser is cut away.
  ops = _all_ops(meta_graph.graph_def)
  assert 'ParseExample' not in ops and ops['Placeholder'] == 1
  feeds = {'serving_default': {'x': np.float32([[1], [2]])}}
  expected = {'serving_default': {'y': np.float32([[2.5], [3.0]])}}
  _assert_outputs_equal(_run_tf1(out, feeds), expected, atol=0)
  _assert_outputs_equal(_run_capi(capi, out, feeds), expected, atol=0)


# ------------------------------------------------------------------------------------------
# TF Serving's models through the whole freeze path


def test_half_plus_two_keeps_signatures_and_clears_devices(half_plus_two):
  original = _meta_graph(half_plus_two['src'])
  new = _meta_graph(half_plus_two['dir'])
  assert {k: v.method_name for k, v in new.signature_def.items()} == HALF_PLUS_TWO_METHODS
  for key, sig in original.signature_def.items():
    assert sorted(new.signature_def[key].inputs) == sorted(sig.inputs)
    assert sorted(new.signature_def[key].outputs) == sorted(sig.outputs)
  assert [n for n in original.graph_def.node if n.device]  # the original pins /device:CPU:0
  assert not [n.name for n in new.graph_def.node if n.device]
  assert not {'VariableV2', 'Assign', 'SaveV2', 'RestoreV2'} & set(_all_ops(new.graph_def))


@pytest.mark.parametrize('loader', ['tf1_loader', 'tf2_loader', 'c_api'])
def test_half_plus_two_readme_values(loader, half_plus_two, capi):
  feeds = {k: v[0] for k, v in HALF_PLUS_TWO_CASES.items()}
  expected = {k: v[1] for k, v in HALF_PLUS_TWO_CASES.items()}
  # The original gives these values too (so the table above is the README's truth).
  _assert_outputs_equal(_run_tf1(half_plus_two['src'], feeds), expected, atol=0)
  _assert_outputs_equal(_RUNNERS[loader](capi, half_plus_two['dir'], feeds), expected, atol=0)


def test_half_plus_three_keeps_signatures(half_plus_three):
  original = _meta_graph(half_plus_three['src']).signature_def
  new = _meta_graph(half_plus_three['dir']).signature_def
  assert sorted(new) == sorted(original) == ['serving_default', 'tensorflow/serving/regress']
  for key in original:
    assert new[key].method_name == original[key].method_name
    assert sorted(new[key].inputs) == sorted(original[key].inputs)
    assert sorted(new[key].outputs) == sorted(original[key].outputs)


@pytest.mark.parametrize('loader', ['tf1_loader', 'tf2_loader', 'c_api'])
def test_half_plus_three_readme_values(loader, half_plus_three, capi):
  # tf.saved_model.load refuses the original half_plus_three itself (its SignatureDefs carry no
  # shapes, which TF reads as scalars); the re-dumped model states the graph's real shapes.
  feeds = {k: v[0] for k, v in HALF_PLUS_THREE_CASES.items()}
  expected = {k: v[1] for k, v in HALF_PLUS_THREE_CASES.items()}
  _assert_outputs_equal(_run_tf1(half_plus_three['src'], feeds), expected, atol=0)
  _assert_outputs_equal(_RUNNERS[loader](capi, half_plus_three['dir'], feeds), expected, atol=0)


# ------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, nothing left behind, inputs unchanged


def _bad_input(kind, tmp_path, half_plus_two_plain, half_plus_two):
  """(arguments, the path or name the error must give, input path, output path)."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  out = tmp_path / 'out' / 'serving'
  if kind == 'random_bytes':
    graph = inputs / 'random.pb'
    graph.write_bytes(np.random.RandomState(0).bytes(4096))
    return ['--input_graph=%s' % graph], graph, graph, out
  if kind == 'empty_file':
    graph = inputs / 'empty.pb'
    graph.write_bytes(b'')
    return ['--input_graph=%s' % graph], graph, graph, out
  if kind == 'missing_file':
    graph = inputs / 'missing.pb'
    return ['--input_graph=%s' % graph], graph, graph, out
  if kind == 'unknown_output':
    return (['--input_graph=%s' % half_plus_two_plain, '--inputs=x:0',
             '--outputs=does_not_exist:0'], 'does_not_exist', half_plus_two_plain, out)
  assert kind == 'existing_output'
  out.mkdir(parents=True)
  (out / 'saved_model.pb').write_bytes(b'an older model')
  return ['--input_graph=%s' % half_plus_two['frozen']], out, half_plus_two['frozen'], out


@pytest.mark.parametrize('kind', ['random_bytes', 'empty_file', 'missing_file',
                                  'unknown_output', 'existing_output'])
def test_bad_input_one_line_error(kind, tmp_path, half_plus_two_plain, half_plus_two, capsys):
  args, culprit, input_path, out = _bad_input(kind, tmp_path, half_plus_two_plain, half_plus_two)
  input_digest = tree_digest(input_path) if os.path.exists(input_path) else None
  out_digest = tree_digest(out) if out.exists() else None
  parent_before = sorted(os.listdir(out.parent)) if out.parent.exists() else None

  args = list(args) + ['--output_saved_model_dir=%s' % out]
  if kind == 'unknown_output':  # found once TensorFlow is loaded: in-process, no start-up
    proc = run_main_as_process(optimize_from_pb, args, capsys)
  else:  # refused before TensorFlow loads: the command line costs little
    proc = run_script('optimize_from_pb.py', *args)

  assert_one_line_error(proc, 'optimize_from_pb.py', culprit)
  if kind == 'existing_output':
    assert tree_digest(out) == out_digest
  else:
    assert not out.exists()
  if input_digest is None:
    assert not os.path.exists(input_path)
  else:
    assert tree_digest(input_path) == input_digest
  if out.parent.exists():
    assert sorted(os.listdir(out.parent)) == parent_before
    assert not [n for n in os.listdir(out.parent) if n.startswith('.' + out.name)]
