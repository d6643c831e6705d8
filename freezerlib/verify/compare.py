"""Two models on the same inputs: do they answer the same, and how fast.

A line per signature and output with the worst absolute and relative difference, latency at
each batch size, load time, nodes and size, then one PASSED or FAILED line.
"""

import dataclasses
import sys
import time

import numpy as np

from freezerlib.core import errors
from freezerlib.core import units
from freezerlib.core.lean_tf import tensorflow as tf  # imported on first use
from freezerlib.verify import inputs as inputs_lib
from freezerlib.verify import loaders


@dataclasses.dataclass
class OutputResult:
  signature: str
  output: str
  max_abs: float
  max_rel: float
  passed: bool
  detail: str = ''


def _parts(value):
  """[(part name, array)] of an output value: the array itself; a sparse value's indices,
  values and dense shape; a ragged value's flat values and row splits."""
  if isinstance(value, tf.compat.v1.SparseTensorValue):
    return [('indices', value.indices), ('values', value.values),
            ('dense_shape', value.dense_shape)]
  if isinstance(value, tf.compat.v1.ragged.RaggedTensorValue):
    splits = []
    while isinstance(value, tf.compat.v1.ragged.RaggedTensorValue):
      splits.append(('row_splits', value.row_splits))
      value = value.values
    return [('values', value)] + splits
  return [('', value)]


def compare_arrays(reference, new, atol, rtol):
  """(max abs error, max relative error, passed, detail) for two output values.

  Sparse and ragged values are compared part by part: their indices, dense shapes and row
  splits must be equal, their values within the tolerances.
  """
  ref_parts, new_parts = _parts(reference), _parts(new)
  if len(ref_parts) > 1 or len(new_parts) > 1:
    if [n for n, _ in ref_parts] != [n for n, _ in new_parts]:
      return float('inf'), float('inf'), False, 'kind %s vs %s' % (
          type(reference).__name__, type(new).__name__)
    worst = (0.0, 0.0, True, '')
    for (name, a), (_, b) in zip(ref_parts, new_parts):
      max_abs, max_rel, passed, detail = compare_arrays(a, b, atol if name == 'values' else 0,
                                                        rtol if name == 'values' else 0)
      if not passed:
        return max_abs, max_rel, False, '%s: %s' % (name, detail or 'differ')
      worst = (max(worst[0], max_abs), max(worst[1], max_rel), True, '')
    return worst
  reference, new = np.asarray(reference), np.asarray(new)
  if reference.shape != new.shape:
    return float('inf'), float('inf'), False, 'shape %s vs %s' % (reference.shape, new.shape)
  if reference.dtype.kind in 'OSU' or new.dtype.kind in 'OSU':
    equal = reference == new
    passed = bool(np.all(equal))
    return (0.0, 0.0, True, '') if passed else (float('inf'), float('inf'), False,
                                                '%d strings differ' % int(np.sum(~equal)))
  a, b = reference.astype(np.float64), new.astype(np.float64)
  # As numpy.isclose: NaN where the reference has NaN is no difference, nor is the same
  # infinity; any other infinity is infinitely far, whatever rtol times |inf| allows.
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  with np.errstate(invalid='ignore', over='ignore'):
    diff = np.where(same, 0.0, np.abs(a - b))
  diff = np.where(np.isnan(diff), np.inf, diff)
  scale = np.abs(a)
  rel = np.divide(diff, scale, out=np.where(diff > 0, np.inf, 0.0),
                  where=(scale > 0) & np.isfinite(scale))
  max_abs = float(diff.max()) if diff.size else 0.0
  max_rel = float(rel.max()) if rel.size else 0.0
  passed = bool(np.all(same | (np.isfinite(diff) & (diff <= atol + rtol * scale))))
  return max_abs, max_rel, passed, ''


