r"""Benchmarks freezer's scripts against the baselines a user would otherwise reach for.

Builds a recommendation model of a chosen size with model_gen.py's own model code (partitioned
item embedding, a MutableHashTable with --table_keys keys, Adam slots, a sharded checkpoint as a
parameter-server cluster writes it, one shard per device), then prints, side by side and from
the same run:

  ckpt:   optimize_from_ckpt.py (pruned, with and without checking checksums: what checking
          costs; and --noprune) against `cp -r` of the same checkpoint: wall time (median and
          min-max of --checkpoint_repeats runs, order alternated) and peak RSS, with the
          checkpoint in the page cache (warm) and evicted from it before each run (cold), and
          the bytes exported against the bytes the serving graph restores.
  freeze: freezer.py against loading the SavedModel and TensorFlow's
          convert_variables_to_constants: wall, peak RSS, output size, table keys kept; and
          freezer.py's peak RSS against TensorFlow's own start-up and the largest tensor and
          table it writes.
  serve:  the SavedModels optimize_from_pb.py re-dumps (defaults, and one choice changed each:
          no rewrites, constants in the graph, no Grappler, frozen with --keep_as_variables)
          against the training SavedModel: outputs; then, each model in a fresh process
          (serving_probe.py), alternated: resident memory after load and one call above a bare
          session's, against the bytes its saver restores; load time; latency (median, p99)
          of one caller; queries per second and p99 with --threads threads sharing the session,
          at each --serving_batch_sizes.

Every figure comes from child processes measured with wait4 (ru_maxrss), in this process tree,
on this machine (its cores and load are printed: other processes move the figures). The
scripts' bytecode is compiled first, as an installed copy has it, so that no measured command
compiles freezerlib (where PYTHONDONTWRITEBYTECODE is set, every run would). Not a test:
nothing here asserts a target.

Example (a 1 GiB checkpoint with a 1M-key table, about 3 minutes on 2 cores):
  .venv/bin/python benchmarks/benchmark.py --work_dir=/tmp/freezer_bench \
      --embedding_mb=340 --table_keys=1000000
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shutil
import statistics
import subprocess
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from benchmarks.measuring import compile_bytecode
from benchmarks.measuring import dir_bytes
from benchmarks.measuring import evict
from benchmarks.measuring import machine
from benchmarks.measuring import measure
from freezerlib.core import units
from freezerlib.demo import recsys_model
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.verify import inputs
from freezerlib.verify import loaders

tf1 = tf.compat.v1

_WORK_DIR = flags.DEFINE_string('work_dir', None, 'Scratch directory (created, then reused).')
_EMBEDDING_MB = flags.DEFINE_integer(
    'embedding_mb', 340, 'Size of the item embedding in MiB (Adam adds twice that).',
    lower_bound=1)
_DIM = flags.DEFINE_integer('dim', 64, 'Embedding width.', lower_bound=1)
_PARTITIONS = flags.DEFINE_integer('partitions', 4, 'Embedding partitions.', lower_bound=1)
_SHARDS = flags.DEFINE_integer(
    'shards', 2, 'Checkpoint shards (devices the variables are spread over, as PS tasks).',
    lower_bound=1)
_TABLE_KEYS = flags.DEFINE_integer(
    'table_keys', 1000000, 'Keys in the user_stats hash table.', lower_bound=1)
_TABLE_DIM = flags.DEFINE_integer(
    'table_dim', recsys_model.STATS_DIM, 'Floats per key in the hash tables.', lower_bound=2)
_STRING_TABLE_KEYS = flags.DEFINE_integer(
    'string_table_keys', 0, 'Keys in the category_stats hash table (string keys; the serving '
    'inputs draw categories from them).', lower_bound=0)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Runs of each command (medians reported).',
                                lower_bound=1)
_CHECKPOINT_REPEATS = flags.DEFINE_integer(
    'checkpoint_repeats', 9, 'Runs of each checkpoint-path command and of `cp -r` (they take '
    'under a second each; other processes on the machine move them most).', lower_bound=1)
_REBUILD = flags.DEFINE_bool('rebuild', False, 'Rebuild the model even if work_dir has one.')
_ADAM_SLOTS = flags.DEFINE_bool(
    'adam_slots', True, 'Train one step with Adam, so the checkpoint holds its slots (twice the '
    'embedding); --noadam_slots builds the model without an optimizer.')
_KEEP = flags.DEFINE_string(
    'keep_size', '64MiB', 'freezer.py --keep_as_variables for the third serving model '
    '(variables and tables of this size or more restored from a checkpoint, not constants).')
_LATENCY_RUNS = flags.DEFINE_integer('serving_latency_runs', 50,
                                     'Timed calls per batch size and run.', lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list('serving_batch_sizes', ['1', '64'],
                                 'Batch sizes of the serving figures.')
_THREADS = flags.DEFINE_integer('threads', 8, 'Threads sharing one session for the throughput '
                                'figures.', lower_bound=1)
_SECONDS = flags.DEFINE_float('throughput_seconds', 3.0, 'Seconds of calls per throughput '
                              'figure (after half a second of warm-up).', lower_bound=0.1)
_SECTIONS = flags.DEFINE_list('sections', ['ckpt', 'freeze', 'serve'],
                              'Parts to run: ckpt (optimize_from_ckpt.py against cp -r), freeze '
                              '(freezer.py against convert_variables_to_constants), serve (the '
                              'serving SavedModels: memory, load, latency, throughput).')
_CAPI = flags.DEFINE_bool(
    'capi', True, 'Also serve each model through TensorFlow\'s C API (capi_throughput.c, built '
    'with gcc against the wheel), no Python in the calls: latency and throughput as TF Serving '
    'would see them.')
_SERVING_ENV = flags.DEFINE_list(
    'serving_env', [], 'NAME=VALUE settings of the environment the served models run in (for '
    'example TF_ENABLE_ONEDNN_OPTS=0, TensorFlow\'s kernels without oneDNN), printed with the '
    'figures.')
_VARIANTS = flags.DEFINE_list(
    'serving_variants', ['defaults', 'norewrites', 'constants_off', 'nooptimize', 'keep'],
    'Re-dumped SavedModels served beside the training one: defaults, norewrites '
    '(--rewrites=none), one_gather and tables_only (--rewrites=one_gather, '
    '--rewrites=read_only_tables: each rewrite alone), dense_tables and static_tables '
    '(--rewrites=one_gather,<that>), '
    'constants_off (--constants_as_variables=off), nooptimize, keep (freezer.py '
    '--keep_as_variables=--keep_size).')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _place_round_robin(shards):
  """A device function putting each variable and table on /device:CPU:k in turn."""
  counter = [0]
  state_ops = {'VarHandleOp', 'VariableV2', 'MutableHashTableOfTensorsV2', 'MutableHashTableV2'}

  def place(op):
    if op.type in state_ops:
      device = '/device:CPU:%d' % (counter[0] % shards)
      counter[0] += 1
      return device
    return op.device or '/device:CPU:0'
  return place


def build(work_dir, embedding_mb, dim, partitions, shards, table_keys, train_step=True,
          checkpoint_path=True, table_dim=recsys_model.STATS_DIM, string_table_keys=0):
  """Writes work_dir/saved_model, and work_dir/ckpt (sharded, with Adam slots and the table)
  and work_dir/structure.

  The structure is a SavedModel with the graph only (no variables/): the checkpoint path never
  reads a structure's values, so it needs none.

  Args:
    train_step: build the optimizer and run one step (Adam slots get values, twice the
      embedding's bytes); without it the model has no optimizer, so it builds faster.
    checkpoint_path: also write ckpt/ and structure/ (what optimize_from_ckpt.py reads).
    table_dim: floats per key of the hash tables.
    string_table_keys: keys inserted into category_stats (string keys).
  """
  rows = max(partitions, (embedding_mb << 20) // (4 * dim))
  config = recsys_model.ModelConfig(item_buckets=rows, embedding_dim=dim,
                                 num_partitions=partitions, num_dense=8,
                                 hidden_units=(64, 32), batch_size=256, stats_dim=table_dim)
  graph = tf.Graph()
  with graph.as_default(), graph.device(_place_round_robin(shards)):
    features = {
        'user_id': tf1.placeholder(tf.int64, [None], name='user_id'),
        'item_id': tf1.placeholder(tf.int64, [None], name='item_id'),
        'category': tf1.placeholder(tf.string, [None], name='category'),
        'dense': tf1.placeholder(tf.float32, [None, config.num_dense], name='dense'),
        recsys_model.LABEL: tf1.placeholder(tf.float32, [None], name='label'),
    }
    outputs = recsys_model.build_model(features, config, training=train_step)
    table = graph.get_tensor_by_name('user_stats:0')
    keys = tf1.placeholder(tf.int64, [None])
    values = tf1.placeholder(tf.float32, [None, table_dim])
    insert = tf.raw_ops.LookupTableInsertV2(table_handle=table, keys=keys, values=values)
    names = tf1.placeholder(tf.string, [None])
    insert_names = tf.raw_ops.LookupTableInsertV2(
        table_handle=graph.get_tensor_by_name('category_stats:0'), keys=names, values=values)
    saver = tf1.train.Saver(sharded=True, max_to_keep=1, save_relative_paths=True)
    session_config = tf1.ConfigProto(device_count={'CPU': shards}, allow_soft_placement=False)
    with tf1.Session(graph=graph, config=session_config) as session:
      session.run(tf1.global_variables_initializer())
      rng = np.random.RandomState(0)
      all_keys = rng.randint(1, 2**62, size=table_keys, dtype=np.int64)
      for start in range(0, table_keys, 200000):
        k = all_keys[start:start + 200000]
        session.run(insert, {keys: k, values: rng.rand(len(k), table_dim).astype(np.float32) * 10})
      categories = np.array([b'category_%d' % i for i in range(string_table_keys)], object)
      for start in range(0, string_table_keys, 200000):
        k = categories[start:start + 200000]
        session.run(insert_names,
                    {names: k, values: rng.rand(len(k), table_dim).astype(np.float32) * 10})
      batch = 256
      feed = {features['user_id']: all_keys[:batch],
              features['item_id']: rng.randint(0, rows, batch).astype(np.int64),
              features['category']: np.array([b'c%d' % i for i in range(batch)], object),
              features['dense']: rng.normal(size=(batch, config.num_dense)).astype(np.float32),
              features[recsys_model.LABEL]: (rng.rand(batch) < 0.3).astype(np.float32)}
      if train_step:
        session.run(outputs['train_op'], feed)  # Adam slots get values
      if checkpoint_path:
        ckpt_dir = os.path.join(work_dir, 'ckpt')
        os.makedirs(ckpt_dir, exist_ok=True)
        saver.save(session, os.path.join(ckpt_dir, 'model.ckpt'), global_step=1)
      # The training SavedModel, values included, as model_gen.py writes it: what freezer.py
      # and TensorFlow's convert_variables_to_constants start from.
      training = tf1.saved_model.Builder(os.path.join(work_dir, 'saved_model'))
      training.add_meta_graph_and_variables(session, ['serve'], signature_def_map={
          'serving_default': tf1.saved_model.signature_def_utils.predict_signature_def(
              {k: v for k, v in features.items() if k != recsys_model.LABEL},
              {'probability': outputs['probability']})}, clear_devices=True)
      training.save()
    signature = tf1.saved_model.signature_def_utils.predict_signature_def(
        {k: v for k, v in features.items() if k != recsys_model.LABEL},
        {'probability': outputs['probability']})
    meta_graph = tf1.train.export_meta_graph(saver_def=saver.as_saver_def(),
                                             clear_devices=False)
  if not checkpoint_path:
    return
  meta_graph.meta_info_def.tags.append('serve')
  meta_graph.signature_def['serving_default'].CopyFrom(signature)
  structure = os.path.join(work_dir, 'structure')
  os.makedirs(structure, exist_ok=True)
  proto = saved_model_pb2.SavedModel(saved_model_schema_version=1)
  proto.meta_graphs.add().CopyFrom(meta_graph)
  with open(os.path.join(structure, 'saved_model.pb'), 'wb') as f:
    f.write(proto.SerializeToString())


def _spread(values, scale=1.0, fmt='%.2f'):
  """'median (min-max)' of `values` times `scale`."""
  values = [v * scale for v in values]
  return (fmt + ' (' + fmt + '-' + fmt + ')') % (statistics.median(values), min(values),
                                                max(values))


def bench_checkpoint(work_dir, repeats):
  """optimize_from_ckpt.py (checksums checked, and not: what checking costs; --noprune) against
  `cp -r` of the same checkpoint, warm and cold, alternated in one loop."""
  ckpt = os.path.join(work_dir, 'ckpt')
  prefix = checkpoint_index.resolve_prefix(ckpt)
  index = checkpoint_index.read_index(prefix)
  total = sum(index.nbytes(n) for n in index.entries)
  slots = sum(index.nbytes(n) for n in index.entries if 'Adam' in n)
  table = index.entries['user_stats-keys'].shape.dim[0].size
  out = os.path.join(work_dir, 'out')
  ours = [sys.executable, 'optimize_from_ckpt.py',
          '--saved_model_dir=' + os.path.join(work_dir, 'structure'), '--checkpoint=' + ckpt,
          '--output_saved_model_dir=' + out]
  # The defaults end with the serving check (TF Serving's loader loads the output and runs each
  # signature); --nocheck shows the copy alone, and what checking checksums and --noprune cost.
  commands = {
      'cp -r': ['cp', '-r', ckpt, out],
      'optimize_from_ckpt.py': ours,
      'optimize_from_ckpt.py --nocheck': ours + ['--nocheck'],
      'optimize_from_ckpt.py --nocheck --noverify_checksums': ours + ['--nocheck',
                                                                      '--noverify_checksums'],
      'optimize_from_ckpt.py --nocheck --noprune': ours + ['--nocheck', '--noprune'],
  }
  figures = {(name, cache): [] for cache in ('warm', 'cold') for name in commands}
  for r in range(repeats + 1):  # the first round warms the page cache and is not counted
    order = list(figures) if r % 2 == 0 else list(reversed(list(figures)))
    for name, cache in order:
      shutil.rmtree(out, ignore_errors=True)
      if cache == 'cold':
        evict(ckpt)
      result = measure(commands[name])
      if r:
        figures[(name, cache)].append(result)
      if name == 'optimize_from_ckpt.py':
        exported = dir_bytes(os.path.join(out, 'variables'))
        restored = checkpoint_index.read_index(os.path.join(out, 'variables', 'variables'))
        needed = sum(index.nbytes(n) for n in restored.entries)
  shutil.rmtree(out, ignore_errors=True)

  print('checkpoint: %s in %d shards (Adam slots %s), hash table of %d keys' % (
      units.human_bytes(total), index.num_shards, units.human_bytes(slots), table))
  print()
  print('checkpoint -> serving SavedModel, %d runs alternated: median (min-max)' % repeats)
  print('%-52s %5s %22s %8s %9s' % ('', 'cache', 'wall s', 'x cp -r', 'peak RSS'))
  for cache in ('warm', 'cold'):
    cp = statistics.median(w for w, _ in figures[('cp -r', cache)])
    for name in commands:
      runs = figures[(name, cache)]
      walls = [w for w, _ in runs]
      print('%-52s %5s %22s %8.2f %5.0f MiB' % (
          name, cache, _spread(walls), statistics.median(walls) / cp,
          statistics.median(m for _, m in runs) / 2**20))
  for cache in ('warm', 'cold'):
    on = statistics.median(w for w, _ in figures[('optimize_from_ckpt.py --nocheck', cache)])
    off = statistics.median(
        w for w, _ in figures[('optimize_from_ckpt.py --nocheck --noverify_checksums', cache)])
    print('checking checksums, %s: %+.3f s (%+.0f%%)' % (cache, on - off, 100.0 * (on - off) / off))
  print()
  print('exported variables/: %s; tensors the serving graph restores: %s (%+.2f%%); '
        'checkpoint: %s' % (units.human_bytes(exported), units.human_bytes(needed),
                            100.0 * (exported - needed) / needed, units.human_bytes(total)))


# What a user does without this toolkit: load the SavedModel, convert_variables_to_constants,
# write the GraphDef. (Its tables come out empty.)
_BASELINE_FREEZE = r"""
import os, sys
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import tensorflow as tf
tf1 = tf.compat.v1
export_dir, out = sys.argv[1], sys.argv[2]
with tf1.Session(graph=tf.Graph()) as session:
  meta_graph = tf1.saved_model.loader.load(session, ['serve'], export_dir)
  outputs = sorted({o.name.split(':')[0] for s in meta_graph.signature_def.values()
                    for o in s.outputs.values()})
  frozen = tf1.graph_util.convert_variables_to_constants(
      session, session.graph.as_graph_def(), outputs)
with open(out, 'wb') as f:
  f.write(frozen.SerializeToString())
"""


_TF_STARTUP = r"""
import os
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import tensorflow as tf
tf.constant(1.0) + 1
"""


def bench_freeze(work_dir, repeats):
  saved_model = os.path.join(work_dir, 'saved_model')
  index = checkpoint_index.read_index(os.path.join(saved_model, 'variables', 'variables'))
  inference = sum(index.nbytes(n) for n in index.entries
                  if 'Adam' not in n and n not in ('global_step', 'beta1_power', 'beta2_power'))
  # The largest tensor the freezer streams (a partition counts alone: it is its own constant)
  # and the largest table (keys and values).
  largest = max(entry.size for name in index.entries for _, entry in index.records(name))
  tables = {}
  for name in index.entries:
    for suffix in ('-keys', '-values'):
      if name.endswith(suffix):
        tables[name[:-len(suffix)]] = tables.get(name[:-len(suffix)], 0) + index.nbytes(name)
  largest_table = max(tables.values(), default=0)
  out = os.path.join(work_dir, 'frozen.pb')
  commands = {
      'freezer.py': [sys.executable, 'freezer.py', '--saved_model_dir=' + saved_model,
                     '--output_graph=' + out, '--overwrite'],
      'convert_variables_to_constants': [sys.executable, '-c', _BASELINE_FREEZE, saved_model,
                                         out],
      # What freezer.py cannot do without: TensorFlow imported, and its eager runtime (the
      # streaming freezer reads string tensors with RestoreV2).
      'TensorFlow start-up': [sys.executable, '-c', _TF_STARTUP],
  }
  figures = {name: [] for name in commands}
  kept = {}
  for r in range(repeats):
    for name in (list(commands) if r % 2 == 0 else list(reversed(list(commands)))):
      if os.path.exists(out):
        os.remove(out)
      figures[name].append(measure(commands[name]))
      if name != 'TensorFlow start-up':
        kept[name] = _in_child(table_keys_in, out)
        kept[name + ' size'] = os.path.getsize(out)
  print()
  print('SavedModel -> frozen GraphDef (variables the signatures need: %s)'
        % units.human_bytes(inference))
  print('%-32s %14s %14s %12s %14s' % ('', 'wall (median)', 'peak RSS', 'output',
                                       'table keys kept'))
  for name, runs in figures.items():
    if name in kept:
      print('%-32s %12.2f s %10.0f MiB %8.0f MiB %14d' % (
          name, statistics.median(w for w, _ in runs),
          statistics.median(m for _, m in runs) / 2**20, kept[name + ' size'] / 2**20,
          kept[name]))
    else:
      print('%-32s %12.2f s %10.0f MiB' % (name, statistics.median(w for w, _ in runs),
                                           statistics.median(m for _, m in runs) / 2**20))
  rss = {name: statistics.median(m for _, m in runs) for name, runs in figures.items()}
  startup = rss['TensorFlow start-up']
  print('freezer.py peak RSS %s MiB (median, min-max): TensorFlow start-up %.0f MiB %+.0f MiB; '
        'largest tensor %.0f MiB, largest table %.0f MiB; start-up + twice the larger: %.0f MiB'
        % (_spread([m for _, m in figures['freezer.py']], 2**-20, '%.0f'), startup / 2**20,
           (rss['freezer.py'] - startup) / 2**20, largest / 2**20, largest_table / 2**20,
           (startup + 2 * max(largest, largest_table)) / 2**20))


def _in_child(fn, *args):
  """fn(*args) in a new process: what it loads (a 5 GiB model, a 2 GB graph) is gone when it
  returns, instead of staying in this process's heap beside the next measured command's."""
  import multiprocessing
  with multiprocessing.get_context('spawn').Pool(1) as pool:
    return pool.apply(fn, args)


def table_keys_in(graph_path):
  """Keys the frozen graph's tables are filled with (freezer/tables/*/keys constants)."""
  graph_def = frozen_graph.read_graph_def(graph_path)
  return sum(len(tf.make_ndarray(n.attr['value'].tensor)) for n in graph_def.node
             if n.name.endswith('/keys') and n.name.startswith('freezer/tables/'))


def write_feeds(training, batch_sizes, feeds_path):
  """serving_default inputs at each batch size (half trained ids, half unseen) as an .npz."""
  reference = loaders.load_saved_model(training)
  maker = inputs.InputMaker(reference, seed=0)
  feeds = {'%d/%s' % (b, k): v for b in batch_sizes
           for k, v in maker.make('serving_default', b).items()}
  reference.close()
  np.savez(feeds_path, **feeds)


def _run(cmd, env=None):
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False,
                        env=dict(os.environ, **env) if env else None)
  if proc.returncode:
    how = ('killed by signal %d' % -proc.returncode if proc.returncode < 0
           else 'exit code %d' % proc.returncode)
    raise RuntimeError('%s failed (%s): %s' % (' '.join(cmd), how, proc.stderr[-3000:]))
  return proc


