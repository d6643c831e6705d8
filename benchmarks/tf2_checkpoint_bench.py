r"""Benchmarks optimize_from_ckpt.py on a TF2 checkpoint against `cp -r` of the same checkpoint.

Builds, in a child process, a TF2 model of a chosen size: a tf.Module (an item embedding, a
dense layer and a MutableHashTable of --table_keys keys; or with --model=keras a Keras 3
functional model with an Embedding, exported with model.export). Its structure SavedModel is
written first, then one Adam step fills the optimizer's slots (twice the embedding) and
tf.train.CheckpointManager writes the training checkpoint. Then, with the checkpoint in the page
cache (one unmeasured run of each command first), it alternates --runs runs of

  optimize_from_ckpt.py --saved_model_dir=structure --checkpoint=ckpt --output_saved_model_dir=out
  cp -r ckpt out

and prints the median wall time and peak RSS of each (each command started by a small measuring
Python, its figures from wait4), and the bytes exported against the bytes the serving model
needs (its variables and tables as the checkpoint stores them, found by matching the
structure to the checkpoint). The work directory is a new temporary one under /tmp, deleted at
the end unless --work_dir is given.

Example (a 1.1 GiB checkpoint, about a minute on 2 cores):
  .venv/bin/python benchmarks/tf2_checkpoint_bench.py --embedding_mb=360 --runs=5
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import shutil
import statistics
import subprocess
import tempfile

from absl import app
from absl import flags

from benchmarks.measuring import compile_bytecode
from benchmarks.measuring import dir_bytes
from benchmarks.measuring import machine
from benchmarks.measuring import measure
from freezerlib.core import units
from freezerlib.export import from_tf2_checkpoint
from freezerlib.formats import checkpoint_index

_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'Scratch directory to use and keep (default: a temporary one under /tmp, '
    'deleted at the end).')
_MODEL = flags.DEFINE_enum('model', 'module', ['module', 'keras'], 'tf.Module or Keras 3 model.')
_EMBEDDING_MB = flags.DEFINE_integer(
    'embedding_mb', 360, 'Size of the item embedding in MiB (Adam adds twice that).',
    lower_bound=1)
_DIM = flags.DEFINE_integer('dim', 64, 'Embedding width.', lower_bound=1)
_TABLE_KEYS = flags.DEFINE_integer('table_keys', 1000000,
                                   'Keys in the hash table (tf.Module only).', lower_bound=1)
_RUNS = flags.DEFINE_integer('runs', 5, 'Measured runs of each command (medians reported).',
                             lower_bound=1)

# The model, built in a child process so that this one never holds it.
_BUILD_MODULE = r"""
import sys
import numpy as np
import tensorflow as tf
work_dir, rows, dim, table_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class Model(tf.Module):
  def __init__(self):
    super().__init__()
    self.emb = tf.Variable(tf.random.normal([rows, dim], stddev=0.01), name='item_emb')
    self.w = tf.Variable(tf.random.normal([dim + 1, 1]), name='w')
    self.b = tf.Variable(tf.zeros([1]), name='b')
    self.stats = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def serve(self, ids):
    x = tf.concat([tf.gather(self.emb, ids % rows), self.stats.lookup(ids)[:, None]], 1)
    return {'score': (tf.matmul(x, self.w) + self.b)[:, 0]}

model = Model()
tf.saved_model.save(model, work_dir + '/structure', signatures={'serving_default': model.serve})
optimizer = tf.keras.optimizers.Adam(0.01)
variables = [model.emb, model.w, model.b]
with tf.GradientTape() as tape:
  loss = tf.reduce_sum(model.serve(tf.range(1024, dtype=tf.int64))['score'] ** 2)
optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
model.stats.insert(tf.range(table_keys, dtype=tf.int64), tf.ones([table_keys]))
tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                           work_dir + '/ckpt', max_to_keep=1).save()
"""

_BUILD_KERAS = r"""
import sys
import numpy as np
import keras
import tensorflow as tf
work_dir, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = keras.Input((1,), dtype='int64', name='ids')
hidden = keras.layers.Flatten()(keras.layers.Embedding(rows, dim, name='item_emb')(ids))
model = keras.Model(ids, keras.layers.Dense(1, name='logit')(hidden))
model.export(work_dir + '/structure', verbose=False)
optimizer = keras.optimizers.Adam(0.01)
model.compile(optimizer=optimizer, loss='mse')
model.fit(np.arange(1024)[:, None], np.ones([1024, 1]), batch_size=1024, epochs=1, verbose=0)
tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer),
                           work_dir + '/ckpt', max_to_keep=1).save()
