"""Fuzzing: mutated model files either convert to a model that answers as its input does, or
are refused with a UserError. Never another exception, never a broken model written.

Each case copies the tiny test model's files (tests/conftest.py TINY: hash tables, a 3-way
partitioned embedding, Adam slots), mutates one of them (tests/fuzz_mutators.py: field-level
protobuf mutations, byte flips and truncations, checkpoint index entries, headers and block
handles re-encoded with valid checksums, data files truncated, extended, flipped, deleted or
added) and runs the library's entry point for that file in-process:

- `saved_model`: saved_model.pb -> freeze.graph_from_saved_model (freezer.py);
- `structure`: saved_model.pb as the structure of from_checkpoint (optimize_from_ckpt.py);
- `saved_model_variables`: variables/variables.{index,data-*} -> freezer.py;
- `frozen`: a frozen graph, or its freezer_metadata, -> from_frozen (optimize_from_pb.py);
- `checkpoint`: the training checkpoint's .index or data files, or its directory with a
  mutated `checkpoint` state file -> optimize_from_ckpt.py;
- `tf2_saved_model`: a small TF2 SavedModel's saved_model.pb or variables/ -> freezer.py.

The verdict of each case:
- refused: a UserError, nothing written, the input unchanged;
- converted: the output loads as a server loads it and answers every signature as the mutated
  input does (TensorFlow's own loader on it); when TensorFlow cannot run the mutated input at
  all, as the original model does (the mutation was in a part the conversion drops);
- anything else is a failure: another exception (a traceback), an output that does not load
  or answer, different answers, debris left, an input modified.

Decisions are drawn by Hypothesis, seeded per target (the same cases every run; a failing
case prints its draws and what was mutated). 15 cases per target run in the suite; a longer
run:

    FUZZ_CASES=2000 FUZZ_SEED=7 FUZZ_KEEP_GOING=1 FUZZ_REPORT=/tmp/fuzz.json \\
        python -m pytest -q tests/test_fuzz.py -p no:cacheprovider

FUZZ_CASES is per target; FUZZ_SEED varies the cases; FUZZ_KEEP_GOING records failures and
goes on (the test fails at the end, listing them); FUZZ_REPORT writes the verdict counts and
every failure as JSON.
"""

import collections
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import traceback

import fuzz_mutators
from fuzz_mutators import Choices
from hypothesis import HealthCheck
from hypothesis import Phase
from hypothesis import given
from hypothesis import seed as hypothesis_seed
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import saved_model_pb2
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.verify import inputs as inputs_lib
from freezerlib.verify import loaders

TARGETS = ['saved_model', 'structure', 'saved_model_variables', 'frozen', 'checkpoint',
           'tf2_saved_model']
# Per target in the suite: 150 cases in all, about 20 s on one worker (docs/errors.md).
CASES = int(os.environ.get('FUZZ_CASES', '0')) or 15
SEED = os.environ.get('FUZZ_SEED')
KEEP_GOING = bool(os.environ.get('FUZZ_KEEP_GOING'))
REPORT = os.environ.get('FUZZ_REPORT')
BATCH = 8
ATOL = RTOL = 1e-6

VERDICTS = collections.Counter()
FAILURES = []


class DrawnChoices(Choices):
  """The mutators' decisions drawn from Hypothesis's `data` (shrinkable, reproducible)."""

  def __init__(self, data):
    self._data = data

  def draw_index(self, n):
    return self._data.draw(st.integers(0, max(0, n - 1))) if n > 1 else 0

  def draw_int(self, lo, hi):
    return self._data.draw(st.integers(lo, hi))


def _digest(path):
  digest = hashlib.sha256()
  path = pathlib.Path(path)
  for p in sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]:
    digest.update(str(p).encode())
    digest.update(p.read_bytes())
  return digest.hexdigest()


def _tf2_model(path):
  """A TF2 SavedModel (tf.saved_model.save): a variable and a static table, score =
  table[word] + x @ w; and seeded feeds for it."""
  import tensorflow as tf

  class Module(tf.Module):

    def __init__(self):
      super().__init__()
      self.w = tf.Variable([[1.5], [-2.0]])
      self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
          tf.constant(['apple', 'kiwi', 'plum']), tf.constant([10.0, 20.0, 30.0])), -1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32),
                                  tf.TensorSpec([None], tf.string)])
    def score(self, x, words):
      return {'score': self.table.lookup(words) + tf.squeeze(tf.matmul(x, self.w), 1)}

  module = Module()
  tf.saved_model.save(module, path, signatures={'serving_default': module.score})
  rng = np.random.RandomState(0)
  words = np.array([b'apple', b'kiwi', b'plum', b'fig'] * 2, dtype=object)
  return {'serving_default': {'x': rng.rand(BATCH, 2).astype(np.float32), 'words': words}}


