/*
 * serve_saved_model: answer one request from a SavedModel through TensorFlow's C API
 * (TF_LoadSessionFromSavedModel + TF_SessionRun, the C++ loader TF Serving uses).
 *
 *   serve_saved_model EXPORT_DIR TAGS REQUEST_FILE RESPONSE_FILE
 *
 * TAGS is one tag ("serve") or several separated by commas ("serve,gpu"). On any error the
 * program prints one line starting with "serve_saved_model: " to stderr and exits 1.
 *
 * Both files are little-endian binary (the host must be little-endian too). TF_SessionRun
 * needs at least one fetch and refuses a tensor that is both fed and fetched.
 *
 *   request  := uint32 n_feeds, feed * n_feeds, uint32 n_fetches, name * n_fetches
 *   feed     := name, tensor
 *   name     := uint32 len, len bytes of a tensor name: "x:0", "IteratorGetNext:3", or "x"
 *               (the part after the last ':' is the output index if it is all digits;
 *               without it the index is 0)
 *   response := uint32 n (== n_fetches), tensor * n, in the order of the fetches
 *   tensor   := int32 TF_DataType, uint32 ndims, int64 dims[ndims], data
 *   data     := for TF_STRING (7): per element, in row-major order, uint32 len + len bytes;
 *               for any fixed-size type (TF_DataTypeSize > 0: float, double, int8..int64,
 *               uint8..uint64, bool, half, bfloat16, complex...): uint64 nbytes + nbytes raw
 *               bytes, row-major, nbytes == TF_DataTypeSize * number of elements.
 *
 * Build (TF = the installed tensorflow package directory):
 *   gcc serve_saved_model.c -o serve_saved_model -I$TF/include -L$TF \
 *       -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 -Wl,-rpath,$TF
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

/* ---- errors ------------------------------------------------------------------------ */

static void die(const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  for (char *c = line; *c; ++c) /* keep the report on one line */
    if (*c == '\n' || *c == '\r') *c = ' ';
  fprintf(stderr, "serve_saved_model: %s\n", line);
  exit(1);
}

static void check_status(TF_Status *status, const char *what) {
  if (TF_GetCode(status) != TF_OK) die("%s: %s", what, TF_Message(status));
}

static void *xmalloc(size_t n) {
  void *p = calloc(n ? n : 1, 1);
  if (!p) die("out of memory (%zu bytes)", n);
  return p;
}

/* ---- reading the request ------------------------------------------------------------ */

typedef struct {
  const unsigned char *pos, *end;
  const char *path;
} Reader;

/* Returns a pointer to the next n bytes of the request and steps over them. */
static const unsigned char *take(Reader *r, size_t n, const char *what) {
  if ((size_t)(r->end - r->pos) < n) die("%s: truncated request while reading %s", r->path, what);
  const unsigned char *p = r->pos;
  r->pos += n;
  return p;
}

static uint32_t read_u32(Reader *r, const char *what) {
  uint32_t v;
  memcpy(&v, take(r, sizeof v, what), sizeof v);
  return v;
}

static char *read_name(Reader *r) {
  uint32_t len = read_u32(r, "a name length");
  char *name = xmalloc((size_t)len + 1);
  memcpy(name, take(r, len, "a name"), len);
  return name;
}

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) die("cannot open request file %s", path);
  size_t cap = 1 << 16, n = 0;
  unsigned char *buf = xmalloc(cap);
  size_t got;
  while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n == cap) {
      unsigned char *bigger = realloc(buf, cap *= 2);
      if (!bigger) die("out of memory reading %s", path);
      buf = bigger;
    }
  }
  if (ferror(f)) die("error reading request file %s", path);
  fclose(f);
  *len = n;
  return buf;
}

/* Splits "op:3" into the operation name (written back into `name`) and index 3. */
static int split_tensor_name(char *name) {
  char *colon = strrchr(name, ':');
  if (!colon || colon[1] == '\0' || strspn(colon + 1, "0123456789") != strlen(colon + 1))
    return 0;
  *colon = '\0';
  return atoi(colon + 1);
}

static int is_string_dtype(TF_DataType dtype) { return dtype == TF_STRING; }

