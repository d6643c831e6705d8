r"""optimize_from_pb_test.py: does a converted model answer exactly as the original, and how fast?

Runs the new model (a SavedModel, or a GraphDef written by freezer.py / optimize_from_pb.py)
and the reference SavedModel on the same inputs, signature by signature, and prints per output
the largest absolute and relative error, then latency (median, p99) at each batch size (after
0.2 s of warm-up calls: a model's first calls after its load are slower), load time, node count
and size. Inputs are built from the signatures' dtypes and shapes (ids drawn from the reference
model's table keys and from unseen keys) or read with --inputs.

Sparse and ragged inputs get SparseTensorValues and RaggedTensorValues; ids that index an
embedding are drawn inside its rows; strings from the vocabularies and unseen ones. An .npz
string array must be lossless: KEY.bytes + KEY.lengths (see freezerlib/verify/inputs.py), or
fixed-width bytes that each fill the width (numpy drops trailing NUL bytes otherwise).

Exit code 0 when every output matches within --atol/--rtol, 1 otherwise (or on bad input),
3 when the reference model itself fails on the inputs (they are wrong for it).

Example (after optimize_from_pb.py's example):
  python optimize_from_pb_test.py --saved_model_dir=/tmp/freezer_demo/serving \
      --reference_saved_model_dir=/tmp/freezer_demo/model/saved_model
"""

import utils  # first: Ctrl-C during start-up is one line

import sys

from absl import app
from absl import flags

import cli_flags

_SAVED_MODEL_DIR = cli_flags.saved_model_dir('The new SavedModel to check (or give --graph).')
_GRAPH = flags.DEFINE_string(
    'graph', None, 'A GraphDef written by freezer.py or optimize_from_pb.py, to check instead '
    'of --saved_model_dir.')
_REFERENCE = flags.DEFINE_string(
    'reference_saved_model_dir', None, '(required) The original SavedModel the new model must '
    'equal.')
_TAGS = cli_flags.tags()
_SIGNATURE_DEF = cli_flags.signature_def('Signatures to compare, comma-separated; default: '
                                         'every signature of the reference.')
_INPUTS = cli_flags.inputs('Inputs to feed instead of generated ones: an .npz file (arrays '
                           'named INPUT or SIGNATURE/INPUT) or TFRecord files of tf.Example '
                           '(globs allowed).')
_SEED = cli_flags.seed('Random seed of the generated inputs (default 0).')
_NUM_EXAMPLES = cli_flags.num_examples('Examples per signature to compare (default 64).')
_ATOL = flags.DEFINE_float('atol', 1e-6, 'Absolute tolerance.', lower_bound=0)
_RTOL = flags.DEFINE_float('rtol', 1e-6, 'Relative tolerance.', lower_bound=0)
_BATCH_SIZES = flags.DEFINE_multi_integer(
    'batch_sizes', [1, 256], 'Batch sizes to time (repeat the flag for several); none with '
    '--batch_sizes=0.', lower_bound=0)
_LATENCY_RUNS = flags.DEFINE_integer(
    'latency_runs', 50, 'Timed runs per signature and batch size.', lower_bound=1)


def main(argv):
  del argv  # flags only: utils.parse_flags refuses stray arguments

  def work():
    from freezerlib.verify import compare  # --help fast
    passed = compare.compare_models(
        _SAVED_MODEL_DIR.value, _GRAPH.value, _REFERENCE.value, _TAGS.value,
        _SIGNATURE_DEF.value, _INPUTS.value, cli_flags.value_or_default(_NUM_EXAMPLES, 64),
        cli_flags.value_or_default(_SEED, 0), _ATOL.value, _RTOL.value,
        [b for b in _BATCH_SIZES.value if b > 0], _LATENCY_RUNS.value,
        out=sys.stdout)  # today's stdout (the default is bound at import: wrong in-process)
    sys.stdout.flush()
    return utils.EXIT_OK if passed else utils.EXIT_FAILURE

  return utils.run_cli('optimize_from_pb_test.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('reference_saved_model_dir')
  app.run(main, flags_parser=utils.parse_flags)
