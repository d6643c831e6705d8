r"""The checkpoint path from a GCS emulator against a plain download of the whole checkpoint.

Builds a checkpoint whose embedding partitions each carry two Adam slots (serving needs a third
of the bytes), uploads it to a fake-gcs-server started here (moto's S3 server reads the whole
object for every ranged GET, so it cannot stand for a store's speed), then, each in a fresh
process so that peak RSS is its own, in the same run:
- download: every file of the checkpoint copied to local disk (files.copy, pyarrow);
- ckpt_path: checkpoint_copy.copy_tensors of the non-slot tensors, the checkpoint path's copy
  (ranged reads of every data shard in parallel, each range checked against its CRC32C);
- fsspec: the same ranges read with gcsfs (fsspec) in the same number of threads, each checked,
  written to a local file: the other library the file layer could have used.
- script, script_check: optimize_from_ckpt.py itself, end to end (its start-up, the structure, the
  checkpoint's index, the copy and the SavedModel written to local disk), with --nocheck and
  with its serving check (the default): the checkpoint as a user reads it. The structure is a local
  SavedModel of the serving graph (ids -> the embedding parts' rows summed).

  python benchmarks/remote_checkpoint_bench.py --embedding_mb=340 --repeats=3
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'tests'))


def build_checkpoint(directory, embedding_mb, partitions=4, dim=64):
  """A checkpoint: `partitions` embedding parts of EMBEDDING_MB in all, each with Adam slots.
  Run in a child process (--build): TensorFlow's memory is not the parent's."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf
  tf1 = tf.compat.v1
  rows = (embedding_mb << 20) // (4 * dim * partitions)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(0)
    variables = []
    for k in range(partitions):
      for suffix in ('', '/Adam', '/Adam_1'):
        variables.append(tf1.get_variable('emb/part_%d%s' % (k, suffix), (rows, dim),
                                          initializer=tf1.random_normal_initializer()))
    variables.append(tf1.Variable(7, dtype=tf.int64, name='global_step'))
    # The serving graph: ids -> each part's rows, summed (what a structure's signature reads).
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    score = tf.add_n([tf.gather(variables[3 * k], ids) for k in range(partitions)],
                     name='score')
    saver = tf1.train.Saver(variables)
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      prefix = saver.save(session, os.path.join(directory, 'model.ckpt'), global_step=7,
                          write_meta_graph=False)
      # The structure: a SavedModel with one signature fed by a placeholder (its values are
      # never read; they are dropped to keep the work directory small).
      structure = os.path.join(directory + '_structure')
      builder = tf1.saved_model.Builder(structure)
      builder.add_meta_graph_and_variables(
          session, ['serve'], signature_def_map={
              'serving_default': tf1.saved_model.predict_signature_def({'ids': ids},
                                                                       {'score': score})})
      builder.save()
      shutil.rmtree(os.path.join(structure, 'variables'))
      return prefix


def _rss_mib():
  # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child started by this
  # (TensorFlow-sized) parent would report the parent's peak.
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024.0
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_download(prefix_url, out_dir):
  from freezerlib.core import files
  parent, base = files.parent_dir(prefix_url), files.basename(prefix_url)
  start = time.perf_counter()
  total = 0
  for name in files.listdir(parent):
    if name.startswith(base + '.') and not name.endswith('.meta'):
      files.copy(files.join(parent, name), os.path.join(out_dir, name), overwrite=True)
      total += os.path.getsize(os.path.join(out_dir, name))
  return time.perf_counter() - start, total


def run_ckpt_path(prefix_url, out_dir):
  from freezerlib.formats import checkpoint_copy
  from freezerlib.formats import checkpoint_index
  start = time.perf_counter()
  index = checkpoint_index.read_index(prefix_url)
  names = [n for n in index.entries if 'Adam' not in n]
  copied = checkpoint_copy.copy_tensors(index, names, os.path.join(out_dir, 'variables'),
                                         chunk_bytes=1 << 20)
  return time.perf_counter() - start, copied


