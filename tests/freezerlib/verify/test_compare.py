"""verify/compare: outputs compared with tolerances, the report, the PASSED/FAILED line.

Models here are stand-ins with the loaders' interface (run, signatures, name, ...): what is
tested is the comparison, not loading (tests/freezerlib/verify/test_loaders.py).
"""

import io
import time

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.verify import compare
from freezerlib.verify import loaders
import small_graphs

INF, NAN = float('inf'), float('nan')


@pytest.mark.parametrize('reference,new,expected', [
    ([1.0, 2.0], [1.0, 2.0], (0.0, 0.0, True, '')),
    ([1.0], [1.0 + 5e-7], (5e-7, 5e-7, True, '')),
    ([0.0], [5e-7], (5e-7, INF, True, '')),  # within atol, infinitely far relatively
    ([0.0], [0.0], (0.0, 0.0, True, '')),
    ([2.0, 4.0], [2.2, 4.0], (0.2, 0.1, False, '')),
    ([NAN], [1.0], (INF, INF, False, '')),
    ([1.0], [NAN], (INF, INF, False, '')),
    ([1.0], [INF], (INF, INF, False, '')),
    ([1.0, 2.0], [1.0, 2.0, 3.0], (INF, INF, False, 'shape (2,) vs (3,)')),
    ([[1.0, 2.0]], [1.0, 2.0], (INF, INF, False, 'shape (1, 2) vs (2,)')),
    ([], [], (0.0, 0.0, True, '')),
    (np.array([3, 4], np.int64), np.array([3, 5], np.int64), (1.0, 0.25, False, '')),
    (np.array([True]), np.array([True]), (0.0, 0.0, True, '')),
])
def test_compare_numbers(reference, new, expected):
  got = compare.compare_arrays(np.array(reference, dtype=getattr(reference, 'dtype', None)),
                               np.array(new, dtype=getattr(new, 'dtype', None)), 1e-6, 1e-6)
  assert got[2:] == expected[2:]
  np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-6)


@pytest.mark.parametrize('reference,new,expected', [
    ([b'a', b'b'], [b'a', b'b'], (0.0, 0.0, True, '')),
    ([b'a', b'b', b'c'], [b'a', b'x', b'y'], (INF, INF, False, '2 strings differ')),
    (['a'], [b'a'], (INF, INF, False, '1 strings differ')),  # str is not bytes
])
def test_compare_strings(reference, new, expected):
  assert compare.compare_arrays(np.array(reference, dtype=object), np.array(new, dtype=object),
                                1e-6, 1e-6) == expected


class _Model:
  """The loaders' interface over functions: outputs[sig](feeds) -> {output: array}."""

  def __init__(self, name, outputs, signatures=None):
    self.name, self._outputs = name, outputs
    self.signatures = signatures or {k: None for k in outputs}
    self.calls = []
    self.load_seconds, self.nodes, self.size_bytes = 0.25, 7, 3 << 20

  def run(self, sig_key, feeds):
    self.calls.append(sig_key)
    return self._outputs[sig_key](feeds)


def test_compare_reports_each_output_and_what_is_missing():
  reference = _Model('ref', {'s': lambda f: {'a': f['x'] * 2, 'b': f['x']}})
  new = _Model('new', {'s': lambda f: {'a': f['x'] * 2 + 1.0}})
  results = compare.compare(reference, new, {'s': {'x': np.array([1.0])}}, 1e-6, 1e-6)
  assert [(r.signature, r.output, r.passed, r.detail) for r in results] == [
      ('s', 'a', False, ''), ('s', 'b', False, 'missing from new')]
  assert results[0].max_abs == 1.0 and results[1].max_abs == INF


def test_a_run_that_fails_on_the_inputs_is_one_line():
  def fails(feeds):
    raise tf.errors.InvalidArgumentError(None, None, 'Incompatible shapes: [3] vs. [2]')

  with pytest.raises(errors.UserError) as caught:
    compare.run_or_explain(_Model('m.pb', {'s': fails}), 's',
                           {'x': np.zeros((3, 2)), 'b': np.zeros(3)})
  assert str(caught.value) == (
      "m.pb failed to run signature 's' on the inputs (b[3], x[3, 2]): Incompatible shapes: [3] "
      'vs. [2]; pass inputs of the right shape with --inputs, or leave the signature out with '
      '--signature_def')


def test_latency_runs_warm_up_then_the_timed_runs():
  model = _Model('m', {'s': lambda f: {}})
  median, p99 = compare.latency(model, 's', {}, runs=5, warm_seconds=0)
  assert model.calls == ['s'] * 8 and 0 <= median <= p99


def test_latency_warms_up_for_its_seconds():
  model = _Model('m', {'s': lambda f: {}})
  start = time.perf_counter()
  compare.latency(model, 's', {}, runs=2, warm_seconds=0.05)
  # Instant calls: only warming up by time takes 0.05 s, and more than the 3 + 2 calls.
  assert time.perf_counter() - start >= 0.05 and len(model.calls) > 5


def test_common_signatures():
  reference = _Model('ref', {'b': None, 'a': None})
  new = _Model('new', {'a': None})
  assert compare.common_signatures(reference, new, ['a']) == ['a']
  with pytest.raises(errors.UserError, match="new has no signature 'b'; it has: a"):
    compare.common_signatures(reference, new)


