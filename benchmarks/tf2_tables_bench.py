r"""What read_only_tables saves on a TF2 model: serving memory with its tables left mutable and
made read-only, from the same frozen graph, in the same run.

Builds, in a child process, a TF2 SavedModel whose signature reads a MutableHashTable of
vectors (--table_keys int64 keys, --dim floats each) inside its functions: a tf.Module
(tf.saved_model.save), or with --model=keras a Keras 3 layer holding the table (model.export).
freezer.py freezes it once; optimize_from_pb.py re-dumps it twice:

  --rewrites=one_gather   the tables stay MutableHashTables (what a TF2 model got before
                          read_only_tables inlined the calls that take its tables)
  (defaults)              read_only_tables: the table becomes a dense one

Both are compared with the original (optimize_from_pb_test.py, generated inputs, unseen ids
included), then each is served in a fresh process (benchmarks/serving_probe.py, TF1 loader),
--runs times, the order alternated, beside a bare session's: resident memory after the load and
one call above the bare session, load time, latency at batch 1 and 64. Not a test: nothing here
asserts a target.

Example (a 1M x 16 table: 69 MiB of keys and values, about 2 minutes on 2 cores):
  .venv/bin/python benchmarks/tf2_tables_bench.py --table_keys=1000000 --dim=16 --runs=5
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import json
import shutil
import statistics
import subprocess
import tempfile

from absl import app
from absl import flags

from benchmarks.measuring import compile_bytecode
from benchmarks.measuring import dir_bytes
from benchmarks.measuring import machine
from freezerlib.core import units

_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'Scratch directory to use and keep (default: a temporary one under /tmp, '
    'deleted at the end).')
_MODEL = flags.DEFINE_enum('model', 'module', ['module', 'keras'], 'tf.Module or Keras 3 model.')
_TABLE_KEYS = flags.DEFINE_integer('table_keys', 1000000, 'Keys in the table.', lower_bound=1)
_DIM = flags.DEFINE_integer('dim', 16, 'Floats per key.', lower_bound=1)
_RUNS = flags.DEFINE_integer('runs', 5, 'Served runs of each model (medians reported).',
                             lower_bound=1)

BATCH_SIZES = (1, 64)
# The model, built in a child process so that this one never holds it. Keys are every 3rd
# integer, so half the generated ids (drawn from the table's keys and unseen ones) miss.
_BUILD = r"""
import sys
import numpy as np
import tensorflow as tf
work_dir, model_kind, keys, dim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, [0.0] * dim)
ids = np.arange(keys, dtype=np.int64) * 3
table.insert(tf.constant(ids), tf.constant(
    np.random.RandomState(0).rand(keys, dim).astype(np.float32)))
if model_kind == 'keras':
  import keras

  class Stats(keras.layers.Layer):
    def __init__(self, table, **kwargs):
      super().__init__(**kwargs)
      self.table = table

    def compute_output_shape(self, shape):
      return (shape[0], dim)

    def call(self, ids):
      return tf.reshape(self.table.lookup(ids), [-1, dim])

  item = keras.Input((), dtype='int64', name='ids')
  out = keras.layers.Dense(1, name='score')(Stats(table, name='stats')(item))
  keras.Model(item, out).export(work_dir + '/model', verbose=False)
else:
  class Model(tf.Module):
    def __init__(self):
      super().__init__()
      self.stats = table
      self.w = tf.Variable(tf.random.normal([dim, 1], seed=1))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def serve(self, ids):
      return {'score': tf.matmul(self.stats.lookup(ids), self.w)[:, 0]}

  model = Model()
  tf.saved_model.save(model, work_dir + '/model', signatures={'serving_default': model.serve})
"""

# serving_default inputs at each batch size, as optimize_from_pb_test.py generates them.
_FEEDS = r"""
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from freezerlib.verify import inputs, loaders
model = loaders.load_saved_model(sys.argv[2])
maker = inputs.InputMaker(model, seed=0)
np.savez(sys.argv[3], **{'%d/%s' % (b, k): v for b in (1, 64)
                         for k, v in maker.make('serving_default', b).items()})
