"""Flags several scripts share: each defined here once, so it means the same thing everywhere.

A script calls the function of each shared flag it uses (`_SAVED_MODEL_DIR =
cli_flags.saved_model_dir(required=True)`): the flag is defined (once per process) and becomes
one of that script's key flags, so `--help` lists it beside the script's own flags, and a
script never accepts a shared flag it does not use (absl: unknown flag, a usage error).
`required=True` marks the flag "(required)" in `--help`; the script makes it so with
`flags.mark_flags_as_required` under `if __name__ == '__main__'` (tests import several scripts
into one process, where a flag one of them requires is optional for another).
"""

import sys

from absl import flags

_HOLDERS = {}


def _caller_module():
  name = sys._getframe(3).f_globals.get('__name__', '')
  return sys.argv[0] if name == '__main__' else name


def _shared(define, name, default, help_text, required, **kwargs):
  if name not in _HOLDERS:
    _HOLDERS[name] = define(name, default, ('(required) ' if required else '') + help_text,
                            **kwargs)
  flags.FLAGS.register_key_flag_for_module(_caller_module(), flags.FLAGS[name])
  return _HOLDERS[name]


def saved_model_dir(help_text='SavedModel directory to read.', required=False):
  return _shared(flags.DEFINE_string, 'saved_model_dir', None, help_text, required)


def output_graph(help_text='GraphDef file to write (binary protobuf).', required=False):
  return _shared(flags.DEFINE_string, 'output_graph', None, help_text, required)


def output_saved_model_dir(help_text='Serving SavedModel directory to write.', required=False):
  return _shared(flags.DEFINE_string, 'output_saved_model_dir', None, help_text, required)


def tags(help_text='Tag set of the MetaGraph to read (and of the SavedModel written).'):
  return _shared(flags.DEFINE_list, 'tags', ['serve'], help_text, False)


def signature_def(help_text='Signature keys to keep, comma-separated; default: all of them.'):
  return _shared(flags.DEFINE_list, 'signature_def', [], help_text, False)


def inputs(help_text):
  return _shared(flags.DEFINE_list, 'inputs', [], help_text, False)


def outputs(help_text='Output tensors (e.g. probability:0) of a graph without signatures; '
            'with --inputs.'):
  return _shared(flags.DEFINE_list, 'outputs', [], help_text, False)


def overwrite(help_text='Replace existing outputs (without it, an existing output is an '
              'error).'):
  return _shared(flags.DEFINE_bool, 'overwrite', False, help_text, False)


def allow_ops(help_text='Op types that read or write files, run Python or reach the network '
              '(ReadFile, PyFunc, ...) to accept in what the model runs; by default such ops '
              'stop the run. Only for models you trust.'):
  return _shared(flags.DEFINE_list, 'allow_ops', [], help_text, False)


def seed(help_text):
  return _shared(flags.DEFINE_integer, 'seed', None, help_text, False)


def num_examples(help_text):
  return _shared(flags.DEFINE_integer, 'num_examples', None, help_text, False, lower_bound=1)


def value_or_default(holder, default):
  """The flag's value, or `default` (logged as chosen) when the user left it unset."""
  if holder.value is None:
    from absl import logging
    logging.info("'--%s' not given, using %s", holder.name, default)
    return default
  return holder.value


def version(help_text='Write the SavedModel as OUTPUT_SAVED_MODEL_DIR/<version>, TF Serving\'s '
            'layout (its --model_base_path is OUTPUT_SAVED_MODEL_DIR): a positive integer, or '
            '"auto" for one more than the highest version there (1 for a new directory).'):
  return _shared(flags.DEFINE_string, 'version', None, help_text, False)


def warmup(help_text='Write this many TF Serving warmup requests (at most 1000) into '
           'assets.extra/tf_serving_warmup_requests, one signature after another, inputs '
           'generated from the tables\' keys (or --warmup_inputs). 0: none.'):
  return _shared(flags.DEFINE_integer, 'warmup', 0, help_text, False, lower_bound=0,
                 upper_bound=1000)


def warmup_inputs(help_text='Inputs of the warmup requests: an .npz file (arrays named INPUT '
                  'or SIGNATURE/INPUT) or TFRecord files of tf.Example (globs allowed).'):
  return _shared(flags.DEFINE_list, 'warmup_inputs', [], help_text, False)


def check(help_text='Before saying "wrote", load the SavedModel written with TF Serving\'s '
          'loader (the C++ TF_LoadSessionFromSavedModel, in this process) and run each '
          'signature once on generated inputs; if it fails, nothing is written and the run '
          'exits 1 naming the error. --nocheck skips it (for a model too big to load twice).'):
  return _shared(flags.DEFINE_bool, 'check', True, help_text, False)


SERVING_INPUTS = ('placeholders', 'examples')


def serving_input(help_text='What the serving signatures take. placeholders: each input as it '
                  'is (a reader output becomes a placeholder; a sparse one three, KEY/indices, '
                  'KEY/values, KEY/dense_shape; a ragged one KEY/values, KEY/row_splits). '
                  'examples: the training reader becomes one string input `examples` of '
                  'serialized tf.Example, parsed by the reader\'s own parse op (only the '
                  'features the outputs use; a label is not required), plus Classify and '
                  'Regress signatures where the outputs allow them, as Estimator\'s parsing '
                  'serving input receiver exported.'):
  def define(name, default, text):
    return flags.DEFINE_enum(name, default, list(SERVING_INPUTS), text)
  return _shared(define, 'serving_input', 'placeholders', help_text, False)
