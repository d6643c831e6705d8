"""optimize_from_pb_test.py: PASSED and exit 0 for a faithful model, FAILED and exit 1 otherwise.

Tampered models are the optimized tiny GraphDef (with its metadata node, so --graph reads it)
with one constant changed: a weight of the logit layer, or the trained statistics of one user
id in a table. The second is seen only by inputs that hold that id, which proves --inputs is
what gets fed.
"""

import collections
import io
import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY
from conftest import assert_one_line_error
from conftest import run_main_as_process
from conftest import run_script
from conftest import tf_serving_model
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import graphs
from freezerlib.core import units
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders
import optimize_from_pb_test  # its command line, in-process for one bad input

SCRIPT = 'optimize_from_pb_test.py'
TINY_OUTPUTS = [('embeddings', 'item_embedding'), ('embeddings', 'user_stats'),
                ('serving_default', 'logit'), ('serving_default', 'probability')]
_RESULT_LINE = re.compile(r'^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(PASSED|FAILED)\b')


def _results(stdout):
  """{(signature, output): 'PASSED' | 'FAILED'} from the report's first table."""
  return {(m.group(1), m.group(2)): m.group(5)
          for m in map(_RESULT_LINE.match, stdout.splitlines()) if m}


def _check(reference, new, **kwargs):
  """optimize_from_pb_test.check without latency; (passed, {(sig, out): passed}, report)."""
  out = io.StringIO()
  passed, results = compare.check(reference, new, batch_sizes=(), out=out,
                                                **kwargs)
  return passed, {(r.signature, r.output): r.passed for r in results}, out.getvalue()


def _tampered(graph_path, out_path, node_name, change):
  """Writes `graph_path` with Const `node_name`'s value replaced by change(value)."""
  graph_def = frozen_graph.read_graph_def(graph_path)
  [node] = [n for n in graph_def.node if n.name == node_name]
  assert node.op == 'Const'
  value = tf.make_ndarray(node.attr['value'].tensor)
  new_value = change(value.copy())
  assert new_value.shape == value.shape and not np.array_equal(new_value, value)
  node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(new_value))
  out_path.write_bytes(graph_def.SerializeToString())
  return str(out_path)


# ------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope='module')
def optimized(tiny_frozen, tmp_path_factory):
  """The pipeline's output for the tiny model: {'saved_model', 'graph'} paths."""
  root = tmp_path_factory.mktemp('checked')
  paths = {'saved_model': str(root / 'serving'), 'graph': str(root / 'optimized.pb')}
  from_frozen.saved_model_from_frozen_graph(tiny_frozen, paths['saved_model'], paths['graph'])
  return paths


@pytest.fixture(scope='module')
def reference(tiny_model):
  model = loaders.load_saved_model(tiny_model['saved_model'])
  yield model
  model.close()


@pytest.fixture(scope='module')
def record_user(tiny_model, reference):
  """A trained user id in the first 64 TFRecords that seed 0's generated inputs never draw."""
  files = sorted(tf.io.gfile.glob(tiny_model['data'] + '/*.tfrecord'))
  first = [tf.train.Example.FromString(r.numpy())
           for r in tf.data.TFRecordDataset(files).take(64)]
  in_records = collections.Counter(
      e.features.feature['user_id'].int64_list.value[0] for e in first)
  maker = inputs.InputMaker(reference, 0)
  generated = set()
  for key in reference.signatures:
    generated |= set(maker.make(key, 64)['user_id'].tolist())
  keys = tf.train.load_checkpoint(tiny_model['checkpoint']).get_tensor('user_stats-keys')
  candidates = [u for u, _ in in_records.most_common() if u in set(keys.tolist())
                and u not in generated]
  assert candidates
  return candidates[0]


@pytest.fixture(scope='module')
def table_tampered(optimized, record_user, tmp_path_factory):
  """The optimized graph with `record_user`'s [impressions, clicks] changed in user_stats."""
  graph_def = frozen_graph.read_graph_def(optimized['graph'])
  nodes = {n.name: n for n in graph_def.node}
  [fill] = [n for n in graph_def.node
            if n.op == 'LookupTableImportV2' and n.input[0] == 'user_stats']
  keys = tf.make_ndarray(nodes[fill.input[1]].attr['value'].tensor)
  row = list(keys).index(record_user)

  def change(values):
    values[row] += 1000.0
    return values

  return _tampered(optimized['graph'], tmp_path_factory.mktemp('table') / 'tampered.pb',
                   graphs.node_name(fill.input[2]), change)