def restored_bytes(export_dir):
  """Bytes of the tensors a SavedModel's saver restores (its variables/ index entries)."""
  prefix = os.path.join(export_dir, 'variables', 'variables')
  if not os.path.exists(prefix + '.index'):
    return 0
  index = checkpoint_index.read_index(prefix)
  return sum(index.nbytes(n) for n in index.entries)


def content_bytes(training):
  """Bytes of the trained tensors serving reads: the training SavedModel's variables/ without
  the optimizer's slots and counters."""
  index = checkpoint_index.read_index(os.path.join(training, 'variables', 'variables'))
  return sum(index.nbytes(n) for n in index.entries
             if 'Adam' not in n and n not in ('global_step', 'beta1_power', 'beta2_power'))


# (label, frozen graph, freezer.py flags, optimize_from_pb.py flags) of each serving variant:
# the defaults, then one change each, so each line shows what one choice is worth.
def _variants(keep):
  return {
      'defaults': ('re-dumped (defaults)', 'frozen', [], []),
      'norewrites': ('re-dumped, --rewrites=none', 'frozen', [], ['--rewrites=none']),
      'one_gather': ('re-dumped, --rewrites=one_gather', 'frozen', [], ['--rewrites=one_gather']),
      'tables_only': ('re-dumped, --rewrites=read_only_tables', 'frozen', [],
                      ['--rewrites=read_only_tables']),
      'dense_tables': ('re-dumped, --rewrites=one_gather,dense_tables', 'frozen', [],
                       ['--rewrites=one_gather,dense_tables']),
      'static_tables': ('re-dumped, --rewrites=one_gather,static_tables', 'frozen', [],
                        ['--rewrites=one_gather,static_tables']),
      'constants_off': ('re-dumped, --constants_as_variables=off', 'frozen', [],
                        ['--constants_as_variables=off']),
      'nooptimize': ('re-dumped, --nooptimize (no Grappler)', 'frozen', [], ['--nooptimize']),
      'keep': ('re-dumped, freezer --keep_as_variables=%s' % keep, 'kept',
               ['--keep_as_variables=' + keep], []),
  }


