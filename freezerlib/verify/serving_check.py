"""The serving check: a SavedModel just written is loaded by TF Serving's loader and answers.

`check_saved_model` loads the SavedModel with `TF_LoadSessionFromSavedModel`, the C++ loader TF
Serving and C++ clients use (restore from variables/, then the one init op it picks), and runs
every signature once on generated inputs with `TF_SessionRun`. It calls TensorFlow's C API in
this process through ctypes, from the `libtensorflow_cc.so.2` the TensorFlow wheel ships (the
same library the Python package runs on): no compiler, no second process, and a script that has
not imported TensorFlow's Python API (the checkpoint path) pays for mapping the library, not
for `import tensorflow` (benchmarks/serving_check_bench.py measures it). A model on a remote
file system is checked from a local copy.

Inputs are made from the loaded graph's own dtypes and shapes (unknown dimensions 1, the batch
2): zeros, empty strings, one value per row of a sparse or ragged input. Zeros index any
embedding and are an unseen key of most tables, so a lookup runs (an uninitialised table fails
whatever the key). A string input that feeds a tf.Example parser gets serialized Examples with
the features the parser reads (verify.inputs.InputMaker.examples, which needs TensorFlow).
This checks that the model loads and runs; whether it answers as the original is
optimize_from_pb_test.py's job.
"""

import contextlib
import ctypes
import importlib.util
import math
import os
import struct
import sys
import tempfile
import threading
import time

from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.formats import saved_model

_TF_STRING = 7
_TSTRING_SIZE = 24  # sizeof(TF_TString) (tensorflow/tsl/platform/ctstring_internal.h)
_INT_FORMATS = {3: 'i', 9: 'q'}  # int32, int64: what indices and row splits are
_PARSE_OPS = frozenset({'ParseExample', 'ParseExampleV2', 'ParseSingleExample',
                        'ParseSequenceExample', 'ParseSequenceExampleV2'})
BATCH = 2


class _Output(ctypes.Structure):
  _fields_ = [('oper', ctypes.c_void_p), ('index', ctypes.c_int)]


_lock = threading.Lock()
_lib = None


def _library():
  """TensorFlow's C API (libtensorflow_cc.so.2 of the installed wheel), loaded once."""
  global _lib
  with _lock:
    if _lib is not None:
      return _lib
    if lean_tf.tensorflow_loaded():
      tf_dir = os.path.dirname(sys.modules['tensorflow'].__file__)
    else:
      spec = importlib.util.find_spec('tensorflow')
      if spec is None or not spec.submodule_search_locations:
        raise errors.UserError('the serving check needs TensorFlow installed (or pass --nocheck)')
      tf_dir = list(spec.submodule_search_locations)[0]
    with lean_tf._quiet_stderr():  # the library's notices
      # Local (ctypes' default): made global, the libraries' own BoringSSL symbols would take
      # the place of OpenSSL's for any module loaded later (hashlib, imported by TensorFlow's
      # Python API, then crashed). libtensorflow_cc finds libtensorflow_framework by its rpath.
      lib = ctypes.CDLL(os.path.join(tf_dir, 'libtensorflow_cc.so.2'))
    p, i, c_int64_p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)
    for name, res, args in [
        ('TF_NewStatus', p, []), ('TF_DeleteStatus', None, [p]), ('TF_GetCode', i, [p]),
        ('TF_Message', ctypes.c_char_p, [p]),
        ('TF_NewSessionOptions', p, []), ('TF_DeleteSessionOptions', None, [p]),
        ('TF_NewGraph', p, []), ('TF_DeleteGraph', None, [p]),
        ('TF_LoadSessionFromSavedModel', p,
         [p, p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), i, p, p, p]),
        ('TF_CloseSession', None, [p, p]), ('TF_DeleteSession', None, [p, p]),
        ('TF_GraphOperationByName', p, [p, ctypes.c_char_p]),
        ('TF_OperationNumOutputs', i, [p]),
        ('TF_OperationOutputType', i, [_Output]),
        ('TF_GraphGetTensorNumDims', i, [p, _Output, p]),
        ('TF_GraphGetTensorShape', None, [p, _Output, c_int64_p, i, p]),
        ('TF_AllocateTensor', p, [i, c_int64_p, i, ctypes.c_size_t]),
        ('TF_TensorData', p, [p]), ('TF_DeleteTensor', None, [p]),
        ('TF_StringInit', None, [p]),
        ('TF_StringCopy', None, [p, ctypes.c_char_p, ctypes.c_size_t]),
        ('TF_StringDealloc', None, [p]),
        ('TF_SessionRun', None, [p, p, ctypes.POINTER(_Output), ctypes.POINTER(p), i,
                                 ctypes.POINTER(_Output), ctypes.POINTER(p), i, p, i, p, p]),
    ]:
      fn = getattr(lib, name)
      fn.restype, fn.argtypes = res, args
    _lib = lib
    return lib