# ------------------------------------------------------------------------------------------
# The script on the real pipeline's output


def test_passed_with_report_on_pipeline_output(optimized, tiny_model):
  proc = run_script(SCRIPT, '--saved_model_dir=%s' % optimized['saved_model'],
                    '--reference_saved_model_dir=%s' % tiny_model['saved_model'],
                    '--batch_sizes=1', '--latency_runs=3')
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr
  out = proc.stdout
  assert _results(out) == {k: 'PASSED' for k in TINY_OUTPUTS}
  lines = out.splitlines()
  assert lines[-1].startswith('PASSED | 4 outputs of 2 signatures match'), lines[-1]
  # Latency: one row per signature at batch size 1, reference and new median / p99.
  header = [i for i, l in enumerate(lines) if l.startswith('latency')]
  assert len(header) == 1
  rows = [l.split() for l in lines[header[0] + 1:header[0] + 3]]
  assert [r[:2] for r in rows] == [['embeddings', '1'], ['serving_default', '1']]
  for row in rows:
    assert row.count('ms') == 2
    assert all(float(row[i]) > 0 for i in (2, 4, 6, 8))
  load = [l.split() for l in lines if l.startswith('load time')]
  assert len(load) == 1 and float(load[0][2]) > 0 and float(load[0][4]) > 0
  nodes = [l.split() for l in lines if l.startswith('nodes')]
  ref_nodes, new_nodes = int(nodes[0][1]), int(nodes[0][2])
  assert new_nodes == len(
      saved_model.select_meta_graph(saved_model.read_saved_model_proto(
          optimized['saved_model']), ['serve'], 'x').graph_def.node)
  assert new_nodes < ref_nodes / 4  # the reader, optimizer and saver are gone
  size = [l for l in lines if l.startswith('size')]
  assert len(size) == 1
  assert size[0].endswith(units.human_bytes(
      saved_model.directory_size(optimized['saved_model'])))


def test_untampered_graph_passes(optimized, reference):
  new = loaders.load_frozen_graph(optimized['graph'])
  passed, results, report = _check(reference, new)
  assert passed, report
  assert sorted(results) == TINY_OUTPUTS and all(results.values())
  assert report.splitlines()[-1].startswith('PASSED')


def test_tampered_logit_weight_fails(optimized, tiny_model, tmp_path):
  def change(kernel):
    kernel[0, 0] += 0.5
    return kernel

  tampered = _tampered(optimized['graph'], tmp_path / 'tampered.pb', 'logit/kernel', change)
  proc = run_script(SCRIPT, '--graph=%s' % tampered,
                    '--reference_saved_model_dir=%s' % tiny_model['saved_model'],
                    '--batch_sizes=0')
  assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr
  assert _results(proc.stdout) == {
      ('embeddings', 'item_embedding'): 'PASSED', ('embeddings', 'user_stats'): 'PASSED',
      ('serving_default', 'logit'): 'FAILED', ('serving_default', 'probability'): 'FAILED'}
  last = proc.stdout.splitlines()[-1]
  assert last.startswith('FAILED'), last
  assert "signature 'serving_default' output 'logit'" in last
  assert '2 of 4 outputs differ' in last


def test_tampered_half_plus_two_constant_fails(tmp_path):
  src = tf_serving_model('saved_model_half_plus_two_cpu')
  freeze.graph_from_saved_model(src, str(tmp_path / 'frozen.pb'))
  from_frozen.saved_model_from_frozen_graph(str(tmp_path / 'frozen.pb'),
                                            output_graph=str(tmp_path / 'opt.pb'))
  reference = loaders.load_saved_model(src)
  passed, results, report = _check(reference, loaders.load_frozen_graph(
      str(tmp_path / 'opt.pb')))
  assert passed, report
  assert len(results) == 5

  def change(a):
    assert a == np.float32(0.5)  # y = a * x + b: the variable a, frozen
    return np.float32(0.75)

  tampered = _tampered(str(tmp_path / 'opt.pb'), tmp_path / 'tampered.pb', 'a', change)
  passed, results, report = _check(reference, loaders.load_frozen_graph(tampered))
  assert not passed
  failed = {k for k, ok in results.items() if not ok}
  assert failed >= {('serving_default', 'y'), ('classify_x_to_y', 'scores'),
                    ('regress_x_to_y', 'outputs'), ('regress_x_to_y2', 'outputs')}, report
  assert 'FAILED' in report.splitlines()[-1]