def _median_range(values, scale=1.0, fmt='%.3f'):
  values = [v * scale for v in values]
  return (fmt + ' (' + fmt + '-' + fmt + ')') % (statistics.median(values), min(values),
                                                  max(values))


def build_capi_throughput(build_dir):
  """Compiles benchmarks/capi_throughput.c against the installed tensorflow package (as
  tests/capi_runner.py compiles the tests' C API runner); returns the executable."""
  tf_dir = os.path.dirname(tf.__file__)
  exe = os.path.join(build_dir, 'capi_throughput')
  cmd = ['gcc', '-O2', '-Wall', os.path.join(REPO, 'benchmarks', 'capi_throughput.c'), '-o', exe,
         '-I%s/include' % tf_dir, '-L%s' % tf_dir, '-l:libtensorflow_cc.so.2',
         '-l:libtensorflow_framework.so.2', '-Wl,-rpath,%s' % tf_dir, '-lpthread']
  if shutil.which('ld.gold'):
    cmd.insert(1, '-fuse-ld=gold')
  _run(cmd)
  return exe


def write_capi_requests(export_dir, feeds_path, out_dir):
  """serving_default's request (tests/capi/serve_saved_model.c's format) at each batch size of
  the feeds: {batch: path}."""
  sys.path.insert(0, os.path.join(REPO, 'tests'))
  import struct

  import capi_runner
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, 'saved_model.pb'), 'rb') as f:
    proto.ParseFromString(f.read())
  sig = proto.meta_graphs[0].signature_def['serving_default']
  data = np.load(feeds_path, allow_pickle=True)
  paths = {}
  for batch in sorted({int(k.split('/')[0]) for k in data.files}):
    feeds = {k.split('/', 1)[1]: data[k] for k in data.files if k.startswith('%d/' % batch)}
    request = bytearray(struct.pack('<I', len(feeds)))
    for key in sorted(feeds):
      name = sig.inputs[key].name
      request += capi_runner._encode_name(name) + capi_runner._encode_tensor(
          name, np.asarray(feeds[key]))
    outputs = [sig.outputs[k].name for k in sorted(sig.outputs)]
    request += struct.pack('<I', len(outputs))
    for name in outputs:
      request += capi_runner._encode_name(name)
    paths[batch] = os.path.join(out_dir, 'request_%d.bin' % batch)
    with open(paths[batch], 'wb') as f:
      f.write(request)
  return paths


