r"""The lookups a read-only table can be served with, side by side in one session.

For transforms/read_only_tables.py's choice of form: N keys (int64 or string) of D floats,
looked up as the training graph does (MutableHashTableOfTensors), through a static table of
rows and one gather (HashTableV2), and through a dense table of rows, with and without the
guard against its markers (MutableDenseHashTable), each restored from a checkpoint as a
SavedModel restores it. Prints per form the CPU time and the wall time of one call of one
caller at batch 1 and 64 (medians over `--rounds` rounds of 1000 calls, forms alternated), and
the resident memory each form's restore added (run once per form in a fresh process with
--memory).

  .venv/bin/python benchmarks/table_lookups.py --keys=1000000 --dim=16 --key_type=string
"""

import os
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

_KEYS = flags.DEFINE_integer('keys', 1000000, 'Keys in the table.', lower_bound=1)
_DIM = flags.DEFINE_integer('dim', 16, 'Floats per key.', lower_bound=1)
_KEY_TYPE = flags.DEFINE_enum('key_type', 'int64', ['int64', 'string'], 'Key type.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Rounds of 1000 calls per form and batch size.',
                               lower_bound=1)
_MEMORY = flags.DEFINE_string('memory', None, 'Only restore this form (mutable, static, '
                              'dense) and print the resident memory it added.')

FORMS = ('mutable', 'static', 'dense+guard', 'dense (no guard)')


def _keys(n, key_type, seed):
  rng = np.random.RandomState(seed)
  if key_type == 'int64':
    return rng.randint(1, 2**62, size=n, dtype=np.int64)
  return np.array([b'key_%d_%d' % (seed, i) for i in rng.permutation(n)], object)


def _write(prefix, keys, dim):
  values = np.random.RandomState(1).rand(len(keys), dim).astype(np.float32)
  rows = np.arange(len(keys), dtype=np.int32)
  matrix = np.concatenate([values, np.zeros((1, dim), np.float32)])
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=['keys', 'values', 'rows', 'matrix'],
                    shape_and_slices=[''] * 4,
                    tensors=[tf.constant(keys), tf.constant(values), tf.constant(rows),
                             tf.constant(matrix)])


def _graph(prefix, n, dim, key_dtype, forms):
  """(graph, query placeholder, {form: output}, init ops)."""
  graph = tf.Graph()
  outputs, inits = {}, []
  with graph.as_default():
    query = tf1.placeholder(key_dtype, [None])
    keys, values, rows, matrix = tf.raw_ops.RestoreV2(
        prefix=prefix, tensor_names=['keys', 'values', 'rows', 'matrix'],
        shape_and_slices=[''] * 4, dtypes=[key_dtype, tf.float32, tf.int32, tf.float32])
    if 'mutable' in forms:
      table = tf.raw_ops.MutableHashTableOfTensorsV2(key_dtype=key_dtype,
                                                     value_dtype=tf.float32, value_shape=[dim])
      inits.append(tf.raw_ops.LookupTableImportV2(table_handle=table, keys=keys, values=values))
      outputs['mutable'] = tf.raw_ops.LookupTableFindV2(
          table_handle=table, keys=query, default_value=tf.zeros([dim]))
    if len(forms) > 1 or 'mutable' not in forms:
      variable = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[n + 1, dim], shared_name='m')
      inits.append(tf.raw_ops.AssignVariableOp(resource=variable, value=matrix))
    default_row = tf.constant(n, tf.int32)
    if 'static' in forms:
      table = tf.raw_ops.HashTableV2(key_dtype=key_dtype, value_dtype=tf.int32)
      inits.append(tf.raw_ops.LookupTableImportV2(table_handle=table, keys=keys, values=rows))
      found = tf.raw_ops.LookupTableFindV2(table_handle=table, keys=query,
                                           default_value=default_row)
      outputs['static'] = tf.raw_ops.ResourceGather(resource=variable, indices=found,
                                                    dtype=tf.float32)
    if 'dense+guard' in forms or 'dense' in forms:
      if key_dtype == tf.int64:
        empty, deleted, stand_in = [tf.constant(-2**63 + i, tf.int64) for i in range(3)]
        guarded = tf.maximum(query, stand_in)  # as read_only_tables guards int64 keys
      else:
        empty, deleted, stand_in = [tf.constant(b'\x00freezer:%d' % i) for i in range(3)]
        marker = tf.logical_or(tf.equal(query, empty), tf.equal(query, deleted))
        guarded = tf.raw_ops.SelectV2(condition=marker, t=stand_in, e=query)
      table = tf.raw_ops.MutableDenseHashTableV2(
          empty_key=empty, deleted_key=deleted, value_dtype=tf.int32, value_shape=[],
          initial_num_buckets=4, max_load_factor=0.8)
      inits.append(tf.raw_ops.LookupTableInsertV2(table_handle=table, keys=keys, values=rows))
      for form, looked_up in (('dense+guard', guarded), ('dense (no guard)', query)):
        found = tf.raw_ops.LookupTableFindV2(table_handle=table, keys=looked_up,
                                             default_value=default_row)
        outputs[form] = tf.raw_ops.ResourceGather(resource=variable, indices=found,
                                                  dtype=tf.float32)
  return graph, query, outputs, inits