class ServingCheckFailed(errors.UserError):
  """The SavedModel does not load, or a signature does not run, in TF Serving's loader."""


class _Session:
  """A SavedModel loaded by TF_LoadSessionFromSavedModel."""

  def __init__(self, export_dir, tags):
    self._lib = lib = _library()
    self._status = lib.TF_NewStatus()
    options = lib.TF_NewSessionOptions()
    self.graph = lib.TF_NewGraph()
    tag_array = (ctypes.c_char_p * len(tags))(*[t.encode() for t in tags])
    self.session = lib.TF_LoadSessionFromSavedModel(
        options, None, os.fspath(export_dir).encode(), tag_array, len(tags), self.graph, None,
        self._status)
    lib.TF_DeleteSessionOptions(options)
    if lib.TF_GetCode(self._status) != 0:
      message = self._message()
      self.session = None
      self.close()
      raise ServingCheckFailed('it does not load: %s' % message)

  def _message(self):
    text = (self._lib.TF_Message(self._status) or b'').decode('utf-8', 'replace')
    return ' '.join(text.split())

  def output(self, tensor_name):
    name, index = graphs.tensor_key(tensor_name)
    oper = self._lib.TF_GraphOperationByName(self.graph, name.encode())
    if not oper or index >= self._lib.TF_OperationNumOutputs(oper):
      raise ServingCheckFailed('its graph has no tensor %s' % tensor_name)
    return _Output(oper, index)

  def spec(self, tensor_name):
    """(TF_DataType, dims with -1 for unknown, or None for unknown rank) of a tensor."""
    out = self.output(tensor_name)
    dtype = self._lib.TF_OperationOutputType(out)
    rank = self._lib.TF_GraphGetTensorNumDims(self.graph, out, self._status)
    if rank < 0:
      return dtype, None
    dims = (ctypes.c_int64 * max(rank, 1))()
    self._lib.TF_GraphGetTensorShape(self.graph, out, dims, rank, self._status)
    return dtype, list(dims[:rank])

  def _tensor(self, feed):
    """A TF_Tensor of a _Feed; (tensor, number of strings to free)."""
    lib = self._lib
    dims = (ctypes.c_int64 * max(len(feed.shape), 1))(*feed.shape)
    if feed.dtype == _TF_STRING:
      tensor = lib.TF_AllocateTensor(feed.dtype, dims, len(feed.shape),
                                     _TSTRING_SIZE * len(feed.payload))
      base = lib.TF_TensorData(tensor)
      for k, item in enumerate(feed.payload):
        lib.TF_StringInit(base + k * _TSTRING_SIZE)
        lib.TF_StringCopy(base + k * _TSTRING_SIZE, item, len(item))
      return tensor, len(feed.payload)
    tensor = lib.TF_AllocateTensor(feed.dtype, dims, len(feed.shape), len(feed.payload))
    ctypes.memmove(lib.TF_TensorData(tensor), feed.payload, len(feed.payload))
    return tensor, 0

  def run(self, feeds, fetches):
    """Runs the graph: feeds {tensor name: _Feed}, fetches [tensor name].

    Raises:
      ServingCheckFailed: with TensorFlow's message.
    """
    lib = self._lib
    names = list(feeds)
    fetches = [f for f in dict.fromkeys(fetches) if f not in feeds]
    in_ops = (_Output * max(len(names), 1))(*[self.output(n) for n in names])
    out_ops = (_Output * max(len(fetches), 1))(*[self.output(n) for n in fetches])
    made = [self._tensor(feeds[n]) for n in names]
    in_values = (ctypes.c_void_p * max(len(names), 1))(*[t for t, _ in made])
    out_values = (ctypes.c_void_p * max(len(fetches), 1))()
    try:
      lib.TF_SessionRun(self.session, None, in_ops, in_values, len(names), out_ops, out_values,
                        len(fetches), None, 0, None, self._status)
      if lib.TF_GetCode(self._status) != 0:
        raise ServingCheckFailed(self._message())
    finally:
      for tensor, strings in made:
        base = lib.TF_TensorData(tensor)
        for k in range(strings):
          lib.TF_StringDealloc(base + k * _TSTRING_SIZE)
        lib.TF_DeleteTensor(tensor)
      for k in range(len(fetches)):
        if out_values[k]:
          lib.TF_DeleteTensor(out_values[k])

  def close(self):
    lib = self._lib
    if self.session:
      lib.TF_CloseSession(self.session, self._status)
      lib.TF_DeleteSession(self.session, self._status)
      self.session = None
    if self.graph:
      lib.TF_DeleteGraph(self.graph)
      self.graph = None
    if self._status:
      lib.TF_DeleteStatus(self._status)
      self._status = None


