"""Corrupt graphs, in every script that reads one: one line naming the file and the node.

The kinds of corruption TensorFlow's own `cc/saved_model/testdata/fuzz_generated` holds (a Const
without its value, a negative dimension, an attribute of the wrong type) and two more (an input
naming no node, a cycle), made by protobuf edits of a small model, in each form a script reads:
a SavedModel, a frozen GraphDef, a .meta file. Every script exits 1 with one line, writes
nothing and leaves its inputs as they were. In-process through each script's `main`; one
subprocess per script runs the command line itself.
"""

import os
import shutil

import pytest
import tensorflow as tf
from test_bad_input_matrix import run_main

from conftest import assert_one_line_error
from conftest import run_script
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import saved_model_pb2
from freezerlib.formats import frozen_graph

tf1 = tf.compat.v1

# kind -> (the node named, what the line says about it)
KINDS = {
    'const_without_value': ('c', "node 'c' (Const) has no value"),
    'negative_dimension': ('c', "node 'c' (Const) has a negative dimension (-3)"),
    'attribute_of_wrong_type': ('c', "attribute 'dtype' holding a string, where op Const "
                                     "wants a type"),
    'missing_input': ('y', "node 'y' takes input 'no_such_node', which is not a node"),
    'cycle': ('y', "node 'y' is in a cycle (y -> MatMul -> y)"),
}


def corrupt(graph_def, kind):
  """Applies corruption `kind` to the graph of `base` (nodes x, w, MatMul, c, y), in place."""
  nodes = {n.name: n for n in graph_def.node}
  if kind == 'const_without_value':
    del nodes['c'].attr['value']
  elif kind == 'negative_dimension':
    nodes['c'].attr['value'].tensor.tensor_shape.dim.add().size = -3
  elif kind == 'attribute_of_wrong_type':
    nodes['c'].attr['dtype'].s = b'float'  # a string where a type belongs
  elif kind == 'missing_input':
    nodes['y'].input[1] = 'no_such_node'
  elif kind == 'cycle':
    nodes['MatMul'].input.append('^y')  # y needs MatMul, which now waits for y
  else:
    raise KeyError(kind)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  """y = x @ w + c as a SavedModel, its checkpoint and .meta file, and its frozen graph."""
  root = tmp_path_factory.mktemp('corrupt_base')
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None, 2], name='x')
    w = tf1.get_variable('w', initializer=tf.constant([[1.0], [2.0]]))
    y = tf.add(tf.matmul(x, w), tf.constant(0.5, name='c'), name='y')
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      builder = tf1.saved_model.Builder(str(root / 'saved_model'))
      builder.add_meta_graph_and_variables(session, ['serve'], signature_def_map={
          'serving_default': tf1.saved_model.predict_signature_def({'x': x}, {'y': y})})
      builder.save()
      prefix = tf1.train.Saver().save(session, str(root / 'ckpt' / 'model.ckpt'))
  frozen = str(root / 'frozen.pb')
  freeze.graph_from_saved_model(str(root / 'saved_model'), frozen)
  return {'saved_model': str(root / 'saved_model'), 'checkpoint': prefix,
          'meta': prefix + '.meta', 'frozen': frozen}


def _corrupt_saved_model(base, kind, tmp_path):
  export_dir = str(tmp_path / 'corrupt_model')
  shutil.copytree(base['saved_model'], export_dir)
  path = os.path.join(export_dir, 'saved_model.pb')
  proto = saved_model_pb2.SavedModel()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  corrupt(proto.meta_graphs[0].graph_def, kind)
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  return export_dir, path


def _corrupt_file(source, proto, kind, path):
  with open(source, 'rb') as f:
    proto.ParseFromString(f.read())
  corrupt(proto.graph_def if hasattr(proto, 'graph_def') else proto, kind)
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  return path


