"""TensorFlow's protos without `import tensorflow`, and TensorFlow itself on first use.

`import tensorflow` runs every module of its Python API: seconds and hundreds of MiB before any
work (benchmarks/README.md, start-up figures). The checkpoint path (optimize_from_ckpt.py) needs
none of that: it reads and writes protos (SavedModel, GraphDef, checkpoint index) and copies
bytes. TensorFlow's protos are plain generated modules under `tensorflow.core`, but importing
any of them the usual way runs `tensorflow/__init__.py` first. `load` imports them with an
empty stand-in for the `tensorflow` package that exists only while the import runs, so the
generated modules load alone, in a small fraction of that. They are the same module objects a later
`import tensorflow` uses.

Where TensorFlow itself is needed (shape inference, sessions), `tensorflow` and `tf1` here are
proxies that import it on first use, so a code path pays for it only when it needs it.

Importing this module first also keeps TensorFlow's start-up chatter off stderr: some builds
log from C++ while loading (oneDNN's notice, absl's "All log messages before
absl::InitializeLog()") whatever TF_CPP_MIN_LOG_LEVEL says, and freezer's scripts promise one
line on stderr for an error. While the `tensorflow` package loads, stderr goes to a temporary
file; afterwards every line but those notices is written back.
"""

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
import threading
import types

# Before TensorFlow loads: its C++ start-up chatter would drown the one-line errors.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

_lock = threading.Lock()
_on_load = []

# Start-up notices TensorFlow's C++ code logs while loading, even with TF_CPP_MIN_LOG_LEVEL=2.
_CHATTER = re.compile(
    r'^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to '
    r'STDERR|I\d{4} [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\] .*|To enable the following '
    r'instructions: .*)$')


@contextlib.contextmanager
def _quiet_stderr():
  """Sends file descriptor 2 to a temporary file; writes back all but TensorFlow's notices."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):
    yield
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = [l for l in capture.read().decode('utf-8', 'replace').splitlines(True)
              if not _CHATTER.match(l.rstrip('\n'))]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with _quiet_stderr():
      self._loader.exec_module(module)
    # However TensorFlow got imported (`import tensorflow` anywhere), quiet it now.
    _run_hooks(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Wraps the loading of the `tensorflow` package in _quiet_stderr."""

  def find_spec(self, name, path, target=None):
    if name != 'tensorflow':
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, 'find_spec'):
        continue
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _QuietLoader(spec.loader)
        return spec
    return None


if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
  sys.meta_path.insert(0, _QuietTensorFlowFinder())


def load(name):
  """Imports module `name` of the tensorflow package without running tensorflow/__init__.py
  (unless TensorFlow is loaded already, in which case this is a plain import)."""
  return _load([name])[0]


def _load(names):
  """`load` of each of `names`, under one stand-in."""
  if all(name in sys.modules for name in names):
    return [sys.modules[name] for name in names]
  with _lock:
    if 'tensorflow' in sys.modules:
      return [importlib.import_module(name) for name in names]
    spec = importlib.util.find_spec('tensorflow')
    if spec is None or not spec.submodule_search_locations:
      raise ImportError('TensorFlow is not installed')
    stand_in = types.ModuleType('tensorflow')
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules['tensorflow'] = stand_in
    try:
      # Generated proto modules import only protobuf, which logs nothing; anything else may
      # load TensorFlow's C++ libraries, whose chatter is kept off stderr.
      with (contextlib.nullcontext() if all(n.endswith('_pb2') for n in names)
            else _quiet_stderr()):
        return [importlib.import_module(name) for name in names]
    finally:
      # The real package, imported later, runs its __init__ and finds these modules loaded.
      if sys.modules.get('tensorflow') is stand_in:
        del sys.modules['tensorflow']


def tensorflow_loaded():
  """Whether the whole of TensorFlow (not only protos loaded by `load`) has been imported."""
  return hasattr(sys.modules.get('tensorflow'), 'compat')


def after_tensorflow_loads(fn):
  """Calls `fn(tf)` once TensorFlow is imported through `tensorflow` here, or at the next call
  of this function after it was imported some other way (now, if it already is)."""
  _on_load.append(fn)
  if tensorflow_loaded():
    _run_hooks(sys.modules['tensorflow'])


def _run_hooks(tf):
  while _on_load:
    _on_load.pop(0)(tf)