/* Reads one tensor (dtype, ndims, dims, data) into a newly allocated TF_Tensor. */
static TF_Tensor *read_tensor(Reader *r, const char *name) {
  int32_t dtype_raw;
  memcpy(&dtype_raw, take(r, sizeof dtype_raw, "a dtype"), sizeof dtype_raw);
  TF_DataType dtype = (TF_DataType)dtype_raw;
  uint32_t ndims = read_u32(r, "ndims");
  if (ndims > 64) die("feed %s: %u dimensions is not plausible", name, ndims);
  int64_t dims[64];
  size_t count = 1;
  for (uint32_t i = 0; i < ndims; ++i) {
    memcpy(&dims[i], take(r, sizeof dims[i], "a dimension"), sizeof dims[i]);
    if (dims[i] < 0) die("feed %s: negative dimension %lld", name, (long long)dims[i]);
    if (dims[i] && count > SIZE_MAX / (size_t)dims[i]) die("feed %s: shape too large", name);
    count *= (size_t)dims[i];
  }

  if (is_string_dtype(dtype)) {
    TF_Tensor *t = TF_AllocateTensor(TF_STRING, dims, (int)ndims, count * sizeof(TF_TString));
    TF_TString *elems = (TF_TString *)TF_TensorData(t);
    for (size_t i = 0; i < count; ++i) TF_TString_Init(&elems[i]);
    for (size_t i = 0; i < count; ++i) {
      uint32_t len = read_u32(r, "a string length");
      TF_TString_Copy(&elems[i], (const char *)take(r, len, "string bytes"), len);
    }
    return t;
  }

  size_t elem_size = TF_DataTypeSize(dtype);
  if (elem_size == 0) die("feed %s: unsupported dtype %d", name, (int)dtype_raw);
  uint64_t nbytes;
  memcpy(&nbytes, take(r, sizeof nbytes, "a byte count"), sizeof nbytes);
  if (count > SIZE_MAX / elem_size || nbytes != (uint64_t)count * elem_size)
    die("feed %s: %llu data bytes for %zu elements of dtype %d", name,
        (unsigned long long)nbytes, count, (int)dtype_raw);
  TF_Tensor *t = TF_AllocateTensor(dtype, dims, (int)ndims, (size_t)nbytes);
  if (nbytes) memcpy(TF_TensorData(t), take(r, (size_t)nbytes, "tensor data"), (size_t)nbytes);
  return t;
}

/* Releases a tensor this program built; its TF_TStrings are ours to deallocate. */
static void delete_fed_tensor(TF_Tensor *t) {
  if (!t) return;
  if (is_string_dtype(TF_TensorType(t))) {
    TF_TString *elems = (TF_TString *)TF_TensorData(t);
    for (int64_t i = 0; i < TF_TensorElementCount(t); ++i) TF_TString_Dealloc(&elems[i]);
  }
  TF_DeleteTensor(t);
}

/* ---- writing the response ----------------------------------------------------------- */

static void put(FILE *f, const void *p, size_t n, const char *path) {
  if (n && fwrite(p, 1, n, f) != n) die("error writing response file %s", path);
}

static void write_tensor(FILE *f, const TF_Tensor *t, const char *fetch, const char *path) {
  int32_t dtype = (int32_t)TF_TensorType(t);
  uint32_t ndims = (uint32_t)TF_NumDims(t);
  put(f, &dtype, sizeof dtype, path);
  put(f, &ndims, sizeof ndims, path);
  for (uint32_t i = 0; i < ndims; ++i) {
    int64_t d = TF_Dim(t, (int)i);
    put(f, &d, sizeof d, path);
  }
  if (is_string_dtype(TF_TensorType(t))) {
    const TF_TString *elems = (const TF_TString *)TF_TensorData(t);
    for (int64_t i = 0; i < TF_TensorElementCount(t); ++i) {
      size_t size = TF_TString_GetSize(&elems[i]);
      if (size > UINT32_MAX) die("fetch %s: string element of %zu bytes is too long", fetch, size);
      uint32_t len = (uint32_t)size;
      put(f, &len, sizeof len, path);
      put(f, TF_TString_GetDataPointer(&elems[i]), len, path);
    }
    return;
  }
  if (TF_DataTypeSize(TF_TensorType(t)) == 0) die("fetch %s: unsupported dtype %d", fetch, dtype);
  uint64_t nbytes = TF_TensorByteSize(t);
  put(f, &nbytes, sizeof nbytes, path);
  put(f, TF_TensorData(t), (size_t)nbytes, path);
}

/* ---- main ------------------------------------------------------------------------------ */

/* Looks up "op:index" in the loaded graph. `name` is modified (the suffix is cut off). */
static TF_Output resolve(TF_Graph *graph, char *name, const char *kind) {
  char shown[1024];
  snprintf(shown, sizeof shown, "%s", name);
  int index = split_tensor_name(name);
  TF_Operation *op = TF_GraphOperationByName(graph, name);
  if (!op) die("%s %s: no operation named '%s' in the graph", kind, shown, name);
  if (index >= TF_OperationNumOutputs(op))
    die("%s %s: operation '%s' has only %d outputs", kind, shown, name, TF_OperationNumOutputs(op));
  TF_Output out = {op, index};
  return out;
}

