r"""optimize_from_ckpt.py: a structure graph + a training checkpoint -> a serving SavedModel.

For models too large to freeze (a frozen GraphDef cannot pass protobuf's 2 GB) or to export from
the training cluster. The structure is a SavedModel (possibly a small "fake" one built with the
same variable names, partitions and table shards as the distributed training graph, e.g.
`model_gen.py --fake_infer_graph`) or a .meta file; its own variable values are never read. Its
signature inputs become placeholders, everything the outputs do not need goes, devices are
cleared, and a new saver restores exactly the variables and tables that remain. A sparse input
becomes three placeholders (KEY/indices, KEY/values, KEY/dense_shape), a ragged one its
components; `--serving_input=examples` replaces a structure's training reader by one input
`examples` of serialized tf.Example (see freezer.py).

Before anything is written, every tensor that saver reads is checked against the checkpoint's
index (name, dtype, shape, partition slices). Then `variables/` is written from the checkpoint:
by default only those tensors (optimizer slots, global_step and the like dropped), copied
tensor by tensor in bounded chunks, so memory does not grow with the checkpoint, each checked
while copied against the CRC32C the index records for it (a flipped bit stops the export with
one line naming the tensor and the shard, and nothing is written); `--noprune` keeps the
checkpoint's files as they are (every shard, renamed `variables.data-0000k-of-0000n`,
hard-linked where the filesystem allows, else copied), after checking every tensor.

With a structure whose signature inputs are placeholders (a fake inference graph), TensorFlow
itself is never imported: protos and files only, tensor bytes copied between local files by
two workers, each into a data shard of its own (variables.data-0000k-of-00002;
benchmarks/README.md has the figures).

Before it says "wrote", the SavedModel written is loaded by TF Serving's C++ loader and each
signature run once on generated inputs (docs/serving_check.md); a model that does not serve
is refused and nothing is left. That check maps TensorFlow's C++ library (not its Python API):
--nocheck skips it.

A TF2 structure (tf.saved_model.save, Keras 3 model.export) takes a tf.train.Checkpoint instead
(freezerlib/export/from_tf2_checkpoint.py): the model is found in the checkpoint's object graph
(`--checkpoint_object` names it), its tensors are copied under the structure's keys with the
structure's object graph, and saved_model.pb and the assets are the structure's own; never with
TensorFlow.

Example (a 2-PS cluster's checkpoint, served through its fake inference graph):
  python model_gen.py --output_dir=/tmp/freezer_demo/ps_model --num_ps=2 --num_workers=1
  python model_gen.py --output_dir=/tmp/freezer_demo/fake_infer --fake_infer_graph --num_ps=2
  python optimize_from_ckpt.py --saved_model_dir=/tmp/freezer_demo/fake_infer/saved_model \
      --checkpoint=/tmp/freezer_demo/ps_model/ckpt \
      --output_saved_model_dir=/tmp/freezer_demo/serving_from_ckpt
"""

import utils  # first: Ctrl-C during start-up is one line

from absl import app
from absl import flags
from absl import logging

import cli_flags

_SAVED_MODEL_DIR = cli_flags.saved_model_dir(
    'The structure: a SavedModel whose values are never read (or give --meta_graph).')
_OUTPUT_SAVED_MODEL_DIR = cli_flags.output_saved_model_dir(required=True)
_TAGS = cli_flags.tags()
_SIGNATURE_DEF = cli_flags.signature_def()
_INPUTS = cli_flags.inputs('Input tensors of a structure without signatures (e.g. '
                           'IteratorGetNext:0); with --outputs.')
_OUTPUTS = cli_flags.outputs()
_OVERWRITE = cli_flags.overwrite()
_ALLOW_OPS = cli_flags.allow_ops()
_SERVING_INPUT = cli_flags.serving_input()
_VERSION = cli_flags.version()
_WARMUP = cli_flags.warmup()
_WARMUP_INPUTS = cli_flags.warmup_inputs()
_CHECK = cli_flags.check()
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, '(required) Training checkpoint: a prefix (model.ckpt-1000) or the '
    'directory holding its `checkpoint` state file (the newest is used).')
