"""Shared fixtures: the repository on sys.path, a tiny trained model built once per session."""

import hashlib
import os
import pathlib
import subprocess
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import flags

from freezerlib import freeze
from freezerlib.demo import recsys_model
from freezerlib.formats import saved_model

# Under pytest, absl flags are not parsed; the library code never reads them, but absl's own
# logging does.
flags.FLAGS.mark_as_parsed()

TF_SERVING = REPO.parent / 'shared' / 'testdata' / 'tf_serving'

# Small enough to train in a few seconds, big enough to have every part of the real model:
# two hash tables with hundreds of keys, a 3-way partitioned embedding, Adam slots.
TINY = recsys_model.ModelConfig(num_examples=512, num_users=300, num_categories=20,
                             item_buckets=60, embedding_dim=4, num_partitions=3, num_dense=3,
                             hidden_units=(8,), batch_size=32, steps=30, seed=3)
TINY_FLAGS = ['--num_examples=512', '--num_users=300', '--num_categories=20',
              '--item_buckets=60', '--embedding_dim=4', '--num_partitions=3', '--num_dense=3',
              '--hidden_units=8', '--batch_size=32', '--steps=30', '--seed=3']


def tf_serving_model(name):
  """Path of a TF Serving test model's version directory. Skips when shared/ is absent from a
  developer's checkout; fails under CI (CI=true), which always has shared/ beside the clone, so
  these cases can never be skipped there unnoticed."""
  path = TF_SERVING / name / '00000123'
  if not path.is_dir():
    if os.environ.get('CI') == 'true':
      pytest.fail('TF Serving test models not found at %s (CI must have shared/)' % TF_SERVING)
    pytest.skip('TF Serving test models not found at %s' % TF_SERVING)
  return str(path)


@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory):
  """model_gen's model at TINY size: dict with 'saved_model', 'checkpoint', 'data' paths."""
  out = tmp_path_factory.mktemp('tiny') / 'model'
  return recsys_model.train_and_export(str(out), TINY)


@pytest.fixture(scope='session')
def tiny_frozen(tiny_model, tmp_path_factory):
  """The tiny model frozen by freeze.graph_from_saved_model: path of the .pb."""
  path = str(tmp_path_factory.mktemp('frozen') / 'frozen.pb')
  freeze.graph_from_saved_model(tiny_model['saved_model'], path)
  return path


@pytest.fixture(scope='session')
def capi(tmp_path_factory):
  """Path of the C API runner (tests/capi/serve_saved_model.c), compiled once per session."""
  import capi_runner
  return capi_runner.build_runner(tmp_path_factory.mktemp('capi_runner'))


@pytest.fixture(scope='session')
def census(tmp_path_factory):
  """real_models.wide_and_deep: the census wide & deep, reader-fed (sparse inputs) and
  Estimator-style, with its data and checkpoint (about 3 s)."""
  import real_models
  return real_models.wide_and_deep(str(tmp_path_factory.mktemp('census')))


@pytest.fixture(scope='session')
def history(tmp_path_factory):
  """real_models.ragged_history: a reader-fed model with a RaggedTensor input, and the same
  model as a TF2 module."""
  import real_models
  return real_models.ragged_history(str(tmp_path_factory.mktemp('history')))


NUM_PS = 2


