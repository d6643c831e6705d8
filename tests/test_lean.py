"""lean_tf and fileio: what the checkpoint path does without TensorFlow equals what TensorFlow does."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from conftest import REPO
from conftest import meta_graph_of
from conftest import tree_digest
from freezerlib.export import from_checkpoint
from freezerlib.transforms import placeholders

tf1 = tf.compat.v1


def _fresh_python(code, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-c', code] + [str(a) for a in args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


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