_META_GRAPH = flags.DEFINE_string(
    'meta_graph', None, 'A MetaGraphDef file (model.ckpt-N.meta) as the structure, instead of '
    '--saved_model_dir; give --inputs and --outputs unless it has signatures.')
_PRUNE = flags.DEFINE_bool(
    'prune', True, 'Export only the tensors the serving graph restores (--noprune: every '
    'checkpoint file as it is).')
_CHECKPOINT_OBJECT = flags.DEFINE_string(
    'checkpoint_object', None, "TF2 structure only: the model's object path in the "
    "tf.train.Checkpoint (`model` for tf.train.Checkpoint(model=m, optimizer=opt)); by default "
    "the object whose variables and tables match the structure's.")
_CHUNK_MB = flags.DEFINE_integer(
    'chunk_mb', 1, 'Bytes (MiB) read, checked and written at a time when copying tensors (a '
    'piece stays in the CPU\'s cache from read to write; a checkpoint on s3://, gs:// or '
    'hdfs:// is read in ranged reads of at least 4 MiB, 8 in flight per worker).',
    lower_bound=1)
_VERIFY = flags.DEFINE_bool(
    'verify_checksums', True, 'Check every tensor copied (with --noprune: every tensor of the '
    'checkpoint, read once) against the CRC32C its index records, as TensorFlow does when it '
    'restores it: a corrupt checkpoint stops the export, naming the tensor and the shard. '
    '--noverify_checksums copies in the kernel without reading the bytes (and --noprune reads '
    'nothing): to measure what checking costs, or for a checkpoint checked already.')


def main(argv):
  del argv  # flags only: utils.parse_flags refuses stray arguments

  def work():
    # Imported here, not at the top: --help answers fast.
    from freezerlib.core import atomic
    from freezerlib.core import errors
    from freezerlib.core import units
    from freezerlib.export import from_checkpoint
    if bool(_SAVED_MODEL_DIR.value) == bool(_META_GRAPH.value):
      raise errors.UserError('give exactly one of --saved_model_dir and --meta_graph')
    version = atomic.parse_version(_VERSION.value)
    # One loader per structure format, each returning a from_checkpoint.Structure.
    if _SAVED_MODEL_DIR.value:
      structure = from_checkpoint.structure_from_saved_model(_SAVED_MODEL_DIR.value, _TAGS.value)
    else:
      structure = from_checkpoint.structure_from_meta_graph(_META_GRAPH.value)
    report = from_checkpoint.saved_model_from_checkpoint(
        checkpoint=_CHECKPOINT.value, output_dir=_OUTPUT_SAVED_MODEL_DIR.value,
        structure=structure, tags=_TAGS.value, signature_names=_SIGNATURE_DEF.value,
        inputs=_INPUTS.value, outputs=_OUTPUTS.value, prune_tensors=_PRUNE.value,
        chunk_bytes=_CHUNK_MB.value << 20, overwrite=_OVERWRITE.value, allow_ops=_ALLOW_OPS.value,
        checkpoint_object=_CHECKPOINT_OBJECT.value, version=version,
        finalize=utils.serving_checker(utils.warmup_writer(_WARMUP.value, _WARMUP_INPUTS.value),
                                       _CHECK.value),
        serving_input=_SERVING_INPUT.value, verify_checksums=_VERIFY.value)
    logging.info('wrote SavedModel %s: %d of %d checkpoint tensors, %s of %s (%.1f%%), in %.1f s',
                 report.path, report.tensors_exported,
                 report.tensors_in_checkpoint, units.human_bytes(report.bytes_exported),
                 units.human_bytes(report.bytes_in_checkpoint),
                 100.0 * report.bytes_exported / max(1, report.bytes_in_checkpoint),
                 report.seconds)

  return utils.run_cli('optimize_from_ckpt.py', work)


if __name__ == '__main__':
  flags.mark_flags_as_required(['checkpoint', 'output_saved_model_dir'])
  app.run(main, flags_parser=utils.parse_flags)
