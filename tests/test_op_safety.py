"""Untrusted models: file, Python and network ops stop the run where they would run."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error
from conftest import meta_graph_of
from conftest import run_script
from conftest import save_predict_model
from freezerlib import freeze
from freezerlib.analysis import unsafe_ops
from freezerlib.core import errors
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import saved_model
from freezerlib.verify import loaders

tf1 = tf.compat.v1


def _save(export_dir, build, main_op=None):
  """A TF1 SavedModel: x -> y (built by `build(x)`), with an optional main op."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    w = tf1.get_variable('w', initializer=tf.constant(2.0))
    y = build(x) * w
    init = main_op() if main_op else None
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      builder = tf1.saved_model.Builder(str(export_dir))
      builder.add_meta_graph_and_variables(
          session, ['serve'], main_op=init, signature_def_map={
              'serving_default': tf1.saved_model.predict_signature_def({'x': x}, {'y': y})})
      builder.save()
  return str(export_dir)


def test_file_read_in_a_signature_is_refused_unless_allowed(tmp_path):
  secret = tmp_path / 'secret.txt'
  secret.write_text('42')
  model = _save(tmp_path / 'm', lambda x: x + tf.strings.to_number(
      tf.io.read_file(tf.constant(str(secret)))))
  out = tmp_path / 'f.pb'
  with pytest.raises(errors.UserError, match=r'ReadFile.*--allow_ops=ReadFile'):
    freeze.graph_from_saved_model(model, str(out))
  assert not out.exists()
  proc = run_script('freezer.py', '--saved_model_dir=%s' % model, '--output_graph=%s' % out)
  assert_one_line_error(proc, 'freezer.py', model, 'ReadFile')
  freeze.graph_from_saved_model(model, str(out), allow_ops=['ReadFile'])
  got = loaders.load_frozen_graph(str(out)).run('serving_default',
                                                   {'x': np.array([1.0], np.float32)})
  assert got['y'] == pytest.approx([86.0])


def test_file_write_in_the_main_op_is_refused_before_loading(tmp_path):
  target = tmp_path / 'pwned.txt'
  model = _save(tmp_path / 'm', lambda x: x + 1.0,
                main_op=lambda: tf.io.write_file(str(target), 'pwned'))
  assert not target.exists()  # the builder did not run it; loading would
  with pytest.raises(errors.UserError, match='WriteFile'):
    freeze.graph_from_saved_model(model, str(tmp_path / 'f.pb'))
  with pytest.raises(errors.UserError, match='WriteFile'):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=model + '/variables/variables',
                             output_dir=str(tmp_path / 'ck'), saved_model_dir=model)
  assert not target.exists()  # refused before anything ran
  assert not (tmp_path / 'f.pb').exists() and not (tmp_path / 'ck').exists()
  # What the refusal prevented: TensorFlow's own loader runs the main op.
  with tf1.Session(graph=tf.Graph()) as session:
    tf1.saved_model.loader.load(session, ['serve'], model)
  assert target.read_text() == 'pwned'


def test_python_op_outside_the_signatures_is_removed_and_listed(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    y = tf.identity(x * 3.0, name='y')
    tf1.py_func(lambda a: a, [x], tf.float32, name='debug_tap')  # not needed by y
    with tf1.Session(graph=graph) as session:
      save_predict_model(session, str(tmp_path / 'm'), {'x': x}, {'y': y})
  meta_graph = meta_graph_of(str(tmp_path / 'm'))
  findings = unsafe_ops.find_unsafe(meta_graph.graph_def)
  assert [f.op for f in findings] == ['PyFunc']
  freeze.graph_from_saved_model(str(tmp_path / 'm'), str(tmp_path / 'f.pb'))
  result, _, _ = from_frozen.saved_model_from_frozen_graph(str(tmp_path / 'f.pb'),
                                           output_saved_model_dir=str(tmp_path / 's'))
  assert 'PyFunc' not in {n.op for n in result.graph_def.node}


def test_asset_escaping_the_assets_directory_is_refused(tmp_path):
  model = _save(tmp_path / 'm', lambda x: x)
  proto = saved_model.read_saved_model_proto(model)
  asset = proto.meta_graphs[0].asset_file_def.add()
  asset.filename = '../../etc/passwd'
  asset.tensor_info.name = 'x:0'
  (tmp_path / 'm' / 'saved_model.pb').write_bytes(proto.SerializeToString())
  with pytest.raises(errors.UserError, match=r"asset file name '../../etc/passwd' escapes"):
    freeze.graph_from_saved_model(model, str(tmp_path / 'f.pb'))
