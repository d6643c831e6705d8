/*
 * capi_throughput: a SavedModel served through TensorFlow's C API (the loader and session TF
 * Serving uses, no Python), measured: memory after the load and one call, latency of one
 * caller after 0.5 s of calls, then queries per second of THREADS threads sharing the one
 * session.
 *
 *   capi_throughput EXPORT_DIR TAGS REQUEST_FILE THREADS SECONDS LATENCY_RUNS
 *
 * REQUEST_FILE is tests/capi/serve_saved_model.c's request format (tests/capi_runner.py
 * writes it): the feeds, then the fetches. Every call feeds the same tensors. Prints one JSON
 * line: {"load": s, "rss": bytes, "latency": [median s, p99 s], "concurrent": [q/s, median s,
 * p99 s]}. On an error, one line starting with "capi_throughput: " on stderr and exit 1.
 *
 * Build as tests/capi_runner.py builds serve_saved_model.c, with -lpthread.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

static void die(const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  for (char *c = line; *c; ++c)
    if (*c == '\n' || *c == '\r') *c = ' ';
  fprintf(stderr, "capi_throughput: %s\n", line);
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = calloc(n ? n : 1, 1);
  if (!p) die("out of memory (%zu bytes)", n);
  return p;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ---- the request (see tests/capi/serve_saved_model.c) --------------------------------- */

typedef struct {
  const unsigned char *pos, *end;
} Reader;

static const unsigned char *take(Reader *r, size_t n) {
  if ((size_t)(r->end - r->pos) < n) die("truncated request");
  const unsigned char *p = r->pos;
  r->pos += n;
  return p;
}

static uint32_t read_u32(Reader *r) {
  uint32_t v;
  memcpy(&v, take(r, sizeof v), sizeof v);
  return v;
}

static char *read_name(Reader *r) {
  uint32_t len = read_u32(r);
  char *name = xmalloc((size_t)len + 1);
  memcpy(name, take(r, len), len);
  return name;
}

static TF_Tensor *read_tensor(Reader *r) {
  int32_t dtype_raw;
  memcpy(&dtype_raw, take(r, sizeof dtype_raw), sizeof dtype_raw);
  TF_DataType dtype = (TF_DataType)dtype_raw;
  uint32_t ndims = read_u32(r);
  if (ndims > 64) die("%u dimensions is not plausible", ndims);
  int64_t dims[64];
  size_t count = 1;
  for (uint32_t i = 0; i < ndims; ++i) {
    memcpy(&dims[i], take(r, sizeof dims[i]), sizeof dims[i]);
    count *= (size_t)dims[i];
  }
  if (dtype == TF_STRING) {
    TF_Tensor *t = TF_AllocateTensor(TF_STRING, dims, (int)ndims, count * sizeof(TF_TString));
    TF_TString *elems = (TF_TString *)TF_TensorData(t);
    for (size_t i = 0; i < count; ++i) {
      TF_TString_Init(&elems[i]);
      uint32_t len = read_u32(r);
      TF_TString_Copy(&elems[i], (const char *)take(r, len), len);
    }
    return t;
  }
  uint64_t nbytes;
  memcpy(&nbytes, take(r, sizeof nbytes), sizeof nbytes);
  TF_Tensor *t = TF_AllocateTensor(dtype, dims, (int)ndims, (size_t)nbytes);
  if (nbytes) memcpy(TF_TensorData(t), take(r, (size_t)nbytes), (size_t)nbytes);
  return t;
}

static TF_Output resolve(TF_Graph *graph, char *name) {
  int index = 0;
  char *colon = strrchr(name, ':');
  if (colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1)) {
    *colon = '\0';
    index = atoi(colon + 1);
  }
  TF_Operation *op = TF_GraphOperationByName(graph, name);
  if (!op) die("no operation named '%s' in the graph", name);
  TF_Output out = {op, index};
  return out;
}

static long rss_bytes(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = 0;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) kb = atol(line + 6);
  if (f) fclose(f);
  return kb * 1024;
}

/* ---- calls -------------------------------------------------------------------------------- */

typedef struct {
  TF_Session *session;
  TF_Output *inputs, *outputs;
  TF_Tensor **feeds;
  int n_feeds, n_fetches;
} Model;

