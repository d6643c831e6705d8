r"""One SavedModel, served in this fresh process: memory, load time, latency, throughput.

Run by benchmark.py, one process per model and run, so nothing one model leaves in the heap
is counted against another. Prints one JSON line:

  load         seconds to load (restore, then the main op), as TF Serving loads a TF1 model
  rss          bytes of resident memory after the load and one call (VmRSS)
  latency      {batch: [median, p99]} seconds of `runs` calls one after another, after 0.5 s
               of calls (the first few hundred after a load can be slower)
  concurrent   {batch: [queries per second, median, p99]}: `threads` threads sharing the one
               session call serving_default for `seconds`; a query is one call of `batch`
               examples; latencies are per call, over every thread

`bare` instead of a SavedModel: TensorFlow imported and an empty session run once, the floor
that `rss` is measured above.

  python benchmarks/serving_probe.py EXPORT_DIR FEEDS.npz [RUNS [SECONDS [THREADS]]]
  python benchmarks/serving_probe.py bare
"""

import json
import os
import sys
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import tensorflow as tf

WARM_SECONDS = 0.5  # of calls before the latency of one caller is measured


def rss_bytes():
  """Resident memory of this process now (VmRSS), in bytes."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


def bare():
  """RSS of a process that imported TensorFlow and ran an empty session once."""
  tf1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None])
    y = tf.identity(x)
  with tf1.Session(graph=graph) as session:
    session.run(y, {x: np.zeros(1, np.float32)})
    return {'rss': rss_bytes()}


def concurrent(call, feeds, seconds, threads):
  """(queries per second, median, p99 seconds) of `threads` threads calling `call(*feeds)`."""
  start_line = threading.Barrier(threads + 1)
  latencies = [[] for _ in range(threads)]
  deadline = [0.0]

  def worker(k):
    mine = latencies[k]
    start_line.wait()
    end = deadline[0]
    while True:
      begin = time.perf_counter()
      if begin >= end:
        return
      call(*feeds)
      mine.append(time.perf_counter() - begin)

  pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
  for t in pool:
    t.start()
  begin = time.perf_counter()
  deadline[0] = begin + seconds
  start_line.wait()
  for t in pool:
    t.join()
  wall = time.perf_counter() - begin
  every = np.concatenate([np.asarray(l) for l in latencies])
  return [len(every) / wall, float(np.median(every)), float(np.percentile(every, 99))]


def serve(export_dir, feeds_path, runs, seconds, threads):
  from freezerlib.verify import compare
  from freezerlib.verify import loaders
  model = loaders.load_saved_model(export_dir)
  data = np.load(feeds_path, allow_pickle=True)
  batches = sorted({int(k.split('/')[0]) for k in data.files})
  by_batch = {b: {k.split('/', 1)[1]: data[k] for k in data.files if k.startswith('%d/' % b)}
              for b in batches}
  model.run('serving_default', by_batch[batches[0]])
  out = {'load': model.load_seconds, 'rss': rss_bytes(), 'latency': {}, 'concurrent': {}}
  for batch in batches:
    # Steady state, as a server answers after its warmup requests: a model's first few hundred
    # calls after the load can take 3x as long (seen on either of two models, by chance).
    out['latency'][batch] = compare.latency(model, 'serving_default', by_batch[batch], runs,
                                            warm_seconds=WARM_SECONDS)
  sig = model.signatures['serving_default']
  keys = sorted(by_batch[batches[0]])
  fetches = [model.graph.get_tensor_by_name(sig.outputs[k].name) for k in sorted(sig.outputs)]
  call = model.session.make_callable(
      fetches, [model.graph.get_tensor_by_name(sig.inputs[k].name) for k in keys])
  for batch in batches:
    feeds = [by_batch[batch][k] for k in keys]
    concurrent(call, feeds, min(0.5, seconds), threads)  # warm every thread's path
    out['concurrent'][batch] = concurrent(call, feeds, seconds, threads)
  return out


def main(argv):
  if argv[1] == 'bare':
    result = bare()
  else:
    runs = int(argv[3]) if len(argv) > 3 else 200
    seconds = float(argv[4]) if len(argv) > 4 else 3.0
    threads = int(argv[5]) if len(argv) > 5 else 8
    result = serve(argv[1], argv[2], runs, seconds, threads)
  print(json.dumps(result))


if __name__ == '__main__':
  main(sys.argv)
