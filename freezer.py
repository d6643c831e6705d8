r"""freezer.py: a SavedModel becomes one frozen GraphDef whose hash tables keep their contents.

Every variable the signatures need becomes a constant; every table they read keeps its trained
keys and values, re-filled by the op `freezer/init_tables` (TensorFlow's own
convert_variables_to_constants leaves them empty). Signature inputs that are reader outputs
become placeholders, and what the signatures do not run (the tf.data reader, the optimizer,
savers) is left out. Signatures, tags and that op travel inside the output, so the next step,
optimize_from_pb.py, needs no other flag. A TF1 SavedModel without signatures is frozen for
the tensors --inputs and --outputs name (one signature, serving_default, which replaces the
SavedModel's own when it has some).

Tables created inside functions (tensorflow-transform serving models, re-saved SavedModels whose
tables were initialized from asset vocabularies) are kept like any other (docs/pipeline.md).
Before writing, every table the signatures read must be filled by `freezer/init_tables`; a
resource that cannot be frozen is refused, naming it.

A sparse reader output (a coo_sparse input) becomes three placeholders, KEY/indices,
KEY/values, KEY/dense_shape; a ragged one KEY/values, KEY/row_splits. With
`--serving_input=examples` the reader becomes one input `examples` of serialized tf.Example,
parsed by the reader's own parse op, with Classify and Regress signatures where the outputs
allow them.

A model whose frozen graph would pass protobuf's 2 GB is refused before anything is loaded;
`--keep_as_variables` keeps the biggest variables and tables stateful, restored from a
checkpoint written beside the graph (OUTPUT_GRAPH.variables/: move the two together).

Example (after `python model_gen.py --output_dir=/tmp/freezer_demo/model --steps=200 --seed=7`):
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen.pb
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen_kept.pb --keep_as_variables=item_embedding,user_stats
"""

import utils  # first: Ctrl-C during start-up is one line

from absl import app
from absl import flags
from absl import logging

import cli_flags

_SAVED_MODEL_DIR = cli_flags.saved_model_dir('SavedModel to freeze.', required=True)
_OUTPUT_GRAPH = cli_flags.output_graph('Frozen GraphDef file to write.', required=True)
_TAGS = cli_flags.tags()
_SIGNATURE_DEF = cli_flags.signature_def()
_INPUTS = cli_flags.inputs('With --outputs, input tensors to serve (e.g. IteratorGetNext:0,x:0) '
                           'as one signature, serving_default, in place of the SavedModel\'s '
                           'own (for a SavedModel without signatures).')
_OUTPUTS = cli_flags.outputs()
_OVERWRITE = cli_flags.overwrite()
_ALLOW_OPS = cli_flags.allow_ops()
_SERVING_INPUT = cli_flags.serving_input()
_KEEP_AS_VARIABLES = flags.DEFINE_string(
    'keep_as_variables', None,
    'Keep some variables and hash tables stateful instead of freezing them, restored from a '
    'checkpoint written beside the graph (OUTPUT_GRAPH.variables/): a size (64MiB, 1.5GB, '
    '500000 bytes; units KB, KiB, MB, MiB, GB, GiB) keeps every variable partition and table '
    'whose stored bytes reach it; or comma-separated variable or table names (a partitioned '
    'variable by its base name). For models whose frozen graph would pass protobuf\'s 2 GB.')


def main(argv):
  del argv  # flags only: utils.parse_flags refuses stray arguments

  def work():
    from freezerlib import freeze  # --help stays fast
    from freezerlib.core import units
    from freezerlib.formats import frozen_graph
    if not _SIGNATURE_DEF.value and not _INPUTS.value:
      utils.log_default('signature_def', 'every signature')
    result = freeze.graph_from_saved_model(
        _SAVED_MODEL_DIR.value, _OUTPUT_GRAPH.value, _TAGS.value, _SIGNATURE_DEF.value,
        _OVERWRITE.value, _ALLOW_OPS.value, keep_as_variables=_KEEP_AS_VARIABLES.value,
        inputs=_INPUTS.value, outputs=_OUTPUTS.value, serving_input=_SERVING_INPUT.value)
    logging.info('wrote %s (%s, %d nodes; signatures: %s)%s', result.path,
                 units.human_bytes(result.bytes), len(result.model.graph_def.node),
                 ', '.join(sorted(result.model.signatures)),
                 ('; kept variables in %s' % frozen_graph.checkpoint_dir(result.path))
                 if result.kept else '')

  return utils.run_cli('freezer.py', work)


if __name__ == '__main__':
  flags.mark_flags_as_required(['saved_model_dir', 'output_graph'])
  app.run(main, flags_parser=utils.parse_flags)
