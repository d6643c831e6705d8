r"""Checks that a converted model answers exactly as the original, and how fast.

Runs the new model (a SavedModel, or a GraphDef written by freezer.py / optimize_from_pb.py)
and the reference SavedModel on the same inputs, signature by signature, and prints per output
the largest absolute and relative error, then latency (median, p99) at each batch size, load
time, node count and size. Inputs are built from the signatures' dtypes and shapes (ids drawn
from the reference model's table keys and from unseen keys) or read with --inputs.

Sparse and ragged inputs get SparseTensorValues and RaggedTensorValues; ids that index an
embedding are drawn inside its rows; strings from the vocabularies and unseen ones. An .npz
string array must be lossless: KEY.bytes + KEY.lengths (see freezerlib/verify/inputs.py), or
fixed-width bytes that each fill the width (numpy drops trailing NUL bytes otherwise).

Exit code 0 when every output matches within --atol/--rtol, 1 otherwise (or on bad input),
3 when the reference model itself fails on the inputs (they are wrong for it).

Example:
  python optimize_from_pb_test.py --saved_model_dir=/tmp/freezer_demo/serving \
      --reference_saved_model_dir=/tmp/freezer_demo/model/saved_model
"""

import sys

from absl import app
from absl import flags

import cli_flags
from freezerlib.verify import compare
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    reference, new = compare.load_models(cli_flags.SAVED_MODEL_DIR.value, _GRAPH.value,
                                 _REFERENCE.value, cli_flags.TAGS.value)
    batch_sizes = [b for b in _BATCH_SIZES.value if b > 0]
    passed, _ = compare.check(reference, new, cli_flags.SIGNATURE_DEF.value, cli_flags.INPUTS.value,
                      cli_flags.value_or_default(cli_flags.NUM_EXAMPLES, 64),
                      cli_flags.value_or_default(cli_flags.SEED, 0), _ATOL.value, _RTOL.value,
                      batch_sizes, _LATENCY_RUNS.value)
    sys.stdout.flush()
    return utils.EXIT_OK if passed else utils.EXIT_FAILURE

  return utils.run_cli('optimize_from_pb_test.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('reference_saved_model_dir')
  app.run(main)
