"""lean_tf and fileio: what the checkpoint path does without TensorFlow equals what TensorFlow does.

These run a fresh interpreter (which modules a script loads, and in which order); the unit
tests of core/lean_tf, core/files and core/graphs are in tests/freezerlib/core.
"""

import os
import subprocess
import sys

from conftest import REPO
from conftest import tree_digest
from freezerlib.export import from_checkpoint
import real_models


def _fresh_python(code, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-c', code] + [str(a) for a in args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


def _export_in_fresh_process(structure, ckpt, out):
  """Runs optimize_from_ckpt.py in a new Python; returns the heavy modules it loaded."""
  # The script ends its own process (utils.run_cli): what it loaded is printed at exit. Besides
  # TensorFlow and numpy, what the crc32c package's __init__ imports (13.7 ms): core/crc32c
  # loads its C extension alone.
  code = ('import atexit, runpy, sys\n'
          'atexit.register(lambda: print("LOADED", [m for m in sys.modules if m in (\n'
          '    "numpy", "tensorflow.python.framework.ops", "tensorflow.python.pywrap_tensorflow",\n'
          '    "tensorflow.python.client.session", "importlib.metadata", "argparse",\n'
          '    "pyarrow", "freezerlib.core.object_store")]))\n'
          'sys.argv = ["optimize_from_ckpt.py"] + sys.argv[1:]\n'
          'runpy.run_path("optimize_from_ckpt.py", run_name="__main__")\n')
  proc = _fresh_python(code, '--saved_model_dir=%s' % structure, '--checkpoint=%s' % ckpt,
                       '--output_saved_model_dir=%s' % out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.split('LOADED', 1)[1].strip()


def test_reader_inputs_load_tensorflow_for_shape_inference(tiny_model, tmp_path):
  """A training SavedModel as structure (inputs at IteratorGetNext) needs shape inference for
  its placeholders: TensorFlow is loaded then, and the result is the same."""
  ckpt = tiny_model['checkpoint'].rsplit('/', 1)[0]
  loaded = _export_in_fresh_process(tiny_model['saved_model'], ckpt, tmp_path / 'lean')
  assert 'tensorflow.python.framework.ops' in loaded
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt, output_dir=str(tmp_path / 'heavy'),
                           saved_model_dir=tiny_model['saved_model'])
  assert tree_digest(tmp_path / 'lean') == tree_digest(tmp_path / 'heavy')


def test_sparse_placeholder_structure_exports_without_tensorflow(tmp_path):
  """A structure whose sparse input is already placeholders (tf.compat.v1.sparse_placeholder,
  its dense shape a PlaceholderWithDefault) and whose sparse output shares them: still no
  TensorFlow, and the same bytes as the in-process export."""
  model = real_models.sparse_weights(str(tmp_path / 'model'))
  ckpt = model['checkpoint'].rsplit('/', 1)[0]
  assert _export_in_fresh_process(model['saved_model'], ckpt, tmp_path / 'lean') == '[]'
  from_checkpoint.saved_model_from_checkpoint(checkpoint=ckpt, output_dir=str(tmp_path / 'heavy'),
                                              saved_model_dir=model['saved_model'])
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