int main(int argc, char **argv) {
  if (argc != 5) die("usage: serve_saved_model EXPORT_DIR TAGS REQUEST_FILE RESPONSE_FILE");
  const char *export_dir = argv[1], *request_path = argv[3], *response_path = argv[4];
  uint16_t one = 1;
  if (*(unsigned char *)&one != 1) die("a big-endian host is not supported");

  /* Tags: split "serve,gpu" in place. */
  char *tag_text = argv[2];
  int ntags = 0;
  const char *tags[64];
  for (char *tok = strtok(tag_text, ","); tok && ntags < 64; tok = strtok(NULL, ","))
    tags[ntags++] = tok;
  if (ntags == 0) die("no tag given");

  /* Parse the whole request before the (slow) load, so a bad request fails fast. */
  size_t request_len;
  unsigned char *request = read_file(request_path, &request_len);
  Reader r = {request, request + request_len, request_path};
  uint32_t n_feeds = read_u32(&r, "n_feeds");
  if (n_feeds > request_len) die("%s: implausible n_feeds %u", request_path, n_feeds);
  char **feed_names = xmalloc(n_feeds * sizeof *feed_names);
  TF_Tensor **feed_values = xmalloc(n_feeds * sizeof *feed_values);
  for (uint32_t i = 0; i < n_feeds; ++i) {
    feed_names[i] = read_name(&r);
    feed_values[i] = read_tensor(&r, feed_names[i]);
  }
  uint32_t n_fetches = read_u32(&r, "n_fetches");
  if (n_fetches > request_len) die("%s: implausible n_fetches %u", request_path, n_fetches);
  char **fetch_names = xmalloc(n_fetches * sizeof *fetch_names);
  for (uint32_t i = 0; i < n_fetches; ++i) fetch_names[i] = read_name(&r);
  if (r.pos != r.end) die("%s: %zu unexpected bytes after the request", request_path,
                          (size_t)(r.end - r.pos));

  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  char what[2048];
  snprintf(what, sizeof what, "cannot load SavedModel from %s with tags '%s'", export_dir, argv[2]);
  TF_Session *session = TF_LoadSessionFromSavedModel(options, NULL, export_dir, tags, ntags,
                                                     graph, NULL, status);
  check_status(status, what);

  TF_Output *inputs = xmalloc(n_feeds * sizeof *inputs);
  TF_Output *outputs = xmalloc(n_fetches * sizeof *outputs);
  TF_Tensor **output_values = xmalloc(n_fetches * sizeof *output_values);
  for (uint32_t i = 0; i < n_feeds; ++i) inputs[i] = resolve(graph, feed_names[i], "feed");
  for (uint32_t i = 0; i < n_fetches; ++i) outputs[i] = resolve(graph, fetch_names[i], "fetch");

  TF_SessionRun(session, NULL, inputs, feed_values, (int)n_feeds, outputs, output_values,
                (int)n_fetches, NULL, 0, NULL, status);
  check_status(status, "TF_SessionRun failed");

  FILE *f = fopen(response_path, "wb");
  if (!f) die("cannot open response file %s", response_path);
  put(f, &n_fetches, sizeof n_fetches, response_path);
  for (uint32_t i = 0; i < n_fetches; ++i)
    write_tensor(f, output_values[i], fetch_names[i], response_path);
  if (fclose(f) != 0) die("error writing response file %s", response_path);

  /* Output tensors own their strings (TF_DeleteTensor frees them); fed ones do not. */
  for (uint32_t i = 0; i < n_fetches; ++i) TF_DeleteTensor(output_values[i]);
  for (uint32_t i = 0; i < n_feeds; ++i) delete_fed_tensor(feed_values[i]);
  TF_CloseSession(session, status);
  check_status(status, "TF_CloseSession failed");
  TF_DeleteSession(session, status);
  check_status(status, "TF_DeleteSession failed");
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  for (uint32_t i = 0; i < n_feeds; ++i) free(feed_names[i]);
  for (uint32_t i = 0; i < n_fetches; ++i) free(fetch_names[i]);
  free(feed_names);
  free(feed_values);
  free(fetch_names);
  free(inputs);
  free(outputs);
  free(output_values);
  free(request);
  return 0;
}