def _answers_of(model_dir, feeds=None):
  original = loaders.load_saved_model(model_dir)
  try:
    if feeds is None:
      maker = inputs_lib.InputMaker(original, 0)
      feeds = {k: maker.make(k, BATCH) for k in sorted(original.signatures)}
    return feeds, {k: original.run(k, f) for k, f in feeds.items()}
  finally:
    original.close()


@pytest.fixture(scope='module')
def base(tiny_model, tiny_frozen, tmp_path_factory):
  """The original models' files and their answers to seeded inputs, per signature: the tiny
  TF1 model and a small TF2 one."""
  feeds, answers = _answers_of(tiny_model['saved_model'])
  tf2_dir = str(tmp_path_factory.mktemp('fuzz_tf2') / 'model')
  tf2_feeds, tf2_answers = _answers_of(tf2_dir, _tf2_model(tf2_dir))
  return {'saved_model': tiny_model['saved_model'], 'checkpoint': tiny_model['checkpoint'],
          'frozen': tiny_frozen, 'feeds': feeds, 'answers': answers, 'tf2_saved_model': tf2_dir,
          'tf2': {'feeds': tf2_feeds, 'answers': tf2_answers}}


# ---------------------------------------------------------------------------------------------
# Mutating a copy of the input


def _mutate_proto_file(path, proto, choices):
  with open(path, 'rb') as f:
    data = f.read()
  if choices.chance(4):
    data, what = fuzz_mutators.mutate_bytes(data, choices)
  else:
    proto.ParseFromString(data)
    what = None
    for _ in range(1 + choices.draw_index(2)):
      what = '; '.join(filter(None, [what, fuzz_mutators.mutate_message(proto, choices)]))
    data = proto.SerializeToString()
  with open(path, 'wb') as f:
    f.write(data)
  return '%s: %s' % (os.path.basename(path), what)


def _mutate_metadata(path, choices):
  """The MetaGraphDef inside the frozen graph's freezer_metadata node, mutated and put back."""
  graph_def = graph_pb2.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  node = next(n for n in graph_def.node if n.name == frozen_graph.METADATA_NODE)
  tensor = node.attr['value'].tensor
  meta = meta_graph_pb2.MetaGraphDef.FromString(tensor.string_val[0])
  if choices.chance(4):
    data, what = fuzz_mutators.mutate_bytes(tensor.string_val[0], choices)
  else:
    what = fuzz_mutators.mutate_message(meta, choices, 'metadata')
    data = meta.SerializeToString()
  tensor.string_val[0] = data
  with open(path, 'wb') as f:
    f.write(graph_def.SerializeToString())
  return 'freezer_metadata: %s' % what


def _mutate_checkpoint(prefix, choices):
  if choices.chance(2):
    return fuzz_mutators.mutate_data_files(prefix, choices)
  with open(prefix + '.index', 'rb') as f:
    data, what = fuzz_mutators.mutate_index(f.read(), choices)
  with open(prefix + '.index', 'wb') as f:
    f.write(data)
  return what


def _mutate_state_file(prefix, choices):
  """Writes a `checkpoint` state file (a text CheckpointState) beside `prefix`, mutated."""
  text = ('model_checkpoint_path: "%s"\nall_model_checkpoint_paths: "%s"\n'
          % ((os.path.basename(prefix),) * 2)).encode()
  kind = choices.draw_index(3)
  if kind == 0:
    data, what = fuzz_mutators.mutate_bytes(text, choices)
  elif kind == 1:
    name = choices.pick([prefix, os.path.basename(prefix) + 'x', '', '../' +
                         os.path.basename(prefix), '/no/such/dir/model.ckpt', 'a"b',
                         os.path.basename(prefix) + '.index'])
    data = ('model_checkpoint_path: "%s"\n' % name).encode()
    what = 'model_checkpoint_path %r' % name
  else:
    data, what = b'', 'empty'
  with open(os.path.join(os.path.dirname(prefix), 'checkpoint'), 'wb') as f:
    f.write(data)
  return 'state file: %s' % what


def _copy_checkpoint(prefix, directory):
  os.makedirs(directory)
  base_name = os.path.basename(prefix)
  for name in os.listdir(os.path.dirname(prefix)):
    if name.startswith(base_name + '.') and not name.endswith('.meta'):
      shutil.copy(os.path.join(os.path.dirname(prefix), name), directory)
  return os.path.join(directory, base_name)