def _has_parser(graph_def):
  return (any(n.op in _PARSE_OPS for n in graph_def.node) or
          any(n.op in _PARSE_OPS for f in graph_def.library.function for n in f.node_def))


class _GraphOnly:
  """What verify.inputs.InputMaker reads of a model, for tf.Example inputs: the graph and its
  signatures; no table keys (the ids drawn are unseen ones)."""

  def __init__(self, graph_def, signatures):
    self.graph_def = graph_def
    self.signatures = signatures

  def table_keys(self, node):
    return lean_tf.numpy.zeros([0], lean_tf.numpy.int64)


class _Feed:
  """One input tensor: TF_DataType, shape, and its bytes (row-major, little-endian) or, for a
  string tensor, the list of its strings. Plain Python: the checkpoint path's check loads
  neither numpy nor TensorFlow's Python API."""

  def __init__(self, dtype, shape, payload):
    self.dtype, self.shape, self.payload = dtype, tuple(shape), payload


def _shape(dims, batch):
  if dims is None:
    return (batch,)
  return tuple(batch if (k == 0 and d < 0) else (d if d >= 0 else 1) for k, d in enumerate(dims))


def _zeros(dtype, shape):
  count = math.prod(shape)
  if dtype == _TF_STRING:
    return _Feed(dtype, shape, [b''] * count)
  return _Feed(dtype, shape, bytes(count * lean_tf.dtype_size(dtype)))


def _integers(dtype, shape, values):
  if dtype not in _INT_FORMATS:
    raise ServingCheckFailed('cannot make an index input of TF_DataType %d' % dtype)
  return _Feed(dtype, shape, struct.pack('<%d%s' % (len(values), _INT_FORMATS[dtype]), *values))


