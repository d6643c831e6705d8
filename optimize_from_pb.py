r"""Turns a frozen training graph into a lean serving SavedModel (and/or GraphDef).

Each signature input that is a reader output (`IteratorGetNext:k`) or an intermediate tensor
becomes a Placeholder named after its signature key; everything the signatures' outputs and the
table fill do not need (dataset and iterator ops, optimizer, saver, summaries, the reader's
embedded data) is removed; devices are cleared; Grappler's constant folding and arithmetic
passes run (--nooptimize to skip). The SavedModel keeps every signature key and method name and
fills its tables in its main op, which TF Serving, the C++ loader and both Python loaders run.
A sparse input becomes three placeholders (KEY/indices, KEY/values, KEY/dense_shape) and keeps
its coo_sparse TensorInfo; a ragged one its components. `--serving_input=examples` on a graph
that still holds its training reader replaces the reader by one input `examples` of serialized
tf.Example (see freezer.py). A graph frozen with `freezer.py --keep_as_variables` keeps its saver (restore and save ops,
never folded) and the checkpoint beside it becomes the SavedModel's variables/ (hard-linked
where the filesystem allows, else copied); a missing or different checkpoint is refused.

Example:
  python optimize_from_pb.py --input_graph=/tmp/freezer_demo/frozen.pb \
      --output_saved_model_dir=/tmp/freezer_demo/serving
"""

from absl import app
from absl import flags

import cli_flags
from freezerlib.export import from_frozen
from freezerlib.transforms import constants_as_variables
import utils

_INPUT_GRAPH = flags.DEFINE_string(
    'input_graph', None, 'Frozen GraphDef, as written by freezer.py (or any frozen GraphDef '
    'with --inputs and --outputs).')
_INIT_OP = flags.DEFINE_string(
    'init_op', None, 'With --inputs/--outputs: the op that fills the graph\'s tables, if any.')
_OPTIMIZE = flags.DEFINE_bool(
    'optimize', True, 'Run Grappler passes (pruning, constant folding, arithmetic, dependency, '
    'function inlining) after the cut. Tests show outputs unchanged on every test model.')
_CONSTANTS_AS_VARIABLES = flags.DEFINE_string(
    'constants_as_variables', '1MiB', 'In the SavedModel, constants of this size or more '
    '(64MiB, 1.5GB, 500000 bytes) become variables stored in variables/ and restored on load, '
    'which loads faster than parsing them from the graph; \'off\' keeps every constant in the '
    'graph. --output_graph keeps them as constants either way.')
# --log_dir is absl.logging's own flag (log files, which these scripts never write); here it
# also names where the TensorBoard graphs go.
flags.FLAGS['log_dir'].help = ('Write the graph before and after as TensorBoard event files '
                               'under LOG_DIR/before and LOG_DIR/after.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    threshold = constants_as_variables.parse_threshold(_CONSTANTS_AS_VARIABLES.value)
    from_frozen.saved_model_from_frozen_graph(
        _INPUT_GRAPH.value, cli_flags.OUTPUT_SAVED_MODEL_DIR.value, cli_flags.OUTPUT_GRAPH.value,
        cli_flags.INPUTS.value, cli_flags.OUTPUTS.value, _INIT_OP.value, cli_flags.TAGS.value,
        _OPTIMIZE.value, flags.FLAGS.log_dir or None, cli_flags.OVERWRITE.value,
        cli_flags.ALLOW_OPS.value, threshold, cli_flags.SERVING_INPUT.value)

  return utils.run_cli('optimize_from_pb.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('input_graph')
  app.run(main)