def run_fsspec(prefix_url, out_dir):
  """The same ranges through gcsfs: threads, each reading its ranges in 4 MiB pieces and
  checking them, written at their place in one local file per worker."""
  os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
  import concurrent.futures

  import gcsfs

  from freezerlib.core import files
  from freezerlib.formats import checkpoint_index
  from freezerlib.formats import stored_tensor
  start = time.perf_counter()
  index = checkpoint_index.read_index(prefix_url)
  store = gcsfs.GCSFileSystem(endpoint_url=os.environ['STORAGE_EMULATOR_HOST'], token='anon')
  jobs = []
  for name in index.entries:
    if 'Adam' in name:
      continue
    for _, entry in index.records(name):
      if entry.size:
        jobs.append((index.data_files()[entry.shard_id].split('://', 1)[1], entry))
  piece = files.REMOTE_PIECE_BYTES
  pieces, offset = [], 0
  for path, entry in jobs:
    for at in range(0, entry.size, piece):
      pieces.append((path, entry, entry.offset + at, min(piece, entry.size - at), offset + at))
    offset += entry.size
  out = os.open(os.path.join(out_dir, 'fsspec.data'), os.O_WRONLY | os.O_CREAT)

  def read(p):
    return store.cat_file(p[0], start=p[2], end=p[2] + p[3])

  checks = {id(entry): stored_tensor.Checksum(entry) for _, entry in jobs}
  with concurrent.futures.ThreadPoolExecutor(2 * files.REMOTE_DEPTH) as pool:
    for p, data in zip(pieces, pool.map(read, pieces)):
      checks[id(p[1])].update(data)
      os.pwrite(out, data, p[4])
  os.close(out)
  bad = [c.problem() for c in checks.values() if c.problem()]
  assert not bad, bad
  return time.perf_counter() - start, offset


def run_script(prefix_url, out_dir, structure, check):
  """optimize_from_ckpt.py end to end; bytes: the variables/ it wrote."""
  out = os.path.join(out_dir, 'serving')
  command = [sys.executable, os.path.join(REPO, 'optimize_from_ckpt.py'),
             '--saved_model_dir=' + structure,
             '--checkpoint=' + prefix_url, '--output_saved_model_dir=' + out,
             '--check' if check else '--nocheck']
  start = time.perf_counter()
  subprocess.run(command, check=True, capture_output=True)
  seconds = time.perf_counter() - start
  nbytes = sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(os.path.join(out, 'variables')) for name in names)
  return seconds, nbytes


def child(mode, prefix_url, structure):
  out_dir = tempfile.mkdtemp(prefix='remote_bench_out_')
  try:
    if mode in ('script', 'script_check'):
      seconds, nbytes = run_script(prefix_url, out_dir, structure, mode == 'script_check')
      # The script's own peak (this process imports nothing heavy): wait4's, of the child.
      rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    else:
      seconds, nbytes = {'download': run_download, 'ckpt_path': run_ckpt_path,
                         'fsspec': run_fsspec}[mode](prefix_url, out_dir)
      rss = _rss_mib()
  finally:
    shutil.rmtree(out_dir, ignore_errors=True)
  print('%s %.3f %d %.1f' % (mode, seconds, nbytes, rss))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--embedding_mb', type=int, default=340,
                      help='MiB of embedding (the checkpoint holds 3x with its Adam slots)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--modes', default='download,ckpt_path,fsspec,script,script_check')
  parser.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
  parser.add_argument('--build', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(*args.child)
    return
  if args.build:
    print(build_checkpoint(args.build, args.embedding_mb))
    return
  import storage_servers
  work = tempfile.mkdtemp(prefix='remote_bench_')
  server = storage_servers.start_fake_gcs(['bench'])
  try:
    os.environ.update(server.env)
    prefix = subprocess.run([sys.executable, __file__, '--build', work, '--embedding_mb',
                             str(args.embedding_mb)], capture_output=True, text=True,
                            check=True).stdout.split()[-1]
    from freezerlib.core import files
    remote = 'gs://bench/ckpt'
    files.copy_tree(work, remote)
    size = sum(os.path.getsize(os.path.join(work, n)) for n in os.listdir(work)
               if n.startswith('model.ckpt-7.'))
    print('checkpoint: %.1f MiB on %s (fake-gcs-server, in memory)' % (size / 2**20,
                                                                        server.endpoint))
    prefix_url = remote + '/' + os.path.basename(prefix)
    results = {}
    for _ in range(args.repeats):
      for mode in args.modes.split(','):
        line = subprocess.run([sys.executable, __file__, '--child', mode, prefix_url,
                               work + '_structure'],
                              env=os.environ, capture_output=True, text=True, check=True)
        _, seconds, nbytes, rss = line.stdout.split()
        results.setdefault(mode, []).append((float(seconds), int(nbytes), float(rss)))
    for mode, runs in results.items():
      best = min(runs)
      print('%-10s best of %d: %6.2f s  %7.1f MiB  %6.0f MiB/s  peak RSS %5.0f MiB  (all: %s)' % (
          mode, len(runs), best[0], best[1] / 2**20, best[1] / 2**20 / best[0],
          max(r[2] for r in runs), ', '.join('%.2f' % r[0] for r in runs)))
    if 'download' in results:
      base = min(results['download'])[0]
      for mode in results:
        print('%-10s / download: %.2fx the time' % (mode, min(results[mode])[0] / base))
  finally:
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work + '_structure', ignore_errors=True)


if __name__ == '__main__':
  main()
