r"""Turns a frozen training graph into a lean serving SavedModel (and/or GraphDef).

Each signature input that is a reader output (`IteratorGetNext:k`) or an intermediate tensor
becomes a Placeholder named after its signature key; everything the signatures' outputs and the
table fill do not need (dataset and iterator ops, optimizer, saver, summaries, the reader's
embedded data) is removed; devices are cleared; Grappler's constant folding and arithmetic
passes run (--nooptimize to skip). The SavedModel keeps every signature key and method name and
fills its tables in its main op, which TF Serving, the C++ loader and both Python loaders run.
A graph frozen with `freezer.py --keep_as_variables` keeps its saver (restore and save ops,
never folded) and the checkpoint beside it becomes the SavedModel's variables/ (hard-linked
where the filesystem allows, else copied); a missing or different checkpoint is refused.

Example:
  python optimize_from_pb.py --input_graph=/tmp/freezer_demo/frozen.pb \
      --output_saved_model_dir=/tmp/freezer_demo/serving
"""

import dataclasses
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: one-line errors

import lean_tf  # pylint: disable=g-import-not-at-top  # before TensorFlow: its start-up notices stay off stderr

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

import cli_flags
import constants_as_variables as constants_as_variables_lib
import graph_edit
import keep_variables
import op_safety
import saved_model_io
import utils

tf1 = tf.compat.v1

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
def load_input_graph(path, inputs=(), outputs=(), init_op=None, tags=('serve',)):
  """The FrozenModel in `path`: its own metadata, or the one --inputs/--outputs describe.

  Raises:
    utils.UserError: unreadable graph, unknown tensors.
  """
  graph_def = saved_model_io.read_graph_def(path)
  frozen = saved_model_io.frozen_from_graph_def(graph_def, path, in_place=True)
  if inputs or outputs or frozen is None:
    plain = frozen.graph_def if frozen is not None else graph_def
    if not inputs or not outputs:
      raise utils.UserError('%s was not written by freezer.py: give both --inputs and --outputs'
                            % path)
    signature = saved_model_io.signature_from_tensors(plain, inputs, outputs, path)
    if init_op and init_op not in {n.name for n in plain.node}:
      raise utils.UserError('--init_op names %s, which is not an op of %s' % (init_op, path))
    # A graph that keeps variables keeps its saver and checkpoint whatever the signature.
    frozen = dataclasses.replace(
        frozen or saved_model_io.FrozenModel(graph_def=plain, signatures={}, tags=[]),
        graph_def=plain, signatures={'serving_default': signature}, tags=list(tags),
        table_init_op=init_op)
  saved_model_io.check_tensors_exist(frozen.graph_def, frozen.signatures, path)
  return frozen


def write_tensorboard_graph(graph_def, log_dir):
  """Writes `graph_def` as a TensorBoard event file under `log_dir`."""
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
    writer = tf1.summary.FileWriter(log_dir, graph=graph)
    writer.close()


