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

Signature inputs that are reader outputs become placeholders named after their keys (a sparse
one three: KEY/indices, KEY/values, KEY/dense_shape; a ragged one KEY/values, KEY/row_splits),
or, with `--serving_input=examples`, the reader becomes one input `examples` of serialized
tf.Example parsed by the reader's own parse op, with Classify and Regress signatures where the
outputs allow them.

Examples:
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen.pb
  python freezer.py --saved_model_dir=/tmp/freezer_demo/model/saved_model \
      --output_graph=/tmp/freezer_demo/frozen_kept.pb --keep_as_variables=item_embedding,user_stats
"""

from absl import app
from absl import flags
from absl import logging

import cli_flags
from freezerlib import freeze
from freezerlib.core import units
from freezerlib.formats import frozen_graph
import utils

_KEEP_AS_VARIABLES = flags.DEFINE_string(
    'keep_as_variables', None,
    'Keep some variables and hash tables stateful instead of freezing them, restored from a '
    'checkpoint written beside the graph (OUTPUT_GRAPH.variables/): a size (64MiB, 1.5GB, '
    '500000 bytes; units KB, KiB, MB, MiB, GB, GiB) keeps every variable partition and table '
    'whose stored bytes reach it; or comma-separated variable or table names (a partitioned '
    'variable by its base name). For models whose frozen graph would pass protobuf\'s 2 GB.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))

  def work():
    if not cli_flags.SIGNATURE_DEF.value:
      utils.log_default('signature_def', 'every signature')
    result = freeze.graph_from_saved_model(
        cli_flags.SAVED_MODEL_DIR.value, cli_flags.OUTPUT_GRAPH.value, cli_flags.TAGS.value,
        cli_flags.SIGNATURE_DEF.value, cli_flags.OVERWRITE.value, cli_flags.ALLOW_OPS.value,
        keep_as_variables=_KEEP_AS_VARIABLES.value,
        serving_input=cli_flags.SERVING_INPUT.value)
    logging.info('wrote %s (%s, %d nodes; signatures: %s)%s', result.path,
                 units.human_bytes(result.bytes), len(result.model.graph_def.node),
                 ', '.join(sorted(result.model.signatures)),
                 ('; kept variables in %s' % frozen_graph.checkpoint_dir(result.path))
                 if result.kept else '')

  return utils.run_cli('freezer.py', work)


if __name__ == '__main__':
  flags.mark_flags_as_required(['saved_model_dir', 'output_graph'])
  app.run(main)