def _print_speed(figures, batch_sizes, latency_runs, threads, seconds, where):
  """The latency and throughput tables of `figures` ({model: [run results]})."""
  print()
  print('%s: load time and latency of one caller (median / p99 of %d calls)'
        % (where, latency_runs))
  header = '%-48s %10s' % ('', 'load time')
  for b in batch_sizes:
    header += '  %21s' % ('batch %d median/p99' % b)
  print(header)
  for name, runs in figures.items():
    if not runs:
      continue
    line = '%-48s %8.3f s' % (name, statistics.median(f['load'] for f in runs))
    for b in batch_sizes:
      line += '  %7.3f / %7.3f ms' % (
          statistics.median(f['latency'][str(b)][0] for f in runs) * 1e3,
          statistics.median(f['latency'][str(b)][1] for f in runs) * 1e3)
    print(line)
  print()
  print('%s: throughput, %d threads sharing one session for %.1f s: queries (calls) per '
        'second, and p99 latency of a call' % (where, threads, seconds))
  header = '%-48s' % ''
  for b in batch_sizes:
    header += '  %34s' % ('batch %d: q/s (min-max), p99' % b)
  print(header)
  for name, runs in figures.items():
    if not runs:
      continue
    line = '%-48s' % name
    for b in batch_sizes:
      qps = [f['concurrent'][str(b)][0] for f in runs]
      line += '  %24s %6.2f ms' % (_median_range(qps, 1, '%.0f'), statistics.median(
          f['concurrent'][str(b)][2] for f in runs) * 1e3)
    print(line)
  reference = figures.get('training SavedModel') or []
  if not reference:
    return
  print()
  print('%s, against the training SavedModel (ratio of medians): throughput, batch-%d median '
        'latency' % (where, batch_sizes[0]))
  for name, runs in figures.items():
    if not runs or name == 'training SavedModel':
      continue
    parts = []
    for b in batch_sizes:
      ours = statistics.median(f['concurrent'][str(b)][0] for f in runs)
      theirs = statistics.median(f['concurrent'][str(b)][0] for f in reference)
      parts.append('batch %d %.2fx' % (b, ours / theirs))
    b = batch_sizes[0]
    ours = statistics.median(f['latency'][str(b)][0] for f in runs)
    theirs = statistics.median(f['latency'][str(b)][0] for f in reference)
    print('%-48s throughput %s; batch-%d latency %.2fx' % (name, ', '.join(parts), b,
                                                           ours / theirs))


