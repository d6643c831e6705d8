r"""optimize_from_pb.py: a frozen GraphDef becomes a lean serving SavedModel (and/or GraphDef).

Signature inputs that are reader outputs (`IteratorGetNext:k`) or intermediate tensors become
placeholders named after their signature keys; the dataset, iterator, optimizer, saver and
summaries go; devices are cleared; Grappler's passes run. The SavedModel keeps every signature
(or those of --signature_def). Big constants become variables and tables with big contents are
restored into the tables, from variables/ (--constants_as_variables); small tables are filled
by its main op, which TF Serving, the C++ loader and both Python loaders run. Serving graph
rewrites (--rewrites) read a partitioned embedding as one matrix and hold read-only hash tables
as dense or static tables. A graph frozen with `freezer.py --keep_as_variables` keeps its saver,
and the checkpoint beside it becomes variables/. A sparse input becomes three placeholders
(KEY/indices, KEY/values, KEY/dense_shape) and stays coo_sparse; a ragged one KEY/values and
KEY/row_splits. --serving_input=examples on a graph that still holds its training reader
replaces the reader by one input `examples` of serialized tf.Example (see freezer.py).

Before it says "wrote", the SavedModel written is loaded by TF Serving's C++ loader and each
signature run once on generated inputs (docs/serving_check.md); a model that does not serve is
refused and nothing is left (--nocheck skips the check). A GraphDef written with
--output_graph is checked statically: every table its signatures read is filled by its init op.

Example (after freezer.py's example):
  python optimize_from_pb.py --input_graph=/tmp/freezer_demo/frozen.pb \
      --output_saved_model_dir=/tmp/freezer_demo/serving
"""

import utils  # first: Ctrl-C during start-up is one line

from absl import app
from absl import flags

import cli_flags
from freezerlib.transforms import rewrites  # the registry: --rewrites' choices and help

_INPUT_GRAPH = flags.DEFINE_string(
    'input_graph', None, '(required) Frozen GraphDef, as written by freezer.py (or any frozen '
    'GraphDef with --inputs and --outputs).')
_OUTPUT_SAVED_MODEL_DIR = cli_flags.output_saved_model_dir()
_OUTPUT_GRAPH = cli_flags.output_graph('Optimized GraphDef file to write (besides, or instead '
                                       'of, --output_saved_model_dir).')
_INPUTS = cli_flags.inputs('Input tensors of a GraphDef not written by freezer.py (e.g. '
                           'IteratorGetNext:0,x:0); with --outputs.')
_OUTPUTS = cli_flags.outputs()
_INIT_OP = flags.DEFINE_string(
    'init_op', None, 'With --inputs/--outputs: the op that fills the graph\'s tables, if any.')
_TAGS = cli_flags.tags()
_SIGNATURE_DEF = cli_flags.signature_def()
_OVERWRITE = cli_flags.overwrite()
_ALLOW_OPS = cli_flags.allow_ops()
_SERVING_INPUT = cli_flags.serving_input(
    cli_flags.serving_input.__defaults__[0] + ' Here for a graph that still holds its training '
    'reader (frozen in a session, not by freezer.py, which cuts it: use its own flag).')
_VERSION = cli_flags.version()
_WARMUP = cli_flags.warmup()
_WARMUP_INPUTS = cli_flags.warmup_inputs()
_CHECK = cli_flags.check()
_OPTIMIZE = flags.DEFINE_bool(
    'optimize', True, 'Run Grappler passes (pruning, constant folding, arithmetic, dependency, '
    'function inlining) after the cut.')
_CONSTANTS_AS_VARIABLES = flags.DEFINE_string(
    'constants_as_variables', '1MiB', 'In the SavedModel, constants of this size or more '
    '(64MiB, 1.5GB, 500000 bytes) become variables stored in variables/ and restored on load, '
    'which loads faster than parsing them from the graph; \'off\' keeps every constant in the '
    'graph. --output_graph keeps them as constants either way.')
_REWRITES = flags.DEFINE_list('rewrites', list(rewrites.DEFAULTS), rewrites.flag_help())


@flags.validator('rewrites')
def _known_rewrites(names):
  problem = rewrites.problem([n for n in names if n != 'none'])
  if problem:
    raise flags.ValidationError(problem)
  return True

# --log_dir is absl.logging's own flag (log files, which these scripts never write); here it
# also names where the graphs go, as TensorBoard event files.
flags.FLAGS['log_dir'].help = ('Write the graph before and after as TensorBoard event files '
                               'under LOG_DIR/before and LOG_DIR/after.')
flags.declare_key_flag('log_dir')


def main(argv):
  del argv  # flags only: utils.parse_flags refuses stray arguments

  def work():
    # Imported here, not at the top: --help and usage errors answer without TensorFlow.
    from freezerlib.core import atomic
    from freezerlib.export import from_frozen
    from freezerlib.transforms import constants_as_variables
    threshold = constants_as_variables.parse_threshold(_CONSTANTS_AS_VARIABLES.value)
    version = atomic.parse_version(_VERSION.value)
    if (version or _WARMUP.value) and not _OUTPUT_SAVED_MODEL_DIR.value:
      utils.usage_error('--version and --warmup need --output_saved_model_dir')
    from_frozen.saved_model_from_frozen_graph(
        _INPUT_GRAPH.value, _OUTPUT_SAVED_MODEL_DIR.value, _OUTPUT_GRAPH.value, _INPUTS.value,
        _OUTPUTS.value, _INIT_OP.value, _TAGS.value, _OPTIMIZE.value,
        flags.FLAGS.log_dir or None, _OVERWRITE.value, _ALLOW_OPS.value, threshold,
        signature_names=_SIGNATURE_DEF.value, version=version,
        finalize=utils.serving_checker(utils.warmup_writer(_WARMUP.value, _WARMUP_INPUTS.value),
                                       _CHECK.value),
        serving_input=_SERVING_INPUT.value,
        rewrites=[r for r in _REWRITES.value if r != 'none'])

  return utils.run_cli('optimize_from_pb.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('input_graph')
  app.run(main, flags_parser=utils.parse_flags)