"""

def build(work_dir, model, embedding_mb, dim, table_keys):
  rows = embedding_mb * 2**20 // (4 * dim)
  code, args = ((_BUILD_KERAS, [rows, dim]) if model == 'keras'
                else (_BUILD_MODULE, [rows, dim, table_keys]))
  proc = subprocess.run([sys.executable, '-c', code, work_dir] + [str(a) for a in args],
                        capture_output=True, text=True, check=False,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  if proc.returncode:
    raise RuntimeError('building the model failed: %s' % proc.stderr[-3000:])


def needed_bytes(work_dir):
  """(bytes the serving model needs, checkpoint tensors' bytes, checkpoint files' bytes): its
  variables and tables as the checkpoint stores them, and the structure's object graph."""
  structure_index = checkpoint_index.read_index(os.path.join(work_dir, 'structure', 'variables',
                                                        'variables'))
  index = checkpoint_index.read_index(
      checkpoint_index.resolve_prefix(os.path.join(work_dir, 'ckpt')))
  plan = from_tf2_checkpoint.match(from_tf2_checkpoint.read_object_graph(structure_index),
                              structure_index, from_tf2_checkpoint.read_object_graph(index), index)
  stored = {}  # one tensor under two keys (a Keras export) is needed once
  for rename in plan.renames:
    for _, entry in index.records(rename.checkpoint_key):
      stored[(entry.shard_id, entry.offset)] = entry.size
  needed = sum(stored.values()) + structure_index.nbytes(from_tf2_checkpoint.OBJECT_GRAPH_KEY)
  return (needed, sum(index.nbytes(n) for n in index.entries),
          dir_bytes(os.path.join(work_dir, 'ckpt')))


def bench(work_dir, runs):
  ckpt, out = os.path.join(work_dir, 'ckpt'), os.path.join(work_dir, 'out')
  commands = {
      'optimize_from_ckpt.py': [sys.executable, 'optimize_from_ckpt.py',
                                '--saved_model_dir=' + os.path.join(work_dir, 'structure'),
                                '--checkpoint=' + ckpt, '--output_saved_model_dir=' + out],
      'cp -r': ['cp', '-r', ckpt, out],
  }
  figures = {name: [] for name in commands}
  for r in range(runs + 1):  # the first round warms the page cache and is not counted
    order = list(commands) if r % 2 == 0 else list(reversed(list(commands)))
    for name in order:
      shutil.rmtree(out, ignore_errors=True)
      result = measure(commands[name])
      if r:
        figures[name].append(result)
      if name == 'optimize_from_ckpt.py':
        exported = dir_bytes(os.path.join(out, 'variables'))
  shutil.rmtree(out, ignore_errors=True)
  return figures, exported


def main(argv):
  del argv
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix='tf2_checkpoint_bench_', dir='/tmp')
  try:
    if not os.path.exists(os.path.join(work_dir, 'ckpt', 'checkpoint')):
      build(work_dir, _MODEL.value, _EMBEDDING_MB.value, _DIM.value, _TABLE_KEYS.value)
    needed, tensors, files = needed_bytes(work_dir)
    compile_bytecode()
    figures, exported = bench(work_dir, _RUNS.value)
  finally:
    if not _WORK_DIR.value:
      shutil.rmtree(work_dir, ignore_errors=True)
  print('machine: %s' % machine())
  print('model: %s, embedding %d MiB x %d wide; checkpoint: %s of tensors in %s of files '
        '(Adam slots included)' % (_MODEL.value, _EMBEDDING_MB.value, _DIM.value,
                                   units.human_bytes(tensors), units.human_bytes(files)))
  print('%-24s %16s %16s %12s' % ('warm, %d runs' % _RUNS.value, 'wall median', 'wall min-max',
                                 'peak RSS'))
  for name, results in figures.items():
    walls = [w for w, _ in results]
    print('%-24s %14.2f s %7.2f-%.2f s %8.0f MiB' % (
        name, statistics.median(walls), min(walls), max(walls),
        statistics.median(m for _, m in results) / 2**20))
  print('exported variables/: %d bytes (%s); the serving model needs %d bytes (%+.4f%%: the '
        'index); checkpoint files %s' % (exported, units.human_bytes(exported), needed,
                                         100.0 * (exported - needed) / needed,
                                         units.human_bytes(files)))


if __name__ == '__main__':
  app.run(main)