static void call(const Model *m, TF_Status *status) {
  TF_Tensor *out[64];
  TF_SessionRun(m->session, NULL, m->inputs, m->feeds, m->n_feeds, m->outputs, out,
                m->n_fetches, NULL, 0, NULL, status);
  if (TF_GetCode(status) != TF_OK) die("TF_SessionRun failed: %s", TF_Message(status));
  for (int i = 0; i < m->n_fetches; ++i) TF_DeleteTensor(out[i]);
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

typedef struct {
  const Model *model;
  double end;
  double *latencies;
  size_t count, cap;
} Worker;

static void *work(void *arg) {
  Worker *w = arg;
  TF_Status *status = TF_NewStatus();
  for (;;) {
    double begin = now();
    if (begin >= w->end) break;
    call(w->model, status);
    if (w->count == w->cap) {
      w->cap = w->cap ? 2 * w->cap : 4096;
      w->latencies = realloc(w->latencies, w->cap * sizeof *w->latencies);
      if (!w->latencies) die("out of memory");
    }
    w->latencies[w->count++] = now() - begin;
  }
  TF_DeleteStatus(status);
  return NULL;
}

/* Runs `threads` threads for `seconds`; writes q/s, median, p99 to `result`. */
static void concurrent(const Model *m, int threads, double seconds, double result[3]) {
  Worker *workers = xmalloc(threads * sizeof *workers);
  pthread_t *ids = xmalloc(threads * sizeof *ids);
  double start = now();
  for (int k = 0; k < threads; ++k) {
    workers[k].model = m;
    workers[k].end = start + seconds;
    if (pthread_create(&ids[k], NULL, work, &workers[k])) die("cannot start a thread");
  }
  size_t total = 0;
  for (int k = 0; k < threads; ++k) {
    pthread_join(ids[k], NULL);
    total += workers[k].count;
  }
  double wall = now() - start;
  double *all = xmalloc(total * sizeof *all);
  size_t n = 0;
  for (int k = 0; k < threads; ++k) {
    memcpy(all + n, workers[k].latencies, workers[k].count * sizeof *all);
    n += workers[k].count;
    free(workers[k].latencies);
  }
  qsort(all, n, sizeof *all, by_value);
  result[0] = n / wall;
  result[1] = n ? all[n / 2] : 0;
  result[2] = n ? all[(size_t)(0.99 * (n - 1))] : 0;
  free(all);
  free(workers);
  free(ids);
}

int main(int argc, char **argv) {
  if (argc != 7) die("usage: capi_throughput EXPORT_DIR TAGS REQUEST_FILE THREADS SECONDS RUNS");
  int threads = atoi(argv[4]), runs = atoi(argv[6]);
  double seconds = atof(argv[5]);
  const char *tags[1] = {argv[2]};

  FILE *f = fopen(argv[3], "rb");
  if (!f) die("cannot open %s", argv[3]);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *request = xmalloc((size_t)len);
  if (fread(request, 1, (size_t)len, f) != (size_t)len) die("cannot read %s", argv[3]);
  fclose(f);
  Reader r = {request, request + len};
  Model m;
  m.n_feeds = (int)read_u32(&r);
  char **feed_names = xmalloc(m.n_feeds * sizeof *feed_names);
  m.feeds = xmalloc(m.n_feeds * sizeof *m.feeds);
  for (int i = 0; i < m.n_feeds; ++i) {
    feed_names[i] = read_name(&r);
    m.feeds[i] = read_tensor(&r);
  }
  m.n_fetches = (int)read_u32(&r);
  if (m.n_fetches > 64) die("too many fetches");
  char **fetch_names = xmalloc(m.n_fetches * sizeof *fetch_names);
  for (int i = 0; i < m.n_fetches; ++i) fetch_names[i] = read_name(&r);

  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  double start = now();
  m.session = TF_LoadSessionFromSavedModel(options, NULL, argv[1], tags, 1, graph, NULL, status);
  if (TF_GetCode(status) != TF_OK) die("cannot load %s: %s", argv[1], TF_Message(status));
  double load = now() - start;
  m.inputs = xmalloc(m.n_feeds * sizeof *m.inputs);
  m.outputs = xmalloc(m.n_fetches * sizeof *m.outputs);
  for (int i = 0; i < m.n_feeds; ++i) m.inputs[i] = resolve(graph, feed_names[i]);
  for (int i = 0; i < m.n_fetches; ++i) m.outputs[i] = resolve(graph, fetch_names[i]);

  call(&m, status);
  long rss = rss_bytes();
  /* Steady state, as a server answers after its warmup requests: a model's first few hundred
   * calls after the load can take 3x as long (seen on either of two models, by chance). */
  for (double warm_end = now() + 0.5; now() < warm_end;) call(&m, status);
  double *latencies = xmalloc(runs * sizeof *latencies);
  for (int i = 0; i < runs; ++i) {
    double begin = now();
    call(&m, status);
    latencies[i] = now() - begin;
  }
  qsort(latencies, runs, sizeof *latencies, by_value);
  double result[3];
  concurrent(&m, threads, seconds < 0.5 ? seconds : 0.5, result);  /* warm every thread */
  concurrent(&m, threads, seconds, result);
  printf("{\"load\": %.6f, \"rss\": %ld, \"latency\": [%.9f, %.9f], "
         "\"concurrent\": [%.3f, %.9f, %.9f]}\n", load, rss, latencies[runs / 2],
         latencies[(size_t)(0.99 * (runs - 1))], result[0], result[1], result[2]);
  return 0;
}