def run_pending_hooks():
  """Runs the after_tensorflow_loads callbacks still waiting, if TensorFlow was imported some
  other way than through `tensorflow` here (a plain `import tensorflow`)."""
  if tensorflow_loaded():
    _run_hooks(sys.modules['tensorflow'])


def _bind_subpackages(tf):
  # A module loaded by `load` was bound as an attribute of the stand-in, not of the real
  # package (the import system binds a submodule to its parent only when it loads it).
  for name in ('core', 'python'):
    if not hasattr(tf, name) and 'tensorflow.' + name in sys.modules:
      setattr(tf, name, sys.modules['tensorflow.' + name])


class _Lazy(types.ModuleType):
  """A module that is imported on first attribute access."""

  def __init__(self, name, resolve):
    super().__init__(name)
    self._resolve = resolve
    self._module = None

  def __getattr__(self, attr):
    if attr.startswith('__'):
      raise AttributeError(attr)
    if self._module is None:
      self._module = self._resolve()
    return getattr(self._module, attr)


def _import_tensorflow():
  tf = importlib.import_module('tensorflow')
  _run_hooks(tf)
  return tf


tensorflow = _Lazy('tensorflow', _import_tensorflow)


class _RegisteredOpDefs:
  """TensorFlow's op registry as a read-only mapping (op name -> OpDef); imports TensorFlow
  on first use."""

  def __init__(self):
    self._cache = {}

  def get(self, name, default=None):
    if name not in self._cache:
      _import_tensorflow()
      from tensorflow.python.framework import op_def_registry
      self._cache[name] = op_def_registry.get(name)
    op_def = self._cache[name]
    return default if op_def is None else op_def


def registered_op_defs():
  """The OpDefs of the ops this TensorFlow knows, for checking a GraphDef without an op list of
  its own (a frozen graph); TensorFlow is imported on first lookup."""
  return _RegisteredOpDefs()
tf1 = _Lazy('tensorflow.compat.v1', lambda: _import_tensorflow().compat.v1)
numpy = _Lazy('numpy', lambda: importlib.import_module('numpy'))

def _quiet_python_side(tf):
  """Silences TensorFlow's Python-side noise once it is loaded."""
  from tensorflow.python.util import deprecation
  # tf.compat.v1 is this toolkit's subject, not a migration target: its deprecation notices
  # are noise.
  deprecation._PRINT_DEPRECATION_WARNINGS = False
  # TensorFlow's Python logger has a handler of its own besides absl's, so each of its lines
  # would print twice; its INFO chatter (builder paths of temporary directories) is noise here.
  tf.get_logger().handlers = []
  tf.get_logger().setLevel('WARNING')


after_tensorflow_loads(_bind_subpackages)
after_tensorflow_loads(_quiet_python_side)

(types_pb2, tensor_pb2, tensor_shape_pb2, node_def_pb2, graph_pb2, meta_graph_pb2, saved_model_pb2,
 saver_pb2, tensor_bundle_pb2) = _load([
     'tensorflow.core.framework.' + name for name in (
         'types_pb2', 'tensor_pb2', 'tensor_shape_pb2', 'node_def_pb2', 'graph_pb2')] + [
     'tensorflow.core.protobuf.' + name for name in (
         'meta_graph_pb2', 'saved_model_pb2', 'saver_pb2', 'tensor_bundle_pb2')])

NodeDef = node_def_pb2.NodeDef

# TensorFlow's own names (tf.DType.name) for the DataType enum values.
_NAMES = {
    'DT_FLOAT': 'float32', 'DT_DOUBLE': 'float64', 'DT_INT32': 'int32', 'DT_UINT8': 'uint8',
    'DT_INT16': 'int16', 'DT_INT8': 'int8', 'DT_STRING': 'string', 'DT_COMPLEX64': 'complex64',
    'DT_INT64': 'int64', 'DT_BOOL': 'bool', 'DT_QINT8': 'qint8', 'DT_QUINT8': 'quint8',
    'DT_QINT32': 'qint32', 'DT_BFLOAT16': 'bfloat16', 'DT_QINT16': 'qint16',
    'DT_QUINT16': 'quint16', 'DT_UINT16': 'uint16', 'DT_COMPLEX128': 'complex128',
    'DT_HALF': 'float16', 'DT_RESOURCE': 'resource', 'DT_VARIANT': 'variant',
    'DT_UINT32': 'uint32', 'DT_UINT64': 'uint64',
}