def _prepare(target, base, work, choices):
  """Copies and mutates the input of `target` under `work`; returns (run, reference, input,
  output, what): run() converts, reference() loads the mutated input with TensorFlow."""
  out = os.path.join(work, 'out')
  if target == 'tf2_saved_model':
    model = shutil.copytree(base['tf2_saved_model'], os.path.join(work, 'model'))
    if choices.chance(3):
      what = _mutate_checkpoint(os.path.join(model, 'variables', 'variables'), choices)
    else:
      what = _mutate_proto_file(os.path.join(model, 'saved_model.pb'),
                                saved_model_pb2.SavedModel(), choices)

    def run_tf2():
      freeze.graph_from_saved_model(model, out + '.pb')
    return run_tf2, lambda: loaders.load_saved_model(model), model, out + '.pb', what
  if target in ('saved_model', 'structure', 'saved_model_variables'):
    model = shutil.copytree(base['saved_model'], os.path.join(work, 'model'))
    if target == 'saved_model_variables':
      what = _mutate_checkpoint(os.path.join(model, 'variables', 'variables'), choices)
    else:
      what = _mutate_proto_file(os.path.join(model, 'saved_model.pb'),
                                saved_model_pb2.SavedModel(), choices)
    if target == 'structure':
      out_model = out

      def run():
        from_checkpoint.saved_model_from_checkpoint(base['checkpoint'], out,
                                                    saved_model_dir=model)
    else:
      out_model = out + '.pb'

      def run():
        freeze.graph_from_saved_model(model, out_model)
    return run, lambda: loaders.load_saved_model(model), model, out_model, what
  if target == 'frozen':
    graph = os.path.join(work, 'frozen.pb')
    shutil.copy(base['frozen'], graph)
    if choices.chance(3):
      what = _mutate_metadata(graph, choices)
    else:
      what = _mutate_proto_file(graph, graph_pb2.GraphDef(), choices)

    def run():
      # Small constants become variables and tables are rewritten, as for a big model.
      from_frozen.saved_model_from_frozen_graph(graph, out, constants_as_variables=64)
    return run, lambda: loaders.load_frozen_graph(graph), graph, out, what
  assert target == 'checkpoint'
  prefix = _copy_checkpoint(base['checkpoint'], os.path.join(work, 'ckpt'))
  given = prefix
  if choices.chance(4):  # the directory, through its `checkpoint` state file
    given = os.path.dirname(prefix)
    what = _mutate_state_file(prefix, choices)
  else:
    what = _mutate_checkpoint(prefix, choices)

  def run():
    from_checkpoint.saved_model_from_checkpoint(given, out, saved_model_dir=base['saved_model'])

  def reference():
    # The structure restoring the mutated checkpoint, as TensorFlow's loader restores it.
    model = shutil.copytree(base['saved_model'], os.path.join(work, 'reference'))
    shutil.rmtree(os.path.join(model, 'variables'))
    os.makedirs(os.path.join(model, 'variables'))
    for name in os.listdir(os.path.dirname(prefix)):
      stem = os.path.basename(prefix)
      if name.startswith(stem + '.'):
        shutil.copy(os.path.join(os.path.dirname(prefix), name),
                    os.path.join(model, 'variables', 'variables' + name[len(stem):]))
    return loaders.load_saved_model(model)
  return run, reference, os.path.dirname(prefix), out, what


# ---------------------------------------------------------------------------------------------
# The verdict


def _answers(model, base, feeds_from):
  """{signature: {output: value}} of `model` on the base inputs (or, for a signature whose
  inputs the mutation renamed, inputs made for `feeds_from`)."""
  out = {}
  for key in sorted(model.signatures):
    feeds = base['feeds'].get(key)
    if feeds is None or set(feeds) != set(model.signatures[key].inputs):
      feeds = inputs_lib.InputMaker(feeds_from, 0).make(key, BATCH)
    out[key] = model.run(key, feeds)
  return out


def _request_refused(e):
  """The message of a request refused before the model runs (fed a shape its placeholder does
  not take), else None: a model failing at run time is not refusing a request."""
  text = str(e)
  if isinstance(e, ValueError) and text.startswith('Cannot feed value of shape'):
    return text
  return None


def _same(reference, new):
  if set(reference) != set(new):
    return 'signatures %s, the input has %s' % (sorted(new), sorted(reference))
  for key in reference:
    if set(reference[key]) != set(new[key]):
      return 'signature %r outputs %s, the input has %s' % (key, sorted(new[key]),
                                                          sorted(reference[key]))
    for name, value in reference[key].items():
      a, b = np.asarray(value), np.asarray(new[key][name])
      if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
        return '%s/%s: %s %s, the input %s %s' % (key, name, b.dtype, b.shape, a.dtype, a.shape)
      if a.dtype.kind in 'fc':
        if not np.allclose(a, b, atol=ATOL, rtol=RTOL, equal_nan=True):
          return '%s/%s differs by up to %g' % (key, name, float(np.nanmax(np.abs(a - b))))
      elif not np.array_equal(a, b):
        return '%s/%s differs' % (key, name)
  return None