def _npz(tmp_path):
  np.savez(tmp_path / 'in.npz', x=np.array([1.0, 2.0], np.float32))
  return str(tmp_path / 'in.npz')


def _signatures():
  return {'s': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}


def test_check_prints_a_line_per_output_and_passed(tmp_path):
  reference = _Model('ref', {'s': lambda f: {'y': f['x'] * 2}}, _signatures())
  one_ulp = lambda f: {'y': np.nextafter(f['x'] * 2, np.float32(100))}  # x is float32
  new = _Model('new', {'s': one_ulp}, _signatures())
  out = io.StringIO()
  passed, results = compare.check(reference, new, inputs=_npz(tmp_path), batch_sizes=(),
                                  out=out)
  lines = out.getvalue().splitlines()
  assert passed and len(results) == 1
  assert lines[0].split() == ['signature', 'output', 'max', 'abs', 'max', 'rel', 'result']
  assert lines[1].split() == ['s', 'y', '4.768e-07', '1.192e-07', 'PASSED']
  assert lines[-4].split() == ['load', 'time', '0.250', 's', '0.250', 's']
  assert lines[-3].split() == ['nodes', '7', '7'] and lines[-2].split()[1:] == ['3.0', 'MiB'] * 2
  assert lines[-1].startswith('PASSED | 1 outputs of 1 signatures match (atol=1e-06, '
                              'rtol=1e-06) | Runtime: ')


def test_check_fails_with_the_first_difference(tmp_path):
  reference = _Model('ref', {'s': lambda f: {'y': f['x'] * 2}}, _signatures())
  new = _Model('new', {'s': lambda f: {'y': f['x'] * 3}}, _signatures())
  out = io.StringIO()
  passed, _ = compare.check(reference, new, inputs=[_npz(tmp_path)], batch_sizes=(), out=out,
                            atol=0.1, rtol=0)
  assert not passed
  assert out.getvalue().splitlines()[-1].startswith(
      "FAILED | signature 's' output 'y' differs: max abs 2.000e+00, max rel 5.000e-01 "
      '(atol=0.1, rtol=0) | 1 of 1 outputs differ | Runtime: ')


def test_exactly_one_new_model():
  for saved_model_dir, graph in ((None, None), ('a', 'b')):
    with pytest.raises(errors.UserError, match='give exactly one of --saved_model_dir and '
                                               '--graph'):
      compare.load_models(saved_model_dir, graph, 'reference', ['serve'])


@pytest.mark.parametrize('reference,new,passed,max_abs,max_rel', [
    ([NAN, 1.0], [NAN, 1.0], True, 0.0, 0.0),  # NaN where the reference has NaN
    ([INF, -INF, 2.0], [INF, -INF, 2.0], True, 0.0, 0.0),  # the same infinities
    ([INF], [1.0], False, INF, INF),  # the reference says inf, the model 1.0
    ([-INF], [-1e300], False, INF, INF),
    ([INF], [-INF], False, INF, INF),
    ([1.0], [-INF], False, INF, INF),
])
def test_nan_and_infinities(reference, new, passed, max_abs, max_rel):
  """As numpy.isclose: NaN equals NaN here, an infinity only the same infinity."""
  got = compare.compare_arrays(np.array(reference), np.array(new), 1e-6, 1e-6)
  assert got == (max_abs, max_rel, passed, '')


def test_sparse_and_ragged_outputs_compare_part_by_part():
  sparse = lambda indices, values: loaders.sparse_value(indices, values, [2, 4])
  reference = sparse([[0, 1], [1, 3]], [1.0, 2.0])
  assert compare.compare_arrays(reference, sparse([[0, 1], [1, 3]], [1.0, 2.0 + 1e-7]),
                                1e-6, 1e-6)[2:] == (True, '')
  # The indices must be equal (no tolerance), the values within it.
  assert compare.compare_arrays(reference, sparse([[0, 1], [1, 2]], [1.0, 2.0]), 1e-6,
                                1e-6)[2:] == (False, 'indices: differ')
  assert compare.compare_arrays(reference, sparse([[0, 1], [1, 3]], [1.0, 2.5]), 1e-6,
                                1e-6)[2:] == (False, 'values: differ')
  assert compare.compare_arrays(reference, np.zeros((2, 4)), 1e-6, 1e-6)[2:] == (
      False, 'kind SparseTensorValue vs ndarray')
  ragged = loaders.ragged_value([1.0, 2.0, 3.0], [0, 1, 3])
  assert compare.compare_arrays(ragged, loaders.ragged_value([1.0, 2.0, 3.0], [0, 2, 3]), 1e-6,
                                1e-6)[2:] == (False, 'row_splits: differ')


def test_compare_models_loads_both_and_reports_one_result():
  from conftest import tf_serving_model
  model = tf_serving_model('saved_model_half_plus_three')
  out = io.StringIO()
  assert compare.compare_models(model, None, model, batch_sizes=(), out=out)
  assert out.getvalue().splitlines()[-1].startswith('PASSED | 2 outputs of 2 signatures')
  with pytest.raises(errors.UserError, match='give exactly one of --saved_model_dir and --graph'):
    compare.compare_models(model, '/x.pb', model)