class DType:
  """The part of tf.DType the checkpoint path uses, for when TensorFlow is not loaded."""

  def __init__(self, enum):
    self._enum = int(enum)

  @property
  def as_datatype_enum(self):
    return self._enum

  @property
  def base_dtype(self):
    return DType(self._enum - 100) if self._enum > 100 else self

  @property
  def name(self):
    base = self.base_dtype.as_datatype_enum
    try:
      label = types_pb2.DataType.Name(base)
    except ValueError:
      return 'dtype %d' % self._enum
    name = _NAMES.get(label, label[3:].lower())
    return name + '_ref' if self._enum > 100 else name

  def __eq__(self, other):
    enum = getattr(other, 'as_datatype_enum', other)
    return isinstance(enum, int) and enum == self._enum

  def __hash__(self):
    return hash(self._enum)

  def __repr__(self):
    return 'tf.%s' % self.name


def as_dtype(enum):
  """tf.as_dtype(enum) when TensorFlow is loaded, else a DType with the same name and enum.

  An enum TensorFlow does not know (a corrupt file's dtype -7) is a DType named 'dtype -7',
  TensorFlow loaded or not: messages about a corrupt file name it, and never raise."""
  if tensorflow_loaded():
    try:
      return sys.modules['tensorflow'].as_dtype(enum)
    except TypeError:
      pass
  return DType(enum)


def string_values(tensor):
  """The values of a DT_STRING TensorProto, flattened, as str (one value repeated to fill the
  shape, as TensorFlow reads a constant given one value)."""
  if tensor.dtype != types_pb2.DT_STRING:
    raise ValueError('not a string tensor')
  values = [v.decode('utf-8') for v in tensor.string_val]
  count = 1
  for dim in tensor.tensor_shape.dim:
    count *= dim.size
  if len(values) == count:
    return values
  if len(values) == 1 or not values:
    return (values or [''])[:1] * count
  raise ValueError('a string tensor of %d elements holds %d values' % (count, len(values)))


def string_tensor(values):
  """A DT_STRING TensorProto holding `values` (a list: shape [n]; a str: a scalar)."""
  proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
  proto.tensor_shape.SetInParent()
  if isinstance(values, str):
    proto.string_val.append(values.encode('utf-8'))
    return proto
  proto.tensor_shape.dim.add().size = len(values)
  proto.string_val.extend(v.encode('utf-8') for v in values)
  return proto


# Bytes per element of the numeric dtypes (DataType enum -> bytes).
ITEM_BYTES = _ITEM_BYTES = {
    types_pb2.DT_FLOAT: 4, types_pb2.DT_DOUBLE: 8, types_pb2.DT_INT32: 4, types_pb2.DT_UINT8: 1,
    types_pb2.DT_INT16: 2, types_pb2.DT_INT8: 1, types_pb2.DT_COMPLEX64: 8,
    types_pb2.DT_INT64: 8, types_pb2.DT_BOOL: 1, types_pb2.DT_QINT8: 1, types_pb2.DT_QUINT8: 1,
    types_pb2.DT_QINT32: 4, types_pb2.DT_BFLOAT16: 2, types_pb2.DT_QINT16: 2,
    types_pb2.DT_QUINT16: 2, types_pb2.DT_UINT16: 2, types_pb2.DT_COMPLEX128: 16,
    types_pb2.DT_HALF: 2, types_pb2.DT_UINT32: 4, types_pb2.DT_UINT64: 8,
}


def dtype_size(enum):
  """Bytes per element of a numeric DataType enum (refs as their base type)."""
  enum = int(enum)
  return _ITEM_BYTES.get(enum - 100 if enum > 100 else enum, 8)


def tensor_nbytes(tensor):
  """Bytes of a TensorProto's value once in memory: elements times their size (a string
  tensor: its strings' bytes), read from its shape without touching its content.

  Not ByteSize() or len(tensor_content): upb encodes the message for the one and copies the
  bytes for the other, in time proportional to the tensor's size.
  """
  if tensor.dtype == types_pb2.DT_STRING:
    return sum(len(v) for v in tensor.string_val)
  count = 1
  for dim in tensor.tensor_shape.dim:
    count *= max(dim.size, 0)
  return count * _ITEM_BYTES.get(tensor.dtype, 8)