def _rss():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


def main(argv):
  del argv
  key_dtype = tf.int64 if _KEY_TYPE.value == 'int64' else tf.string
  n, dim = _KEYS.value, _DIM.value
  with tempfile.TemporaryDirectory() as tmp:
    prefix = os.path.join(tmp, 'table')
    held = _keys(n, _KEY_TYPE.value, 0)
    _write(prefix, held, dim)
    pool = np.concatenate([held[:100000], _keys(100000, _KEY_TYPE.value, 7)])  # half unseen
    del held
    forms = [_MEMORY.value] if _MEMORY.value else list(FORMS)
    graph, query, outputs, inits = _graph(prefix, n, dim, key_dtype, forms)
    with tf1.Session(graph=graph) as session:
      if _MEMORY.value:
        before = _rss()
        session.run(inits)
        session.run(next(iter(outputs.values())), {query: pool[:64]})
        print('%s: %.1f MiB after the restore and one call' % (_MEMORY.value,
                                                                (_rss() - before) / 2**20))
        return
      session.run(inits)
      calls = {f: session.make_callable(o, [query]) for f, o in outputs.items()}
      expected = calls['mutable'](pool[::500])
      for form, call in calls.items():
        np.testing.assert_array_equal(call(pool[::500]), expected, err_msg=form)
      rng = np.random.RandomState(0)
      figures = {(f, b, m): [] for f in calls for b in (1, 64) for m in ('cpu', 'wall')}
      for r in range(_ROUNDS.value):
        for batch in (1, 64):
          feeds = [pool[rng.randint(0, len(pool), batch)] for _ in range(200)]
          for form in (list(calls) if r % 2 == 0 else list(reversed(list(calls)))):
            call = calls[form]
            for f in feeds[:50]:
              call(f)
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(1000):
              call(feeds[i % 200])
            figures[(form, batch, 'cpu')].append((time.process_time() - cpu) * 1e3)
            figures[(form, batch, 'wall')].append((time.perf_counter() - wall) * 1e3)
  print('%d %s keys of %d floats, one caller, medians of %d rounds of 1000 calls (us per call); '
        'load average %.1f' % (n, _KEY_TYPE.value, dim, _ROUNDS.value, os.getloadavg()[0]))
  print('%-18s %16s %16s' % ('', 'batch 1 cpu/wall', 'batch 64 cpu/wall'))
  for form in calls:
    print('%-18s %16s %16s' % (form, *['%6.1f / %6.1f' % (
        np.median(figures[(form, b, 'cpu')]), np.median(figures[(form, b, 'wall')]))
        for b in (1, 64)]))


if __name__ == '__main__':
  app.run(main)