def bench_serving(work_dir, repeats, keep, latency_runs, batch_sizes=(1, 64), threads=8,
                  seconds=3.0, variants=('defaults', 'norewrites', 'constants_off',
                                         'nooptimize', 'keep'), capi=True, serving_env=None):
  """The re-dumped SavedModels against the training one, each run of each model in a fresh
  process (benchmarks/serving_probe.py), the order alternated between runs: resident memory
  after load and one call above a bare session's, load time, latency, and throughput with
  `threads` threads sharing the session; `serving_env` ({name: value}) is added to the served
  processes' environment."""
  import json  # here: a merge-friendly import block
  training = os.path.join(work_dir, 'saved_model')
  models = {'training SavedModel': training}
  print()
  print('training SavedModel: saved_model.pb %s, variables/ %s' % (
      units.human_bytes(os.path.getsize(os.path.join(training, 'saved_model.pb'))),
      units.human_bytes(dir_bytes(os.path.join(training, 'variables')))))
  frozen_done = set()
  every = _variants(keep)
  for name in variants:
    label, frozen_name, freeze_flags, optimize_flags = every[name]
    frozen = os.path.join(work_dir, '%s.pb' % frozen_name)
    serving = os.path.join(work_dir, 'serving_%s' % name)
    shutil.rmtree(serving, ignore_errors=True)
    if frozen_name not in frozen_done:
      shutil.rmtree(frozen + '.variables', ignore_errors=True)
      _run([sys.executable, 'freezer.py', '--saved_model_dir=' + training,
            '--output_graph=' + frozen, '--overwrite'] + freeze_flags)
      frozen_done.add(frozen_name)
    start = time.perf_counter()
    try:
      _run([sys.executable, 'optimize_from_pb.py', '--input_graph=' + frozen,
            '--output_saved_model_dir=' + serving] + optimize_flags)
    except RuntimeError as e:  # e.g. killed for memory: a figure too, not the end of the run
      print()
      print('%s: optimize_from_pb.py failed after %.1f s: %s' % (
          label, time.perf_counter() - start, str(e).strip().splitlines()[-1][-300:]))
      continue
    elapsed = time.perf_counter() - start
    try:
      report = _run([sys.executable, 'optimize_from_pb_test.py', '--saved_model_dir=' + serving,
                     '--reference_saved_model_dir=' + training, '--batch_sizes=0'])
      verdict = report.stdout.strip().splitlines()[-1]
    except RuntimeError as e:  # both models in one process may not fit in memory
      verdict = 'not compared: optimize_from_pb_test.py failed (%s)' % (
          str(e).split(' failed (', 1)[-1].split(')', 1)[0])
    models[label] = serving
    graph = os.path.getsize(os.path.join(serving, 'saved_model.pb'))
    variables = (dir_bytes(os.path.join(serving, 'variables'))
                 if os.path.isdir(os.path.join(serving, 'variables')) else 0)
    print()
    print('%s: optimize_from_pb.py %.1f s; saved_model.pb %s, variables/ %s; outputs against '
          'the training SavedModel: %s' % (
              label, elapsed, units.human_bytes(graph), units.human_bytes(variables), verdict))
  feeds_path = os.path.join(work_dir, 'serving_feeds.npz')
  _in_child(write_feeds, training, batch_sizes, feeds_path)
  probe = [sys.executable, os.path.join('benchmarks', 'serving_probe.py')]
  figures = {name: [] for name in models}
  capi_figures = {name: [] for name in models}
  bare, failed = [], {}
  runner = build_capi_throughput(work_dir) if capi else None
  requests = write_capi_requests(training, feeds_path, work_dir) if capi else {}
  for r in range(repeats):
    bare.append(json.loads(_run(probe + ['bare'], serving_env).stdout.strip().splitlines()[-1])[
        'rss'])
    for name in (list(models) if r % 2 == 0 else list(reversed(list(models)))):
      try:
        proc = _run(probe + [models[name], feeds_path, str(latency_runs), str(seconds),
                             str(threads)], serving_env)
      except RuntimeError as e:
        failed[name] = str(e).split(' failed (', 1)[-1].split(')', 1)[0]
        continue
      figures[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
      if runner:  # one fresh process per batch size
        run = {'latency': {}, 'concurrent': {}}
        for b in batch_sizes:
          out = json.loads(_run([runner, models[name], 'serve', requests[b], str(threads),
                                 str(seconds), str(latency_runs)], serving_env).stdout.strip())
          run['load'] = out['load']
          run['latency'][str(b)] = out['latency']
          run['concurrent'][str(b)] = out['concurrent']
        capi_figures[name].append(run)
  floor = statistics.median(bare)
  content = content_bytes(training)
  print()
  print('serving_default, each model in a fresh process, %d runs alternated: medians (min-max) '
        'over the runs' % repeats)
  if serving_env:
    print('served with %s in the environment' % ' '.join(
        '%s=%s' % item for item in sorted(serving_env.items())))
  print()
  print('memory after load and one call, above a bare session (%s: TensorFlow imported, one '
        'empty run); tensors restored from variables/; trained tensors serving reads: %s'
        % (units.human_bytes(floor), units.human_bytes(content)))
  print('%-48s %24s %12s %9s %11s' % ('', 'above bare session', 'restored', 'ratio',
                                      'to trained'))
  for name, runs in figures.items():
    if not runs:
      print('%-48s failed to load: %s' % (name, failed.get(name, '?')))
      continue
    above = [f['rss'] - floor for f in runs]
    restored = restored_bytes(models[name])
    print('%-48s %24s %12s %8.2fx %10.2fx' % (
        name, _median_range(above, 1 / 2**20, '%.0f') + ' MiB', units.human_bytes(restored),
        statistics.median(above) / restored if restored else float('nan'),
        statistics.median(above) / content))
  _print_speed(figures, batch_sizes, latency_runs, threads, seconds, 'Python (TF1 loader)')
  if runner:
    _print_speed(capi_figures, batch_sizes, latency_runs, threads, seconds,
                 'C API (TF_LoadSessionFromSavedModel, no Python)')


def main(argv):
  del argv
  work_dir = _WORK_DIR.value
  if _REBUILD.value or not os.path.exists(os.path.join(work_dir, 'saved_model', 'saved_model.pb')):
    shutil.rmtree(work_dir, ignore_errors=True)
    os.makedirs(work_dir)
    start = time.perf_counter()
    _in_child(build, work_dir, _EMBEDDING_MB.value, _DIM.value, _PARTITIONS.value,
              _SHARDS.value, _TABLE_KEYS.value, _ADAM_SLOTS.value, True, _TABLE_DIM.value,
              _STRING_TABLE_KEYS.value)
    print('built the model in %.0f s' % (time.perf_counter() - start))
  print('command: %s' % ' '.join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]))
  print('machine: %s' % machine())
  print('load average (1, 5, 15 min) at the start: %.1f %.1f %.1f' % os.getloadavg())
  compile_bytecode()
  if 'ckpt' in _SECTIONS.value:
    bench_checkpoint(work_dir, _CHECKPOINT_REPEATS.value)
  if 'freeze' in _SECTIONS.value:
    bench_freeze(work_dir, _REPEATS.value)
  if 'serve' in _SECTIONS.value:
    bench_serving(work_dir, _REPEATS.value, _KEEP.value, _LATENCY_RUNS.value,
                  [int(b) for b in _BATCH_SIZES.value], _THREADS.value, _SECONDS.value,
                  _VARIANTS.value, _CAPI.value,
                  dict(v.split('=', 1) for v in _SERVING_ENV.value))
  print()
  print('load average (1, 5, 15 min) at the end: %.1f %.1f %.1f' % os.getloadavg())


if __name__ == '__main__':
  flags.mark_flag_as_required('work_dir')
  app.run(main)
