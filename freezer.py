r"""Freezes a SavedModel into one GraphDef, keeping the contents of its hash tables.

Every variable the chosen signatures' outputs need (resource, ref and partitioned) becomes a
constant. Every table they read (MutableHashTable, MutableHashTableOfTensors, DenseHashTable,
StaticHashTable from constants or from an asset file) keeps its trained contents: the output
graph fills them when its init op `freezer/init_tables` runs. TensorFlow's own
`convert_variables_to_constants` leaves them empty, so every lookup returns the default.

The signatures, tags and init op travel inside the output (node `freezer_metadata`), so the
next step, optimize_from_pb.py, needs no other flag.

A model whose frozen graph would pass protobuf's 2 GB is refused before anything is loaded.
`--keep_as_variables=SIZE` (64MiB, 1.5GB, 500000 bytes) or `=NAME,...` (a partitioned variable
by its base name) keeps the variable partitions and tables it picks as variables and tables,
restored by a saver from a checkpoint written beside the graph (OUTPUT_GRAPH.variables/, only
those tensors' stored bytes); optimize_from_pb.py makes that checkpoint the serving
SavedModel's variables/. Move or copy the graph and its .variables directory together.

Examples:
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen.pb
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen_kept.pb --keep_as_variables=item_embedding,user_stats
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: one-line errors

import lean_tf  # pylint: disable=g-import-not-at-top  # before TensorFlow: its start-up notices stay off stderr

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

import checkpoint_graph
import checkpoints
import cli_flags
import freezing
import graph_edit
import keep_variables
import op_safety
import saved_model_io
import streaming_freeze
import tf2_freezing
import utils

_KEEP_AS_VARIABLES = flags.DEFINE_string(
    'keep_as_variables', None,
    'Keep some variables and hash tables stateful instead of freezing them, restored from a '
    'checkpoint written beside the graph (OUTPUT_GRAPH.variables/): a size (64MiB, 1.5GB, '
    '500000 bytes; units KB, KiB, MB, MiB, GB, GiB) keeps every variable partition and table '
    'whose stored bytes reach it; or comma-separated variable or table names (a partitioned '
    'variable by its base name). For models whose frozen graph would pass protobuf\'s 2 GB.')


def check_untrusted(saved_model_dir, tags, signature_names, allow_ops):
  """Refuses a SavedModel whose loading or signatures would run file, Python or network ops.

  Returns:
    (MetaGraphDef, signatures) chosen.

  Raises:
    utils.UserError: naming the ops (and the flag that accepts them), or an escaping asset.
  """
  proto = saved_model_io.read_saved_model_proto(saved_model_dir)
  meta_graph = saved_model_io.select_meta_graph(proto, tags, saved_model_dir)
  signatures = saved_model_io.select_signatures(meta_graph, signature_names, saved_model_dir)
  saved_model_io.check_tensors_exist(meta_graph.graph_def, signatures, saved_model_dir)
  outside = op_safety.check_meta_graph(meta_graph, signatures, set(allow_ops), saved_model_dir)
  # Never run here; the reader among them stays in the frozen graph until optimize_from_pb.py
  # cuts it.
  op_safety.log_findings(outside, 'not run by the signatures')
  return meta_graph, signatures


def check_fits_protobuf(saved_model_dir, meta_graph, signatures, keep=None):
  """Refuses, before loading anything, a model whose frozen graph would pass 2 GB.

  The size is the bytes of the checkpoint tensors restored into the variables and tables the
  signatures need (read from the variables index, no values loaded), less those `keep` leaves
  stateful.

  Args:
    saved_model_dir: the SavedModel.
    meta_graph: its chosen MetaGraphDef.
    signatures: the signatures to freeze.
    keep: keep_variables.KeepSpec of --keep_as_variables, or None.

  Returns:
    Names of the variable and table nodes to keep stateful (empty without `keep`).

  Raises:
    utils.UserError: with the estimate and the ways out (--keep_as_variables with a size that
      fits, optimize_from_ckpt.py); or a name in `keep` the signatures do not read.
  """
  prefix = utils.join(saved_model_dir, 'variables', 'variables')
  if not meta_graph.saver_def.restore_op_name or not tf.io.gfile.exists(prefix + '.index'):
    if keep is not None and keep.names:
      raise utils.UserError('--keep_as_variables names %s, but %s has no variables/ checkpoint '
                            'to keep them from' % (', '.join(keep.names), saved_model_dir))
    return set()
  index = checkpoints.read_index(prefix)
  outputs = saved_model_io.signature_output_nodes(signatures)
  needed = lean_tf.reachable(meta_graph.graph_def, outputs)
  restores = [r for r in checkpoint_graph.restores_of_saver(
      meta_graph.graph_def, meta_graph.saver_def, saved_model_dir) if r.target in needed]
  kept = keep_variables.select(keep, restores, index, saved_model_dir) if keep else []
  kept_targets = {r.target for r in kept}
  sizes = [keep_variables.restore_bytes(index, r) for r in restores]
  # Each partition counts its own slice: some of a variable's may be kept, others not.
  size = sum(n for r, n in zip(restores, sizes) if r.target not in kept_targets)
  if size > saved_model_io.PROTOBUF_LIMIT:
    # Leave room for the graph itself beside the constants.
    limit = saved_model_io.PROTOBUF_LIMIT
    suggestion = keep_variables.suggest_size(sizes, limit - min(64 << 20, limit // 16))
    keep_hint = ('keep the largest variables and tables as variables, restored from a '
                 'checkpoint beside the graph: --keep_as_variables=%s' % suggestion
                 if suggestion else 'no --keep_as_variables size fits')
    raise utils.UserError(
        'freezing %s would put %s of variables and tables into one GraphDef%s, past '
        'protobuf\'s 2 GB limit; %s; or serve it from its checkpoint: optimize_from_ckpt.py '
        '--saved_model_dir=%s --checkpoint=%s --output_saved_model_dir=DIR' % (
            saved_model_dir, utils.human_bytes(size),
            ' (with --keep_as_variables: %s)' % keep if keep else '', keep_hint,
            saved_model_dir, prefix))
  if keep:
    logging.info('--keep_as_variables (%s) keeps %d of %d variables and tables (%s) as state; '
                 '%s become constants', keep, len(kept), len(restores),
                 ', '.join(sorted(kept_targets)) or 'none', utils.human_bytes(size))
  return kept_targets


def freeze(saved_model_dir, output_graph, tags=('serve',), signature_names=None,
           overwrite=False, allow_ops=(), streaming=True, keep_as_variables=None):
  """Freezes `saved_model_dir` into `output_graph`.

  Streams each variable from the SavedModel's variables/ into the output where the graph
  allows (streaming_freeze.plan), else loads the model in a session and freezes in memory.
  With `keep_as_variables` (the flag's SPEC), the variables and tables it picks stay stateful,
  restored from a checkpoint written beside the graph (keep_variables); only the streaming
  path does that.

  Returns:
    (saved_model_io.FrozenModel, freezing.FreezeReport, bytes written).

  Raises:
    utils.UserError: bad input, unsafe ops not in `allow_ops`, or an output that exists
      (without `overwrite`).
  """
  keep = keep_variables.parse_spec(keep_as_variables)
  utils.check_output_free(output_graph, overwrite)
  meta_graph, signatures = check_untrusted(saved_model_dir, tags, signature_names, allow_ops)
  object_based = tf2_freezing.is_object_based(meta_graph)
  if keep and object_based:
    raise utils.UserError('--keep_as_variables works on TF1 SavedModels; %s was written by '
                          'tf.saved_model.save' % saved_model_dir)
  kept = check_fits_protobuf(saved_model_dir, meta_graph, signatures, keep)
  if kept and not streaming:
    raise utils.UserError('--keep_as_variables needs the streaming freezer')
  # TF2 (object-based) SavedModels take tf2_freezing's path, which checks state inside functions.
  if streaming and not object_based:
    freezing.check_read_only(meta_graph.graph_def, signatures, saved_model_dir)
    the_plan = streaming_freeze.plan(meta_graph, signatures, saved_model_dir, kept)
    if the_plan is not None:
      result = streaming_freeze.write(the_plan, tags, output_graph, overwrite)
      if not kept and overwrite:
        keep_variables.remove_stale_checkpoint(output_graph)
      return result
  model, report = freezing.freeze_saved_model(saved_model_dir, tags, signature_names)
  # The reader (dataset and iterator ops, its embedded data) and anything else the signatures
  # do not run is left out: its inputs become placeholders.
  model.graph_def, model.signatures, _ = graph_edit.cut_to_signatures(
      model.graph_def, model.signatures, [model.table_init_op])
  size = saved_model_io.write_graph_def(
      saved_model_io.frozen_to_graph_def(model), output_graph, overwrite)
  if overwrite:
    keep_variables.remove_stale_checkpoint(output_graph)
  return model, report, size


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    if not cli_flags.SIGNATURE_DEF.value:
      utils.log_default('signature_def', 'every signature')
    model, _, size = freeze(cli_flags.SAVED_MODEL_DIR.value, cli_flags.OUTPUT_GRAPH.value,
                            cli_flags.TAGS.value, cli_flags.SIGNATURE_DEF.value,
                            cli_flags.OVERWRITE.value, cli_flags.ALLOW_OPS.value,
                            keep_as_variables=_KEEP_AS_VARIABLES.value)
    logging.info('wrote %s (%s, %d nodes; signatures: %s)%s', cli_flags.OUTPUT_GRAPH.value,
                 utils.human_bytes(size), len(model.graph_def.node),
                 ', '.join(sorted(model.signatures)),
                 ('; kept variables in %s' % keep_variables.checkpoint_dir(
                     cli_flags.OUTPUT_GRAPH.value)) if model.saver_def else '')

  return utils.run_cli('freezer.py', work)


if __name__ == '__main__':
  flags.mark_flags_as_required(['saved_model_dir', 'output_graph'])
  app.run(main)