"""


def _run(cmd):
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  if proc.returncode:
    raise RuntimeError('%s failed: %s' % (' '.join(cmd[:3]), proc.stderr[-3000:]))
  return proc


def _table_ops(export_dir):
  """Table ops of a SavedModel's graph, counted."""
  from freezerlib.formats import saved_model
  proto = saved_model.read_saved_model_proto(export_dir)
  graph_def = saved_model.select_meta_graph(proto, ['serve'], export_dir).graph_def
  ops = [n.op for n in graph_def.node] + [n.op for f in graph_def.library.function
                                          for n in f.node_def]
  return ', '.join('%s x%d' % (op, ops.count(op)) for op in sorted(set(ops))
                   if 'HashTable' in op)


def _median_range(values, scale=1.0, fmt='%.3f'):
  values = [v * scale for v in values]
  return (fmt + ' (' + fmt + '-' + fmt + ')') % (statistics.median(values), min(values),
                                                  max(values))


def main(argv):
  del argv
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix='tf2_tables_bench_', dir='/tmp')
  python = sys.executable
  variants = {'tables left mutable (--rewrites=one_gather)': ['--rewrites=one_gather'],
              'read_only_tables (defaults)': []}
  try:
    model = os.path.join(work_dir, 'model')
    if not os.path.exists(os.path.join(model, 'saved_model.pb')):
      _run([python, '-c', _BUILD, work_dir, _MODEL.value, str(_TABLE_KEYS.value),
            str(_DIM.value)])
    compile_bytecode()
    frozen = os.path.join(work_dir, 'frozen.pb')
    _run([python, 'freezer.py', '--saved_model_dir=' + model, '--output_graph=' + frozen,
          '--overwrite'])
    served = {}
    print('machine: %s' % machine())
    print('model: %s, a MutableHashTable of %d int64 keys x %d floats (%s of keys and values) '
          'read inside its functions; frozen graph %s' % (
              _MODEL.value, _TABLE_KEYS.value, _DIM.value,
              units.human_bytes(_TABLE_KEYS.value * (8 + 4 * _DIM.value)),
              units.human_bytes(os.path.getsize(frozen))))
    for label, flags_ in variants.items():
      out = os.path.join(work_dir, 'serving_%d' % len(served))
      _run([python, 'optimize_from_pb.py', '--input_graph=' + frozen,
            '--output_saved_model_dir=' + out, '--overwrite'] + flags_)
      verdict = _run([python, 'optimize_from_pb_test.py', '--saved_model_dir=' + out,
                      '--reference_saved_model_dir=' + model, '--batch_sizes=0'])
      print('%s: %s; variables/ %s; against the original: %s' % (
          label, _table_ops(out), units.human_bytes(dir_bytes(os.path.join(out, 'variables'))),
          verdict.stdout.strip().splitlines()[-1]))
      served[label] = out
    feeds = os.path.join(work_dir, 'feeds.npz')
    _run([python, '-c', _FEEDS, REPO, model, feeds])
    probe = [python, os.path.join('benchmarks', 'serving_probe.py')]
    bare, figures = [], {label: [] for label in served}
    for r in range(_RUNS.value):
      bare.append(json.loads(_run(probe + ['bare']).stdout.strip().splitlines()[-1])['rss'])
      for label in (list(served) if r % 2 == 0 else list(reversed(list(served)))):
        proc = _run(probe + [served[label], feeds, '200', '0.5', '2'])
        figures[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work_dir, ignore_errors=True)
  floor = statistics.median(bare)
  print()
  print('serving_default through the TF1 loader, each model in a fresh process, %d runs '
        'alternated: medians (min-max)' % _RUNS.value)
  print('%-46s %26s %22s %24s %24s' % ('', 'RSS above bare session', 'load', 'batch 1 median',
                                       'batch 64 median'))
  for label, runs in figures.items():
    print('%-46s %26s %22s %24s %24s' % (
        label, _median_range([f['rss'] - floor for f in runs], 1 / 2**20, '%.0f') + ' MiB',
        _median_range([f['load'] for f in runs], 1, '%.2f') + ' s',
        _median_range([f['latency']['1'][0] for f in runs], 1e3) + ' ms',
        _median_range([f['latency']['64'][0] for f in runs], 1e3) + ' ms'))
  print('bare session: %s' % units.human_bytes(floor))


if __name__ == '__main__':
  app.run(main)