def compare(reference, new, feeds_by_signature, atol, rtol):
  """Runs both models on the same inputs; returns a list of OutputResult.

  Raises:
    errors.ReferenceFailed: the reference fails on the inputs. (The new model failing where
      the reference answers is a difference: FAILED for each output.)
  """
  results = []
  for sig_key, feeds in feeds_by_signature.items():
    ref_out = run_or_explain(reference, sig_key, feeds, errors.ReferenceFailed)
    try:
      new_out = run_or_explain(new, sig_key, feeds)
    except errors.UserError as e:
      results.extend(OutputResult(sig_key, k, float('inf'), float('inf'), False, str(e))
                     for k in sorted(ref_out))
      continue
    for out_key in sorted(ref_out):
      if out_key not in new_out:
        results.append(OutputResult(sig_key, out_key, float('inf'), float('inf'), False,
                                    'missing from %s' % new.name))
        continue
      max_abs, max_rel, passed, detail = compare_arrays(ref_out[out_key], new_out[out_key],
                                                        atol, rtol)
      results.append(OutputResult(sig_key, out_key, max_abs, max_rel, passed, detail))
  return results


def _describe(feeds):
  """'key[shape]' per input: 'key sparse[dense shape]' and 'key ragged[rows]' for those."""
  parts = []
  for key, value in sorted(feeds.items()):
    if isinstance(value, tf.compat.v1.SparseTensorValue):
      parts.append('%s sparse%s' % (key, np.asarray(value.dense_shape).tolist()))
    elif isinstance(value, tf.compat.v1.ragged.RaggedTensorValue):
      parts.append('%s ragged[%d]' % (key, len(value.row_splits) - 1))
    else:
      parts.append('%s%s' % (key, list(np.shape(value))))
  return ', '.join(parts)


def run_or_explain(model, sig_key, feeds, error=errors.UserError):
  """model.run, with a failure on the inputs turned into a one-line `error`."""
  try:
    return model.run(sig_key, feeds)
  except (tf.errors.OpError, ValueError) as e:
    raise error(
        '%s failed to run signature %r on the inputs (%s): %s; pass inputs of the right shape '
        'with --inputs, or leave the signature out with --signature_def' % (
            model.name, sig_key, _describe(feeds), errors.tf_error_message(e))) from e


WARM_SECONDS = 0.2


def latency(model, sig_key, feeds, runs, warm_seconds=WARM_SECONDS):
  """(median, p99) seconds of `runs` calls, after at least 3 calls and `warm_seconds` of them:
  a model's first few hundred calls after its load are slower than the rest
  (benchmarks/README.md, Serving), and a server answers after its warmup requests."""
  warm_until = time.perf_counter() + warm_seconds
  for _ in range(3):
    model.run(sig_key, feeds)
  while time.perf_counter() < warm_until:
    model.run(sig_key, feeds)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    model.run(sig_key, feeds)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), float(np.percentile(times, 99))


def common_signatures(reference, new, names=None):
  """Signature keys both models have (or `names`, checked), in a stable order.

  Raises:
    errors.UserError: a requested or reference signature missing from the new model.
  """
  wanted = list(names) if names else sorted(reference.signatures)
  for key in wanted:
    for model in (reference, new):
      if key not in model.signatures:
        raise errors.UserError('%s has no signature %r; it has: %s'
                              % (model.name, key, ', '.join(sorted(model.signatures))))
  return wanted


def load_models(new_saved_model_dir, new_graph, reference_dir, tags):
  """(reference model, new model), each loaded as its server loads it.

  Raises:
    errors.UserError: bad paths, or neither / both of the new model's forms given.
  """
  if bool(new_saved_model_dir) == bool(new_graph):
    raise errors.UserError('give exactly one of --saved_model_dir and --graph')
  reference = loaders.load_saved_model(reference_dir, tags)
  if new_graph:
    new = loaders.load_frozen_graph(new_graph)
  else:
    new = loaders.load_saved_model(new_saved_model_dir, tags)
  return reference, new


def feeds_for(reference, keys, inputs=None, num_examples=64, seed=0):
  """{signature: {input: array}}: generated (`inputs` empty), from an .npz file, or from
  TFRecord files of tf.Example.

  Raises:
    errors.UserError: unreadable or unsuitable input files.
  """
  if isinstance(inputs, str):
    inputs = [inputs]
  if not inputs:
    maker = inputs_lib.InputMaker(reference, seed)
    return {k: maker.make(k, num_examples) for k in keys}
  if len(inputs) == 1 and inputs[0].endswith('.npz'):
    return inputs_lib.inputs_from_npz(inputs[0], {k: reference.signatures[k] for k in keys})
  all_feeds = inputs_lib.inputs_from_tfrecords(inputs, reference, num_examples)
  return {k: all_feeds[k] for k in keys}


