"""Flags that several scripts share, defined once so each means the same thing everywhere.

Scripts import the holders they use from here and define only flags of their own. Defining a
flag twice in one process is an error in absl, and tests import several scripts at once.
"""

from absl import flags

SAVED_MODEL_DIR = flags.DEFINE_string(
    'saved_model_dir', None, 'SavedModel directory to read (for optimize_from_pb_test.py: the '
    'new model to check).')
OUTPUT_GRAPH = flags.DEFINE_string(
    'output_graph', None, 'GraphDef file to write (binary protobuf).')
OUTPUT_SAVED_MODEL_DIR = flags.DEFINE_string(
    'output_saved_model_dir', None, 'Serving SavedModel directory to write.')
TAGS = flags.DEFINE_list('tags', ['serve'], 'Tag set of the MetaGraph to read or write.')
SIGNATURE_DEF = flags.DEFINE_list(
    'signature_def', [], 'Signature keys to use, comma-separated; default: all of them.')
INPUTS = flags.DEFINE_list(
    'inputs', [], 'optimize_from_pb.py: input tensors of a GraphDef not written by freezer.py '
    '(e.g. IteratorGetNext:0,x:0). optimize_from_pb_test.py: inputs to feed, an .npz file or '
    'TFRecord files (globs allowed) of tf.Example.')
OUTPUTS = flags.DEFINE_list(
    'outputs', [], 'Output tensors (e.g. probability:0) of a GraphDef not written by freezer.py.')
OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Replace existing outputs (without it, an existing output is an error).')
ALLOW_OPS = flags.DEFINE_list(
    'allow_ops', [], 'Op types that read or write files, run Python or reach the network '
    '(ReadFile, PyFunc, ...) to accept in what the model runs; by default such ops stop the run. '
    'Only for models you trust.')
SERVING_INPUT = flags.DEFINE_enum(
    'serving_input', 'placeholders', ['placeholders', 'examples'],
    'What the serving signatures take. placeholders: each input as it is (a reader output '
    'becomes a placeholder; a sparse one three, KEY/indices, KEY/values, KEY/dense_shape). '
    'examples: the training reader becomes one string input `examples` of serialized '
    'tf.Example, parsed by the reader\'s own parse op (only the features the outputs use; a '
    'label is not required), plus Classify and Regress signatures where the outputs allow '
    'them, as Estimator\'s parsing serving input receiver exported (freezer.py, '
    'optimize_from_ckpt.py, and optimize_from_pb.py on a graph that still holds its reader).')
SEED = flags.DEFINE_integer(
    'seed', None, 'Random seed: same seed, same result (model_gen.py default 42, '
    'optimize_from_pb_test.py default 0).')
NUM_EXAMPLES = flags.DEFINE_integer(
    'num_examples', None, 'model_gen.py: training examples to write (default 4096). '
    'optimize_from_pb_test.py: examples per signature to compare (default 64).', lower_bound=1)


def value_or_default(holder, default):
  """The flag's value, or `default` (logged as chosen) when the user left it unset."""
  if holder.value is None:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.info("'--%s' not given, using %s", holder.name, default)
    return default
  return holder.value
