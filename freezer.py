r"""Freezes a SavedModel into one GraphDef, keeping the contents of its hash tables.

Every variable the chosen signatures' outputs need (resource, ref and partitioned) becomes a
constant. Every table they read (MutableHashTable, MutableHashTableOfTensors, DenseHashTable,
StaticHashTable from constants or from an asset file) keeps its trained contents: the output
graph fills them when its init op `freezer/init_tables` runs. TensorFlow's own
`convert_variables_to_constants` leaves them empty, so every lookup returns the default.

The signatures, tags and init op travel inside the output (node `freezer_metadata`), so the
next step, optimize_from_pb.py, needs no other flag.

Example:
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen.pb
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: one-line errors

import lean_tf  # pylint: disable=g-import-not-at-top,unused-import  # before TensorFlow: its start-up notices stay off stderr

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

import checkpoint_graph
import checkpoints
import cli_flags
import freezing
import graph_edit
import op_safety
import saved_model_io
import streaming_freeze
import tf2_freezing
import utils


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


def check_fits_protobuf(saved_model_dir, meta_graph, signatures):
  """Refuses, before loading anything, a model whose frozen graph would pass 2 GB.

  The size is the bytes of the checkpoint tensors restored into the variables and tables the
  signatures need (read from the variables index, no values loaded).

  Raises:
    utils.UserError: with the estimate and the way out (optimize_from_ckpt.py).
  """
  prefix = utils.join(saved_model_dir, 'variables', 'variables')
  if not meta_graph.saver_def.restore_op_name or not tf.io.gfile.exists(prefix + '.index'):
    return
  index = checkpoints.read_index(prefix)
  outputs = saved_model_io.signature_output_nodes(signatures)
  needed = {n.name for n in tf.compat.v1.graph_util.extract_sub_graph(
      meta_graph.graph_def, outputs).node}
  restores = checkpoint_graph.restores_of_saver(meta_graph.graph_def, meta_graph.saver_def,
                                                saved_model_dir)
  names = {name for r in restores if r.target in needed for name in r.names}
  size = sum(index.nbytes(n) for n in names if n in index.entries)
  if size > saved_model_io.PROTOBUF_LIMIT:
    raise utils.UserError(
        'freezing %s would put %s of variables and tables into one GraphDef, past protobuf\'s '
        '2 GB limit; serve it from its checkpoint instead: optimize_from_ckpt.py '
        '--saved_model_dir=%s --checkpoint=%s --output_saved_model_dir=DIR' % (
            saved_model_dir, utils.human_bytes(size), saved_model_dir, prefix))


def freeze(saved_model_dir, output_graph, tags=('serve',), signature_names=None,
           overwrite=False, allow_ops=(), streaming=True):
  """Freezes `saved_model_dir` into `output_graph`.

  Streams each variable from the SavedModel's variables/ into the output where the graph
  allows (streaming_freeze.plan), else loads the model in a session and freezes in memory.

  Returns:
    (saved_model_io.FrozenModel, freezing.FreezeReport, bytes written).

  Raises:
    utils.UserError: bad input, unsafe ops not in `allow_ops`, or an output that exists
      (without `overwrite`).
  """
  utils.check_output_free(output_graph, overwrite)
  meta_graph, signatures = check_untrusted(saved_model_dir, tags, signature_names, allow_ops)
  check_fits_protobuf(saved_model_dir, meta_graph, signatures)
  # TF2 (object-based) SavedModels take tf2_freezing's path, which checks state inside functions.
  if streaming and not tf2_freezing.is_object_based(meta_graph):
    freezing.check_read_only(meta_graph.graph_def, signatures, saved_model_dir)
    the_plan = streaming_freeze.plan(meta_graph, signatures, saved_model_dir)
    if the_plan is not None:
      return streaming_freeze.write(the_plan, tags, output_graph, overwrite)
  model, report = freezing.freeze_saved_model(saved_model_dir, tags, signature_names)
  # The reader (dataset and iterator ops, its embedded data) and anything else the signatures
  # do not run is left out: its inputs become placeholders.
  model.graph_def, model.signatures, _ = graph_edit.cut_to_signatures(
      model.graph_def, model.signatures, [model.table_init_op])
  size = saved_model_io.write_graph_def(
      saved_model_io.frozen_to_graph_def(model), output_graph, overwrite)
  return model, report, size


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    if not cli_flags.SIGNATURE_DEF.value:
      utils.log_default('signature_def', 'every signature')
    model, _, size = freeze(cli_flags.SAVED_MODEL_DIR.value, cli_flags.OUTPUT_GRAPH.value,
                            cli_flags.TAGS.value, cli_flags.SIGNATURE_DEF.value,
                            cli_flags.OVERWRITE.value, cli_flags.ALLOW_OPS.value)
    logging.info('wrote %s (%s, %d nodes; signatures: %s)', cli_flags.OUTPUT_GRAPH.value,
                 utils.human_bytes(size), len(model.graph_def.node),
                 ', '.join(sorted(model.signatures)))

  return utils.run_cli('freezer.py', work)


if __name__ == '__main__':
  flags.mark_flags_as_required(['saved_model_dir', 'output_graph'])
  app.run(main)