def check(reference, new, signature_names=(), inputs=None, num_examples=64, seed=0,
          atol=1e-6, rtol=1e-6, batch_sizes=(1, 256), latency_runs=50, out=sys.stdout):
  """Compares two loaded models and prints the report to `out`.

  Returns:
    (all outputs passed, list of OutputResult).

  Raises:
    errors.UserError: bad inputs, or signatures missing from a model.
  """
  start = time.perf_counter()
  keys = common_signatures(reference, new, signature_names)
  feeds = feeds_for(reference, keys, inputs, num_examples, seed)
  results = compare(reference, new, feeds, atol, rtol)

  w_sig = max([len(r.signature) for r in results] + [9])
  w_out = max([len(r.output) for r in results] + [6])
  print('%-*s  %-*s  %11s  %11s  %s' % (w_sig, 'signature', w_out, 'output', 'max abs',
                                        'max rel', 'result'), file=out)
  for r in results:
    print('%-*s  %-*s  %11.3e  %11.3e  %s%s' % (
        w_sig, r.signature, w_out, r.output, r.max_abs, r.max_rel,
        'PASSED' if r.passed else 'FAILED', (' (%s)' % r.detail) if r.detail else ''),
          file=out)

  if batch_sizes:
    maker = inputs_lib.InputMaker(reference, seed)
    print('\n%-*s  %6s  %23s  %23s' % (w_sig, 'latency', 'batch', 'reference median/p99',
                                       'new median/p99'), file=out)
    for key in keys:
      for batch in batch_sizes:
        batch_feeds = maker.make(key, batch)
        ref = latency(reference, key, batch_feeds, latency_runs)
        cur = latency(new, key, batch_feeds, latency_runs)
        print('%-*s  %6d  %9.3f / %8.3f ms  %9.3f / %8.3f ms' % (
            w_sig, key, batch, ref[0] * 1e3, ref[1] * 1e3, cur[0] * 1e3, cur[1] * 1e3),
              file=out)

  print('\n%-10s  %12s  %12s' % ('', 'reference', 'new'), file=out)
  print('%-10s  %10.3f s  %10.3f s' % ('load time', reference.load_seconds, new.load_seconds),
        file=out)
  print('%-10s  %12d  %12d' % ('nodes', reference.nodes, new.nodes), file=out)
  print('%-10s  %12s  %12s' % ('size', units.human_bytes(reference.size_bytes),
                               units.human_bytes(new.size_bytes)), file=out)

  failed = [r for r in results if not r.passed]
  runtime = time.perf_counter() - start
  if failed:
    first = failed[0]
    print('FAILED | signature %r output %r differs: max abs %.3e, max rel %.3e (atol=%g, '
          'rtol=%g)%s | %d of %d outputs differ | Runtime: %.1fs' % (
              first.signature, first.output, first.max_abs, first.max_rel, atol, rtol,
              (' ' + first.detail) if first.detail else '', len(failed), len(results),
              runtime), file=out)
  else:
    print('PASSED | %d outputs of %d signatures match (atol=%g, rtol=%g) | Runtime: %.1fs'
          % (len(results), len(keys), atol, rtol, runtime), file=out)
  return not failed, results


def compare_models(new_saved_model_dir, new_graph, reference_dir, tags=('serve',),
                   signature_names=(), inputs=None, num_examples=64, seed=0, atol=1e-6,
                   rtol=1e-6, batch_sizes=(1, 256), latency_runs=50, out=sys.stdout):
  """Step 4 in one call: loads both models as their servers do and prints the comparison.

  Args:
    new_saved_model_dir, new_graph: the model to check, a SavedModel or a GraphDef file.
    reference_dir: the original SavedModel.
    tags: the MetaGraph tags of both.
    Other arguments: as `check`.

  Returns:
    Whether every output matches within `atol`/`rtol`.

  Raises:
    errors.UserError: bad paths or inputs; errors.ReferenceFailed: the reference fails on the
      inputs.
  """
  reference, new = load_models(new_saved_model_dir, new_graph, reference_dir, tags)
  try:
    passed, _ = check(reference, new, signature_names, inputs, num_examples, seed, atol, rtol,
                      batch_sizes, latency_runs, out)
  finally:
    reference.close()
    new.close()
  return passed