# ------------------------------------------------------------------------------------------
# --inputs


def test_npz_inputs_are_fed(table_tampered, reference, record_user, tmp_path):
  # Generated inputs never hold record_user: the tampered table row goes unnoticed by them...
  passed, _, report = _check(reference, loaders.load_frozen_graph(table_tampered))
  assert passed, report

  def write_npz(name, user_ids):
    n = len(user_ids)
    path = tmp_path / name
    np.savez(path, user_id=np.array(user_ids, dtype=np.int64),
             item_id=np.arange(n, dtype=np.int64),
             category=np.array([b'cat_001'] * n), dense=np.ones((n, TINY.num_dense), np.float32))
    return str(path)

  # ... an .npz holding it is fed, and catches it; one without it passes.
  with_user = write_npz('with_user.npz', [1, record_user, 2, 3])
  passed, results, report = _check(reference, loaders.load_frozen_graph(table_tampered),
                                   inputs=with_user)
  assert not passed
  assert not results[('embeddings', 'user_stats')]
  assert results[('embeddings', 'item_embedding')]
  assert "signature 'embeddings' output 'user_stats'" in report.splitlines()[-1]
  without_user = write_npz('without_user.npz', [1, 2, 3, 4])
  passed, results, report = _check(reference, loaders.load_frozen_graph(table_tampered),
                                   inputs=without_user)
  assert passed, report
  assert sorted(results) == TINY_OUTPUTS


def test_tfrecord_inputs_are_fed(table_tampered, optimized, reference, tiny_model):
  pattern = tiny_model['data'] + '/*.tfrecord'
  passed, results, report = _check(reference, loaders.load_frozen_graph(optimized['graph']),
                                    inputs=pattern)
  assert passed, report
  assert sorted(results) == TINY_OUTPUTS

  proc = run_script(SCRIPT, '--graph=%s' % table_tampered,
                    '--reference_saved_model_dir=%s' % tiny_model['saved_model'],
                    '--inputs=%s' % pattern, '--batch_sizes=0')
  assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr
  results = _results(proc.stdout)
  assert results[('embeddings', 'user_stats')] == 'FAILED'
  assert results[('embeddings', 'item_embedding')] == 'PASSED'
  assert "signature 'embeddings' output 'user_stats'" in proc.stdout.splitlines()[-1]


# ------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize('kind', ['missing_reference', 'random_bytes_graph'])
def test_bad_input_one_line_error(kind, optimized, tiny_model, tmp_path, capsys):
  if kind == 'missing_reference':
    culprit = tmp_path / 'no_such_model'
    args = ['--saved_model_dir=%s' % optimized['saved_model'],
            '--reference_saved_model_dir=%s' % culprit]
    kept = optimized['saved_model']
  else:
    culprit = tmp_path / 'random.pb'
    culprit.write_bytes(np.random.RandomState(1).bytes(4096))
    args = ['--graph=%s' % culprit, '--reference_saved_model_dir=%s' % tiny_model['saved_model']]
    kept = culprit
  digest = tree_digest(kept)
  if kind == 'missing_reference':  # refused before TensorFlow loads: the command line
    proc = run_script(SCRIPT, *args, '--batch_sizes=0')
  else:  # found once TensorFlow is loaded: in-process, no start-up
    proc = run_main_as_process(optimize_from_pb_test, args + ['--batch_sizes=0'], capsys)
  assert_one_line_error(proc, SCRIPT, culprit)
  assert 'PASSED' not in proc.stdout
  assert tree_digest(kept) == digest
  assert sorted(p.name for p in tmp_path.iterdir()) == (
      [] if kind == 'missing_reference' else ['random.pb'])