@pytest.fixture(scope='session')
def cluster_model(tmp_path_factory):
  """TINY trained by a real cluster of 2 PS + 1 worker on loopback, started as the README does
  (`model_gen.py --num_ps=2 --num_workers=1`): 'saved_model' (its graph keeps /job:ps
  devices), 'checkpoint' (sharded), 'data', plus 'seconds', 'root' (the tasks' logs are in
  ROOT/logs), 'proc' (the finished command)."""
  import time
  root = tmp_path_factory.mktemp('cluster')
  out = root / 'model'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  start = time.monotonic()
  proc = subprocess.run([sys.executable, 'model_gen.py', '--output_dir=%s' % out,
                         '--num_ps=%d' % NUM_PS, '--num_workers=1', '--cluster_timeout_secs=120',
                         '--cluster_log_dir=%s' % (root / 'logs')]
                        + TINY_FLAGS, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  seconds = time.monotonic() - start
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {'saved_model': str(out / 'saved_model'),
          'checkpoint': str(out / 'ckpt' / ('model.ckpt-%d' % TINY.steps)),
          'data': str(out / 'data'), 'seconds': seconds, 'root': str(root), 'proc': proc}


@pytest.fixture(scope='session')
def fake_graph(tmp_path_factory):
  """The fake inference graph of the cluster's model: same names, partitions, table shards."""
  import dataclasses
  out = tmp_path_factory.mktemp('fake') / 'fake_infer'
  config = dataclasses.replace(TINY, num_table_shards=NUM_PS)
  return recsys_model.write_fake_infer_graph(str(out), config)['saved_model']


def run_script(script, *args):
  """Runs `python SCRIPT ARGS` from the repository root, as the README does."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, script] + [str(a) for a in args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def run_main(module, args, capsys):
  """Runs a script's `main` in-process as `python SCRIPT.py ARGS` would, flags parsed from
  ARGS (no TensorFlow start-up per run); returns (exit code, stderr)."""
  proc = run_main_as_process(module, args, capsys)
  return proc.returncode, proc.stderr


def run_main_as_process(module, args, capsys):
  """run_main as a subprocess.CompletedProcess (returncode, stdout, stderr), for the checks
  written for run_script: the same script's command line without a TensorFlow start-up. Each
  script keeps tests through run_script too, which see what TensorFlow's C++ side prints."""
  capsys.readouterr()
  try:
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(['%s.py' % module.__name__] + [str(a) for a in args])
    code = module.main(argv)
  finally:
    flags.FLAGS.unparse_flags()
    flags.FLAGS.mark_as_parsed()
  captured = capsys.readouterr()
  return subprocess.CompletedProcess(['%s.py' % module.__name__] + [str(a) for a in args], code,
                                     captured.out, captured.err)


def assert_one_line_error(proc, script, *fragments):
  """Exit code 1, no traceback, and one error line naming each of `fragments`.

  absl INFO lines (`I1124 12:00:00.000 ...`) may come before it; nothing else may.
  """
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  others = [l for l in lines if not (l[:1] == 'I' and l[1:5].isdigit())]
  assert len(others) == 1, others
  assert others[0].startswith(script + ': error: '), others[0]
  assert ': error: internal error (' not in others[0], others[0]  # a bug, not a refusal
  for fragment in fragments:
    assert str(fragment) in others[0], (fragment, others[0])
  return others[0]


def tree_digest(path):
  """Digest of every file's name and bytes under `path`: proves an input was not modified."""
  digest = hashlib.sha256()
  path = pathlib.Path(path)
  files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]
  for p in files:
    digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
    digest.update(p.read_bytes())
  return digest.hexdigest()


def run_tf2_signatures(export_dir, feeds_by_signature):
  """{sig: {output: array}} as tf.saved_model.load(...).signatures[key](**feeds) answers."""
  import tensorflow as tf
  loaded = tf.saved_model.load(str(export_dir))
  results = {}
  for key, feeds in feeds_by_signature.items():
    out = loaded.signatures[key](**{k: tf.constant(v) for k, v in feeds.items()})
    results[key] = {k: v.numpy() for k, v in out.items()}
  return results


def all_ops(graph_def):
  """Op types of a GraphDef's nodes and of its library functions' nodes."""
  ops = {n.op for n in graph_def.node}
  for function in graph_def.library.function:
    ops.update(n.op for n in function.node_def)
  return ops


def save_predict_model(session, export_dir, inputs, outputs):
  """Writes the session's graph as a TF1 SavedModel with one predict signature, serving_default.

  Args:
    session: tf.compat.v1.Session holding the trained state.
    export_dir: path to create.
    inputs, outputs: dicts of key -> tensor.
  """
  import tensorflow as tf
  tf1 = tf.compat.v1
  builder = tf1.saved_model.Builder(str(export_dir))
  builder.add_meta_graph_and_variables(session, ['serve'], signature_def_map={
      'serving_default': tf1.saved_model.predict_signature_def(inputs, outputs)})
  builder.save()


def meta_graph_of(export_dir, tags=('serve',)):
  """The MetaGraphDef of a SavedModel, read without loading it."""
  proto = saved_model.read_saved_model_proto(str(export_dir))
  return saved_model.select_meta_graph(proto, list(tags), str(export_dir))