def _case(form, kind, base, tmp_path):
  """(script, args, the corrupt input, the file the line names, the output not to appear)."""
  out_pb, out_dir = str(tmp_path / 'out.pb'), str(tmp_path / 'out')
  if form in ('freezer', 'optimize_from_ckpt', 'optimize_from_pb_test-reference'):
    corrupt_dir, named = _corrupt_saved_model(base, kind, tmp_path)
    if form == 'freezer':
      return 'freezer', ['--saved_model_dir=' + corrupt_dir, '--output_graph=' + out_pb], \
          corrupt_dir, named, out_pb
    if form == 'optimize_from_ckpt':
      return 'optimize_from_ckpt', ['--saved_model_dir=' + corrupt_dir,
                                    '--checkpoint=' + base['checkpoint'],
                                    '--output_saved_model_dir=' + out_dir], \
          corrupt_dir, named, out_dir
    return 'optimize_from_pb_test', ['--graph=' + base['frozen'],
                                     '--reference_saved_model_dir=' + corrupt_dir], \
        corrupt_dir, named, None
  if form == 'optimize_from_ckpt-meta':
    meta = _corrupt_file(base['meta'], meta_graph_pb2.MetaGraphDef(), kind,
                         str(tmp_path / 'corrupt.meta'))
    return 'optimize_from_ckpt', ['--meta_graph=' + meta, '--inputs=x:0', '--outputs=y:0',
                                  '--checkpoint=' + base['checkpoint'],
                                  '--output_saved_model_dir=' + out_dir], meta, meta, out_dir
  graph = _corrupt_file(base['frozen'], graph_pb2.GraphDef(), kind, str(tmp_path / 'corrupt.pb'))
  if form == 'optimize_from_pb':
    return 'optimize_from_pb', ['--input_graph=' + graph, '--output_saved_model_dir=' + out_dir,
                                '--output_graph=' + out_pb], graph, graph, out_dir
  assert form == 'optimize_from_pb_test-graph'
  return 'optimize_from_pb_test', ['--graph=' + graph,
                                   '--reference_saved_model_dir=' + base['saved_model']], \
      graph, graph, None


FORMS = ['freezer', 'optimize_from_pb', 'optimize_from_pb_test-graph',
         'optimize_from_pb_test-reference', 'optimize_from_ckpt', 'optimize_from_ckpt-meta']


def _check_nothing_written(tmp_path, before, output):
  if output:
    assert not os.path.exists(output)
    assert not os.path.exists(frozen_graph.checkpoint_dir(output))
  assert sorted(os.listdir(tmp_path)) == before  # no temporary debris either


@pytest.mark.parametrize('kind', sorted(KINDS))
@pytest.mark.parametrize('form', FORMS)
def test_corrupt_graph_is_one_line(form, kind, base, tmp_path, capsys):
  script, args, corrupt_input, named, output = _case(form, kind, base, tmp_path)
  digest, before = tree_digest(corrupt_input), sorted(os.listdir(tmp_path))
  code, err = run_main(script, args, capsys)
  lines = [l for l in err.splitlines() if l.strip()]
  assert code == 1, (code, err)
  assert len(lines) == 1 and 'Traceback' not in err, lines
  assert lines[0].startswith('%s.py: error: %s is corrupt: ' % (script, named)), lines[0]
  assert KINDS[kind][1] in lines[0], lines[0]
  _check_nothing_written(tmp_path, before, output)
  assert tree_digest(corrupt_input) == digest


SUBPROCESS = [('freezer', 'cycle'), ('optimize_from_pb', 'const_without_value'),
              ('optimize_from_pb_test-graph', 'attribute_of_wrong_type'),
              ('optimize_from_ckpt', 'negative_dimension')]


@pytest.mark.parametrize('form,kind', SUBPROCESS, ids=['%s-%s' % c for c in SUBPROCESS])
def test_corrupt_graph_command_line(form, kind, base, tmp_path):
  script, args, corrupt_input, named, output = _case(form, kind, base, tmp_path)
  digest, before = tree_digest(corrupt_input), sorted(os.listdir(tmp_path))
  proc = run_script(script + '.py', *args)
  assert_one_line_error(proc, script + '.py', named + ' is corrupt', KINDS[kind][1])
  _check_nothing_written(tmp_path, before, output)
  assert tree_digest(corrupt_input) == digest


def test_corrupt_function_of_a_tf2_saved_model(tmp_path, capsys):
  """TF2 keeps the model in library functions: a Const there without its value."""

  class Module(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(self, x):
      return {'y': x * 3.0}

  module = Module()
  export_dir = str(tmp_path / 'tf2')
  tf.saved_model.save(module, export_dir, signatures={'serving_default': module.serve})
  path = os.path.join(export_dir, 'saved_model.pb')
  proto = saved_model_pb2.SavedModel()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  function = next(f for f in proto.meta_graphs[0].graph_def.library.function
                  if any(n.op == 'Const' for n in f.node_def))
  const = next(n for n in function.node_def if n.op == 'Const')
  del const.attr['value']
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  code, err = run_main('freezer', ['--saved_model_dir=' + export_dir,
                                   '--output_graph=%s/out.pb' % tmp_path], capsys)
  assert code == 1 and len(err.strip().splitlines()) == 1, err
  assert ('%s is corrupt: function %s: node %r (Const) has no value'
          % (path, function.signature.name, const.name)) in err
  assert not (tmp_path / 'out.pb').exists()
