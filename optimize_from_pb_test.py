r"""Checks that a converted model answers exactly as the original, and how fast.

Runs the new model (a SavedModel, or a GraphDef written by freezer.py / optimize_from_pb.py)
and the reference SavedModel on the same inputs, signature by signature, and prints per output
the largest absolute and relative error, then latency (median, p99) at each batch size, load
time, node count and size. Inputs are built from the signatures' dtypes and shapes (ids drawn
from the reference model's table keys and from unseen keys) or read with --inputs.

Exit code 0 when every output matches within --atol/--rtol, 1 otherwise (or on bad input).

Example:
  python optimize_from_pb_test.py --saved_model_dir=/tmp/freezer_demo/serving \
      --reference_saved_model_dir=/tmp/freezer_demo/model/saved_model
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: one-line errors

import lean_tf  # pylint: disable=g-import-not-at-top,unused-import  # before TensorFlow: its start-up notices stay off stderr

import sys  # pylint: disable=g-import-not-at-top
import time

from absl import app
from absl import flags

import cli_flags
import comparison
import utils

_GRAPH = flags.DEFINE_string(
    'graph', None, 'A GraphDef written by freezer.py or optimize_from_pb.py, to check instead '
    'of --saved_model_dir.')
_REFERENCE = flags.DEFINE_string(
    'reference_saved_model_dir', None, 'The original SavedModel the new model must equal.')
_ATOL = flags.DEFINE_float('atol', 1e-6, 'Absolute tolerance.', lower_bound=0)
_RTOL = flags.DEFINE_float('rtol', 1e-6, 'Relative tolerance.', lower_bound=0)
_BATCH_SIZES = flags.DEFINE_multi_integer(
    'batch_sizes', [1, 256], 'Batch sizes to time (repeat the flag for several); none with '
    '--batch_sizes=0.', lower_bound=0)
_LATENCY_RUNS = flags.DEFINE_integer(
    'latency_runs', 50, 'Timed runs per signature and batch size.', lower_bound=1)


def load_models(new_saved_model_dir, new_graph, reference_dir, tags):
  """(reference Model, new Model).

  Raises:
    utils.UserError: bad paths, or neither / both of the new model's forms given.
  """
  if bool(new_saved_model_dir) == bool(new_graph):
    raise utils.UserError('give exactly one of --saved_model_dir and --graph')
  reference = comparison.load_saved_model(reference_dir, tags)
  if new_graph:
    new = comparison.load_frozen_graph(new_graph)
  else:
    new = comparison.load_saved_model(new_saved_model_dir, tags)
  return reference, new


def check(reference, new, signature_names=(), inputs=None, num_examples=64, seed=0,
          atol=1e-6, rtol=1e-6, batch_sizes=(1, 256), latency_runs=50, out=sys.stdout):
  """Compares two loaded models and prints the report.

  Returns:
    (all outputs passed, list of comparison.OutputResult).

  Raises:
    utils.UserError: bad --inputs or signatures missing from a model.
  """
  start = time.perf_counter()
  keys = comparison.common_signatures(reference, new, signature_names)
  maker = comparison.InputMaker(reference, seed)
  if isinstance(inputs, str):
    inputs = [inputs]
  if not inputs:
    feeds = {k: maker.make(k, num_examples) for k in keys}
  elif len(inputs) == 1 and inputs[0].endswith('.npz'):
    feeds = comparison.inputs_from_npz(inputs[0], {k: reference.signatures[k] for k in keys})
  else:
    all_feeds = comparison.inputs_from_tfrecords(inputs, reference, num_examples)
    feeds = {k: all_feeds[k] for k in keys}
  results = comparison.compare(reference, new, feeds, atol, rtol)

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
    print('\n%-*s  %6s  %23s  %23s' % (w_sig, 'latency', 'batch', 'reference median/p99',
                                       'new median/p99'), file=out)
    for key in keys:
      for batch in batch_sizes:
        batch_feeds = maker.make(key, batch)
        ref = comparison.latency(reference, key, batch_feeds, latency_runs)
        cur = comparison.latency(new, key, batch_feeds, latency_runs)
        print('%-*s  %6d  %9.3f / %8.3f ms  %9.3f / %8.3f ms' % (
            w_sig, key, batch, ref[0] * 1e3, ref[1] * 1e3, cur[0] * 1e3, cur[1] * 1e3),
              file=out)

  print('\n%-10s  %12s  %12s' % ('', 'reference', 'new'), file=out)
  print('%-10s  %10.3f s  %10.3f s' % ('load time', reference.load_seconds, new.load_seconds),
        file=out)
  print('%-10s  %12d  %12d' % ('nodes', reference.nodes, new.nodes), file=out)
  print('%-10s  %12s  %12s' % ('size', utils.human_bytes(reference.size_bytes),
                               utils.human_bytes(new.size_bytes)), file=out)

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    reference, new = load_models(cli_flags.SAVED_MODEL_DIR.value, _GRAPH.value,
                                 _REFERENCE.value, cli_flags.TAGS.value)
    batch_sizes = [b for b in _BATCH_SIZES.value if b > 0]
    passed, _ = check(reference, new, cli_flags.SIGNATURE_DEF.value, cli_flags.INPUTS.value,
                      cli_flags.value_or_default(cli_flags.NUM_EXAMPLES, 64),
                      cli_flags.value_or_default(cli_flags.SEED, 0), _ATOL.value, _RTOL.value,
                      batch_sizes, _LATENCY_RUNS.value)
    sys.stdout.flush()
    return utils.EXIT_OK if passed else utils.EXIT_FAILURE

  return utils.run_cli('optimize_from_pb_test.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('reference_saved_model_dir')
  app.run(main)