def optimize(input_graph, output_saved_model_dir=None, output_graph=None, inputs=(),
             outputs=(), init_op=None, tags=('serve',), grappler=True, log_dir=None,
             overwrite=False, allow_ops=(), constants_as_variables=1 << 20):
  """Cuts, strips and re-dumps `input_graph`.

  `constants_as_variables`: in the SavedModel, Consts of at least this many bytes become
  variables restored from its variables/ (None: none do); see constants_as_variables.py.

  Returns:
    (optimized FrozenModel, GraphStats before, GraphStats after); the model's big constants
    are variables (its `saver_def` set) when `constants_as_variables` picked any.

  Raises:
    utils.UserError: bad input, or an output that exists (without `overwrite`).
  """
  if not output_saved_model_dir and not output_graph:
    raise utils.UserError('nothing to write: give --output_saved_model_dir and/or '
                          '--output_graph')
  for path in (output_saved_model_dir, output_graph):
    if path:
      utils.check_output_free(path, overwrite)
  frozen = load_input_graph(input_graph, inputs, outputs, init_op, tags)
  prefix, saver = None, set()
  if frozen.saver_def is not None:  # freezer.py --keep_as_variables: a checkpoint beside it
    prefix = keep_variables.checkpoint_of(frozen, input_graph)
    saver = op_safety.saver_nodes(frozen.graph_def, frozen.saver_def)
  needed = op_safety.needed_nodes(frozen.graph_def, frozen.signatures,
                                  [frozen.table_init_op] if frozen.table_init_op else [])
  removed = op_safety.enforce(op_safety.find_unsafe(frozen.graph_def, exempt=saver), needed,
                              set(allow_ops), input_graph)
  op_safety.log_findings(removed, 'removed (not run by the signatures)')
  # Big constants are set aside as variables first: Grappler and the cut then work on a graph
  # without their bytes (on a graph with 355 MiB of constants Grappler alone took 9.5 s), and
  # the SavedModel restores them from variables/ instead of parsing them from its graph.
  split = None
  if frozen.saver_def is None and constants_as_variables is not None:
    split = constants_as_variables_lib.split(frozen, constants_as_variables)
  work = split.frozen if split else frozen
  try:
    result, before, after = graph_edit.optimize_frozen(work, grappler)
  except (ValueError, tf.errors.OpError) as e:
    raise utils.UserError('cannot optimize %s: %s'
                          % (input_graph, utils.tf_error_message(e))) from e
  op_safety.unsafe_in(result.graph_def, set(allow_ops), input_graph,
                      exempt=(op_safety.saver_nodes(result.graph_def, result.saver_def)
                              if result.saver_def is not None else ()))
  if split:
    logging.info('%d constants of %s or more (%s) set aside as variables', len(split.values),
                 utils.human_bytes(constants_as_variables), utils.human_bytes(
                     sum(lean_tf.tensor_nbytes(t) for _, t in split.values.values())))
    split = constants_as_variables_lib.Split(result, split.values)
  graph_edit.log_cut(before, after)
  if log_dir:
    write_tensorboard_graph(frozen.graph_def, utils.join(log_dir, 'before'))
    write_tensorboard_graph(result.graph_def, utils.join(log_dir, 'after'))
    logging.info('TensorBoard graphs: tensorboard --logdir=%s', log_dir)
  if output_graph and prefix:
    keep_variables.write_graph(result, prefix, output_graph, overwrite)
    logging.info('wrote %s and its checkpoint %s', output_graph,
                 keep_variables.checkpoint_dir(output_graph))
  elif output_graph:
    plain = constants_as_variables_lib.inline(split) if split else result
    saved_model_io.write_graph_def(saved_model_io.frozen_to_graph_def(plain), output_graph,
                                   overwrite)
    logging.info('wrote %s', output_graph)
  if output_saved_model_dir and prefix:
    size = keep_variables.write_saved_model(result, prefix, output_saved_model_dir, overwrite)
    logging.info('wrote SavedModel %s (%s, variables/ from %s; signatures: %s)',
                 output_saved_model_dir, utils.human_bytes(size), prefix,
                 ', '.join(sorted(result.signatures)))
  elif output_saved_model_dir:
    if split:
      size = constants_as_variables_lib.write_saved_model(split, output_saved_model_dir,
                                                          overwrite)
    else:
      size = saved_model_io.write_saved_model(result, output_saved_model_dir, overwrite)
    logging.info('wrote SavedModel %s (%s; signatures: %s)', output_saved_model_dir,
                 utils.human_bytes(size), ', '.join(sorted(result.signatures)))
  return result, before, after


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    threshold = constants_as_variables_lib.parse_threshold(_CONSTANTS_AS_VARIABLES.value)
    optimize(_INPUT_GRAPH.value, cli_flags.OUTPUT_SAVED_MODEL_DIR.value,
             cli_flags.OUTPUT_GRAPH.value, cli_flags.INPUTS.value, cli_flags.OUTPUTS.value,
             _INIT_OP.value, cli_flags.TAGS.value, _OPTIMIZE.value, flags.FLAGS.log_dir or None,
             cli_flags.OVERWRITE.value, cli_flags.ALLOW_OPS.value, threshold)

  return utils.run_cli('optimize_from_pb.py', work)


if __name__ == '__main__':
  flags.mark_flag_as_required('input_graph')
  app.run(main)
