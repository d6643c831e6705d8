"""lean_tf and fileio: what the checkpoint path does without TensorFlow equals what TensorFlow does."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from conftest import meta_graph_of
from conftest import tree_digest
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.export import from_checkpoint
from freezerlib.transforms import placeholders

tf1 = tf.compat.v1


def _fresh_python(code, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-c', code] + [str(a) for a in args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def test_extract_sub_graph_equals_tensorflows(tiny_model):
  graph_def = meta_graph_of(tiny_model['saved_model']).graph_def
  for dest in (['probability'], ['save/restore_all'], ['user_stats_lookup/LookupTableFindV2',
                                                        'Adam']):
    dest = [d for d in dest if any(n.name == d for n in graph_def.node)]
    assert dest
    ours = graphs.extract_sub_graph(graph_def, dest)
    theirs = tf1.graph_util.extract_sub_graph(graph_def, dest)
    assert ours == theirs
  with pytest.raises(KeyError, match='nope'):
    graphs.extract_sub_graph(graph_def, ['nope'])


def test_output_dtypes_equal_shape_inference(tiny_model):
  """Every output of every node: the OpDef reading gives TensorFlow's dtype (or says unknown)."""
  meta_graph = meta_graph_of(tiny_model['saved_model'])
  op_defs = {o.name: o for o in meta_graph.meta_info_def.stripped_op_list.op}
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(meta_graph.graph_def, name='')
  checked = 0
  for node in meta_graph.graph_def.node:
    for index, tensor in enumerate(graph.get_operation_by_name(node.name).outputs):
      dtype = placeholders.output_dtype(node, index, op_defs)
      assert dtype is not None, (node.name, node.op)
      assert dtype == tensor.dtype.base_dtype.as_datatype_enum, (node.name, index)
      checked += 1
    assert placeholders.output_dtype(node, 99, op_defs) is None
  assert checked > 500


@pytest.mark.parametrize('producer,attr,expected', [
    (21, 'shape {}', None), (22, 'shape {}', []), (21, 'shape { dim { size: 3 } }', [3]),
    (27, 'shape { unknown_rank: true }', None), (27, None, None)])
def test_placeholder_shape_follows_the_producer_rule(producer, attr, expected):
  text = 'node { name: "p" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } '
  if attr:
    text += 'attr { key: "shape" value { %s } } ' % attr
  text += '} versions { producer: %d }' % producer
  graph_def = tf1.GraphDef()
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  text_format.Parse(text, graph_def)
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  theirs = graph.get_tensor_by_name('p:0').shape
  ours = tf.TensorShape(placeholders.placeholder_shape(graph_def.node[0], producer))
  assert (ours.as_list() if ours.rank is not None else None) == expected
  assert (ours.rank is None and theirs.rank is None) or ours.as_list() == theirs.as_list()


def test_strings_and_dtypes_equal_tensorflows():
  for values in (['a', 'bé', ''], 'model'):
    proto = lean_tf.string_tensor(values)
    assert proto == tf.make_tensor_proto(values, dtype=tf.string)
    expected = np.ravel(tf.make_ndarray(proto))
    assert lean_tf.string_values(proto) == [v.decode('utf-8') for v in expected]
  broadcast = tf.make_tensor_proto('x', dtype=tf.string, shape=[3])
  assert lean_tf.string_values(broadcast) == ['x', 'x', 'x']
  for enum in [e for e in lean_tf.types_pb2.DataType.values() if 0 < e < 100]:
    try:
      real = tf.as_dtype(enum)
    except TypeError:
      continue
    ours = lean_tf.DType(enum)
    assert ours.name == real.name and ours == real and ours.as_datatype_enum == enum
    assert lean_tf.DType(enum + 100).name == tf.as_dtype(enum + 100).name


def test_copy_range_in_kernel_and_through_memory(tmp_path):
  src = tmp_path / 'src'
  data = os.urandom(3 << 20)
  src.write_bytes(data)
  with open(src, 'rb') as s, open(tmp_path / 'dst', 'wb') as d:
    d.write(b'head')
    files.copy_range(s, 5, d, 2 << 20)
    d.write(b'tail')
  assert (tmp_path / 'dst').read_bytes() == b'head' + data[5:5 + (2 << 20)] + b'tail'
  out, counted = io.BytesIO(), []  # no file descriptor: copied through memory
  with open(src, 'rb') as s:
    files.copy_range(s, 7, out, 1 << 20, chunk_bytes=100000, progress=counted.append)
    assert out.getvalue() == data[7:7 + (1 << 20)] and sum(counted) == 1 << 20
    with pytest.raises(EOFError):
      files.copy_range(s, len(data) - 10, io.BytesIO(), 20)


@pytest.mark.parametrize('workers', [1, 2, 3])
@pytest.mark.parametrize('inspected', [False, True])
def test_copy_ranges_puts_each_range_in_its_place(tmp_path, workers, inspected):
  sources = [tmp_path / 'a', tmp_path / 'b']
  data = [os.urandom(3 << 20), os.urandom(100000)]
  for path, content in zip(sources, data):
    path.write_bytes(content)
  ranges = [(0, 5, 2 << 20), (1, 7, 5000), (0, (2 << 20) + 5, 1000), (1, 0, 0), (1, 99000, 1000)]
  jobs, seen, offset, expected = [], {}, 0, b''
  for k, (source, start, length) in enumerate(ranges):
    inspect = (lambda piece, k=k: seen.setdefault(k, bytearray()).extend(piece)) if inspected \
        else None
    jobs.append((str(sources[source]), start, length, offset, inspect))
    expected += data[source][start:start + length]
    offset += length
  counted = []
  with open(tmp_path / 'out', 'wb') as out:
    files.copy_ranges(jobs, out, piece_bytes=65536, workers=workers, progress=counted.append)
    assert out.tell() == len(expected)
  assert (tmp_path / 'out').read_bytes() == expected and sum(counted) == len(expected)
  if inspected:
    assert {k: bytes(v) for k, v in seen.items()} == {
        k: data[s][a:a + n] for k, (s, a, n) in enumerate(ranges) if n}
  with open(tmp_path / 'out', 'wb') as out, pytest.raises(EOFError, match='bytes short'):
    files.copy_ranges([(str(sources[1]), 99990, 20, 0, None)] + jobs, out, workers=workers)