def _feeds(session, signature, examples):
  """{tensor name: _Feed} for one run of `signature`: zeros and empty strings, one value per
  row of a sparse or ragged input, serialized Examples for a parser's input."""
  feeds = {}
  for name in sorted(signature.inputs):
    info = signature.inputs[name]
    encoding = info.WhichOneof('encoding')
    if encoding == 'coo_sparse':
      coo = info.coo_sparse
      dtype, dims = session.spec(coo.indices_tensor_name)
      rank = dims[1] if dims and len(dims) == 2 and dims[1] > 0 else 2
      indices = [k if j == 0 else 0 for k in range(BATCH) for j in range(rank)]
      feeds[coo.indices_tensor_name] = _integers(dtype, (BATCH, rank), indices)
      feeds[coo.values_tensor_name] = _zeros(session.spec(coo.values_tensor_name)[0], (BATCH,))
      feeds[coo.dense_shape_tensor_name] = _integers(
          session.spec(coo.dense_shape_tensor_name)[0], (rank,), [BATCH] + [1] * (rank - 1))
    elif encoding == 'composite_tensor':
      components = [c.name for c in info.composite_tensor.components]
      for split in components[1:]:  # each row holds one value
        feeds[split] = _integers(session.spec(split)[0], (BATCH + 1,), list(range(BATCH + 1)))
      dtype, dims = session.spec(components[0])
      feeds[components[0]] = _zeros(dtype, (BATCH,) + _shape(dims, BATCH)[1:])
    else:
      dtype, dims = session.spec(info.name)
      # Unknown rank: a batch vector. Not the signature's shape, which may be wrong
      # (half_plus_three's declares its serialized tf.Example input a scalar).
      shape = _shape(dims, BATCH)
      found = (examples.trace(info.name)
               if dtype == _TF_STRING and examples is not None else None)
      if found is not None and found.features is not None:
        rng = lean_tf.numpy.random.RandomState(0)
        made = examples.examples(rng, found.features, math.prod(shape))
        feeds[info.name] = _Feed(dtype, shape, [bytes(x) for x in made])
      else:
        feeds[info.name] = _zeros(dtype, shape)
  return feeds


@contextlib.contextmanager
def _local_copy(export_dir):
  """`export_dir` itself when local; else a local copy of it, made through the file layer
  (TensorFlow's C++ loader reads only the file systems compiled into it)."""
  if not files.is_remote(export_dir):
    yield export_dir
    return
  base = export_dir.rstrip('/')
  with tempfile.TemporaryDirectory(prefix='freezer_serving_check_') as tmp:
    for root, _, names in files.walk(base):
      relative = root.rstrip('/')[len(base):].strip('/')
      for name in names:
        dst = os.path.join(tmp, relative, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        files.copy(files.join(root, name), dst)
    yield tmp


def check_saved_model(export_dir, tags=None):
  """Loads `export_dir` with TF Serving's loader and runs each of its signatures once.

  Args:
    export_dir: a complete SavedModel (typically still in its temporary directory); a remote
      one is copied to a local temporary directory first.
    tags: the MetaGraph's tags; None: those of its first MetaGraph (the scripts write one).

  Returns:
    Seconds taken.

  Raises:
    ServingCheckFailed (an errors.UserError): the model does not load, or a signature fails,
      with TensorFlow's message in one line.
  """
  try:
    with _local_copy(export_dir) as local:
      return _check(local, tags)
  except ServingCheckFailed as e:
    raise ServingCheckFailed(
        'the SavedModel written does not serve: TF Serving\'s loader '
        '(TF_LoadSessionFromSavedModel) on generated inputs: %s; nothing was written '
        '(--nocheck skips this check)' % e) from e


def _check(export_dir, tags):
  start = time.perf_counter()
  if tags is None:
    proto = saved_model.read_saved_model_proto(export_dir)
    tags = list(proto.meta_graphs[0].meta_info_def.tags) if proto.meta_graphs else ['serve']
  meta_graph = saved_model.read_meta_graph(export_dir, tags)
  signatures = {k: v for k, v in meta_graph.signature_def.items()
                if k != saved_model.INIT_OP_SIGNATURE_KEY}
  examples = None
  if _has_parser(meta_graph.graph_def):
    from freezerlib.verify import inputs as inputs_lib
    examples = inputs_lib.InputMaker(_GraphOnly(meta_graph.graph_def, signatures), 0)
  session = _Session(export_dir, list(tags))
  try:
    for key in sorted(signatures):
      signature = signatures[key]
      fetches = [t for k in sorted(signature.outputs)
                 for t in graphs.info_tensors(signature.outputs[k])]
      if not fetches:
        continue
      try:
        session.run(_feeds(session, signature, examples), fetches)
      except ServingCheckFailed as e:
        raise ServingCheckFailed('signature %r fails: %s' % (key, e)) from e
  finally:
    session.close()
  return time.perf_counter() - start