def _load_output(path):
  if os.path.isdir(path):
    # With the tags it was written with: a frozen graph's metadata carries its model's tags.
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, 'saved_model.pb'), 'rb') as f:
      proto.ParseFromString(f.read())
    return loaders.load_saved_model(path, list(proto.meta_graphs[0].meta_info_def.tags))
  return loaders.load_frozen_graph(path)


def _judge(target, base, work, choices):
  """(verdict, detail) of one case; the verdict is 'refused', 'converted' or a failure."""
  run, reference, source, output, what = _prepare(target, base, work, choices)
  if target.startswith('tf2'):
    base = base['tf2']
  before = _digest(source)
  listing = sorted(os.listdir(work))
  try:
    run()
  except errors.UserError as e:
    if os.path.exists(output) or sorted(os.listdir(work)) != listing:
      return 'debris', '%s; refused (%s) but left %s' % (what, e, sorted(os.listdir(work)))
    if _digest(source) != before:
      return 'input-changed', what
    return 'refused', '%s -> %s' % (what, str(e)[:300])
  except Exception as e:  # what the fuzzer is for
    return 'traceback', '%s -> %s: %s\n%s' % (what, type(e).__name__, str(e)[:300], ''.join(
        traceback.format_exception(type(e), e, e.__traceback__))[-2500:])
  if _digest(source) != before:
    return 'input-changed', what
  try:
    new_model = _load_output(output)
  except Exception as e:
    return 'broken-output', '%s -> the output does not load: %s' % (what, str(e)[:500])
  try:
    expected, ref_model, refusal = None, None, None
    try:
      ref_model = reference()
      expected = _answers(ref_model, base, ref_model)
    except Exception as e:  # TensorFlow cannot run the input
      expected, refusal = None, _request_refused(e)
    try:
      got = _answers(new_model, base, ref_model if expected is not None else new_model)
    except Exception as e:
      if refusal and _request_refused(e) == refusal:
        # The mutation changed what the model accepts (a placeholder's shape): the input and
        # the output refuse the same request before anything runs, as each declares.
        return 'converted', '%s (input and output both refuse the inputs: %s)' % (what, refusal)
      return 'broken-output', '%s -> the output does not answer: %s' % (what, str(e)[:500])
    if expected is None:
      # The signatures the output serves, as the original answers them (a mutation may also
      # have dropped a signature; one the original lacks cannot be checked and fails).
      expected = {k: base['answers'].get(k) for k in got}
      if None in expected.values():
        return 'differs', '%s -> the output serves %s; the original has %s' % (
            what, sorted(got), sorted(base['answers']))
      against = 'the original (TensorFlow cannot run the mutated input)'
    else:
      against = 'the mutated input'
    problem = _same(expected, got)
    if problem:
      return 'differs', '%s -> the output differs from %s: %s' % (what, against, problem)
    return 'converted', what
  finally:
    new_model.close()
    if ref_model is not None:
      ref_model.close()


FAILING = ('traceback', 'broken-output', 'differs', 'debris', 'input-changed')


def _write_report():
  if REPORT:
    with open(REPORT, 'w') as f:
      json.dump({'cases_per_target': CASES, 'seed': SEED, 'verdicts': dict(VERDICTS),
                 'failures': FAILURES}, f, indent=1)


@pytest.mark.parametrize('target', TARGETS)
def test_fuzz(target, base, tmp_path):
  counts = collections.Counter()

  # Seeded per target (the same draws would make the same mutations of each target's file).
  @hypothesis_seed(int(SEED or 0) * len(TARGETS) + TARGETS.index(target))
  @settings(max_examples=CASES, deadline=None, database=None, phases=[Phase.generate],
            suppress_health_check=list(HealthCheck))
  @given(st.data())
  def case(data):
    work = tempfile.mkdtemp(dir=tmp_path)
    try:
      verdict, detail = _judge(target, base, work, DrawnChoices(data))
    finally:
      shutil.rmtree(work, ignore_errors=True)
    counts[verdict] += 1
    VERDICTS['%s/%s' % (target, verdict)] += 1
    if verdict == 'converted' and 'both refuse the inputs' in detail:
      VERDICTS['%s/converted, both refusing the inputs' % target] += 1
    if verdict in FAILING:
      FAILURES.append({'target': target, 'verdict': verdict, 'detail': detail})
      _write_report()
      if not KEEP_GOING:
        raise AssertionError('%s: %s' % (verdict, detail))

  case()
  _write_report()
  print('\nfuzz %s: %s' % (target, dict(counts)))
  failed = {k: v for k, v in counts.items() if k in FAILING}
  assert not failed, (failed, [f for f in FAILURES if f['target'] == target][:5])
  # A fuzzer whose every case is refused tests only the refusals, one whose every case converts
  # only the conversions.
  if CASES >= 10:
    assert counts['converted'] and counts['refused'], dict(counts)