def test_remote_paths_go_through_tensorflows_file_systems():
  root = 'ram://fileio_test'
  files.makedirs(root + '/a')
  with files.open_file(root + '/a/f', 'wb') as f:
    f.write(b'12345')
  assert files.exists(root + '/a/f') and files.isdir(root + '/a')
  assert files.size(root + '/a/f') == 5 and tf.io.gfile.GFile(root + '/a/f', 'rb').read() == b'12345'
  with files.open_file(root + '/a/f', 'rb') as f:
    out = io.BytesIO()
    files.copy_range(f, 1, out, 3)
    assert out.getvalue() == b'234'
  with pytest.raises(FileNotFoundError):
    files.open_file(root + '/missing', 'rb')
  files.rmtree(root)
  assert not files.exists(root + '/a/f')


def _export_in_fresh_process(structure, ckpt, out):
  """Runs optimize_from_ckpt.py in a new Python; returns the heavy modules it loaded."""
  code = ('import runpy, sys\n'
          'sys.argv = ["optimize_from_ckpt.py"] + sys.argv[1:]\n'
          'try:\n'
          '  runpy.run_path("optimize_from_ckpt.py", run_name="__main__")\n'
          'except SystemExit as e:\n'
          '  assert not e.code, e.code\n'
          'print("LOADED", [m for m in sys.modules if m in ("numpy", "tensorflow.python.framework.ops",\n'
          '      "tensorflow.python.pywrap_tensorflow", "tensorflow.python.client.session")])\n')
  proc = _fresh_python(code, '--saved_model_dir=%s' % structure, '--checkpoint=%s' % ckpt,
                       '--output_saved_model_dir=%s' % out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.split('LOADED', 1)[1].strip()


def test_fake_graph_export_runs_without_tensorflow(cluster_model, fake_graph, tmp_path):
  """The issue's case (a fake inference graph, whose inputs are placeholders): the script
  loads neither TensorFlow's Python API nor its runtime, nor numpy, and writes byte for byte
  what the in-process export (TensorFlow loaded) writes."""
  ckpt = cluster_model['checkpoint'].rsplit('/', 1)[0]
  assert _export_in_fresh_process(fake_graph, ckpt, tmp_path / 'lean') == '[]'
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt, output_dir=str(tmp_path / 'heavy'),
                           saved_model_dir=fake_graph)
  assert tree_digest(tmp_path / 'lean') == tree_digest(tmp_path / 'heavy')


def test_reader_inputs_load_tensorflow_for_shape_inference(tiny_model, tmp_path):
  """A training SavedModel as structure (inputs at IteratorGetNext) needs shape inference for
  its placeholders: TensorFlow is loaded then, and the result is the same."""
  ckpt = tiny_model['checkpoint'].rsplit('/', 1)[0]
  loaded = _export_in_fresh_process(tiny_model['saved_model'], ckpt, tmp_path / 'lean')
  assert 'tensorflow.python.framework.ops' in loaded
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt, output_dir=str(tmp_path / 'heavy'),
                           saved_model_dir=tiny_model['saved_model'])
  assert tree_digest(tmp_path / 'lean') == tree_digest(tmp_path / 'heavy')


def test_tensorflow_loads_after_the_lean_modules():
  code = ('from freezerlib.core import lean_tf, files\n'
          'from freezerlib.formats import checkpoint_index\n'
          'files.exists("ram://x")\n'
          'import tensorflow as tf\n'
          'lean_tf.after_tensorflow_loads(lambda tf: None)\n'
          'assert tf.core.framework.graph_pb2.GraphDef is lean_tf.graph_pb2.GraphDef\n'
          'assert lean_tf.as_dtype(1) is tf.float32\n'
          'print(int(tf.constant(2) + 1), tf.io.gfile.exists("/"))\n')
  proc = _fresh_python(code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['3', 'True']
  # TensorFlow's start-up notices are kept off stderr.
  assert 'absl::InitializeLog' not in proc.stderr and 'oneDNN' not in proc.stderr, proc.stderr


def test_tensor_nbytes_is_the_values_size():
  for value, dtype in ((np.arange(12, dtype=np.float32).reshape(3, 4), tf.float32),
                       (np.arange(5, dtype=np.int64), tf.int64), (np.ones(7, np.bool_), tf.bool),
                       (np.float16(2.5), tf.float16), (np.array([b'ab', b'cde']), tf.string)):
    proto = tf.make_tensor_proto(value, dtype=dtype)
    expected = (sum(len(v) for v in value) if dtype == tf.string
                else tf.make_ndarray(proto).nbytes)
    assert lean_tf.tensor_nbytes(proto) == expected, (value, dtype)


def test_reachable_names_what_extract_sub_graph_keeps(tiny_model):
  graph_def = meta_graph_of(tiny_model['saved_model']).graph_def
  dest = ['probability', 'save/restore_all']
  assert graphs.reachable(graph_def, dest) == {
      n.name for n in tf1.graph_util.extract_sub_graph(graph_def, dest).node}
