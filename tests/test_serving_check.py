"""The serving check (freezerlib/verify/serving_check.py, --check): optimize_from_pb.py and
optimize_from_ckpt.py load what they wrote with TF Serving's loader and run each signature
before it moves into place; a model that does not serve is refused and nothing is left."""

import utils

import os
import re

from absl import flags
import pytest
from test_function_tables import FEEDS
from test_function_tables import _save_resaved

import capi_runner
from conftest import REPO
from conftest import assert_one_line_error
from conftest import run_main_as_process
from freezerlib import freeze
from freezerlib.formats import saved_model
from freezerlib.verify import serving_check
import optimize_from_ckpt
import optimize_from_pb


@pytest.fixture(scope='module')
def vocab_model(tmp_path_factory):
  """The re-saved vocabulary model (test_function_tables), frozen, with its checkpoint."""
  root = tmp_path_factory.mktemp('serving_check')
  src = _save_resaved(root / 'model', weight=2.5)
  frozen = str(root / 'frozen.pb')
  freeze.graph_from_saved_model(src, frozen)
  return {'src': src, 'frozen': frozen, 'checkpoint': str(root / 'model' / 'ckpt')}


def _no_main_op(monkeypatch):
  """The SavedModel writer loses its main op: the tables are never filled (the output such a
  bug, or freezer before tables inside functions were frozen, wrote with exit code 0)."""
  real = saved_model.serving_meta_graph

  def without(*args, **kwargs):
    kwargs['main_op'] = None
    return real(*args, **kwargs)

  monkeypatch.setattr(saved_model, 'serving_meta_graph', without)


def _leftovers(parent):
  return sorted(name for name in os.listdir(parent) if name.startswith('.'))


def test_a_model_whose_tables_are_not_filled_is_refused_and_nothing_is_left(
    vocab_model, tmp_path, monkeypatch, capsys):
  _no_main_op(monkeypatch)
  output = tmp_path / 'serving'
  proc = run_main_as_process(optimize_from_pb, ['--input_graph=%s' % vocab_model['frozen'],
                                                '--output_saved_model_dir=%s' % output], capsys)
  assert_one_line_error(proc, 'optimize_from_pb.py', 'does not serve',
                        "TF Serving's loader", 'Table not initialized', '--nocheck')
  assert not output.exists() and not _leftovers(tmp_path)


def test_nocheck_skips_the_check(vocab_model, tmp_path, monkeypatch, capsys, capi):
  """--nocheck writes the same broken model: proof the check, not something else, refused it
  above (the C API runner fails on it the same way)."""
  _no_main_op(monkeypatch)
  output = tmp_path / 'serving'
  proc = run_main_as_process(optimize_from_pb, ['--input_graph=%s' % vocab_model['frozen'],
                                                '--output_saved_model_dir=%s' % output,
                                                '--nocheck'], capsys)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with pytest.raises(RuntimeError, match='Table not initialized'):
    capi_runner.run_signatures(capi, str(output), {'encode': FEEDS['encode']})


def test_a_good_model_passes_and_the_time_is_logged(vocab_model, tmp_path, capsys, monkeypatch):
  calls = []
  real = serving_check.check_saved_model
  monkeypatch.setattr(serving_check, 'check_saved_model',
                      lambda path: calls.append(path) or real(path))
  logged = []
  monkeypatch.setattr(utils.logging, 'info',
                      lambda message, *args: logged.append(message % args))
  output = tmp_path / 'serving'
  proc = run_main_as_process(optimize_from_pb, ['--input_graph=%s' % vocab_model['frozen'],
                                                '--output_saved_model_dir=%s' % output,
                                                '--version=1'], capsys)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # Checked in its temporary directory, before it moved into place.
  assert len(calls) == 1 and os.path.basename(calls[0]).startswith('.'), calls
  assert (output / '1' / 'saved_model.pb').exists()
  assert [m for m in logged if re.match(r"serving check: TF Serving's loader loaded the "
                                        r'SavedModel and ran each signature in \d+\.\d\d s', m)]


def test_checkpoint_path_refuses_a_model_that_does_not_serve(vocab_model, tmp_path,
                                                             monkeypatch, capsys):
  """A SavedModel without variables/variables.index: the C++ loader skips the restore without
  an error (TF Serving issue 1086) and the model serves uninitialised; the check catches it."""

  def lose_index(saved_model_dir):
    os.remove(os.path.join(saved_model_dir, 'variables', 'variables.index'))

  monkeypatch.setattr(utils, 'warmup_writer', lambda *args, **kwargs: lose_index)
  output = tmp_path / 'serving'
  proc = run_main_as_process(optimize_from_ckpt, ['--saved_model_dir=%s' % vocab_model['src'],
                                                  '--checkpoint=%s' % vocab_model['checkpoint'],
                                                  '--output_saved_model_dir=%s' % output], capsys)
  line = assert_one_line_error(proc, 'optimize_from_ckpt.py', 'does not serve', "signature '")
  assert 'nothing was written' in line
  assert not output.exists() and not _leftovers(tmp_path)


def test_the_flag_is_shared_and_documented():
  for script in ('optimize_from_pb.py', 'optimize_from_ckpt.py'):
    text = (REPO / script).read_text()
    assert '_CHECK = cli_flags.check()' in text, script
  assert optimize_from_pb._CHECK is optimize_from_ckpt._CHECK
  assert 'too big to load twice' in flags.FLAGS['check'].help


def test_a_remote_output_is_checked_from_a_local_copy(vocab_model, tmp_path, monkeypatch):
  """TensorFlow's C++ loader reads only its own file systems: a remote SavedModel (ram:// here,
  through the file layer) is copied locally, then checked; a broken one is refused the same."""
  import tensorflow as tf

  from freezerlib.export import from_frozen
  from_frozen.saved_model_from_frozen_graph(vocab_model['frozen'], str(tmp_path / 'good'))
  _no_main_op(monkeypatch)
  from_frozen.saved_model_from_frozen_graph(vocab_model['frozen'], str(tmp_path / 'broken'))
  remote = 'ram://serving_check_%d' % os.getpid()
  for local in (tmp_path / 'good', tmp_path / 'broken'):
    for root, _, names in os.walk(local):
      for name in names:
        dst = remote + os.path.join(root, name)[len(str(tmp_path)):]
        tf.io.gfile.makedirs(os.path.dirname(dst))
        tf.io.gfile.copy(os.path.join(root, name), dst)
  assert serving_check.check_saved_model(remote + '/good') > 0
  with pytest.raises(serving_check.ServingCheckFailed, match='Table not initialized'):
    serving_check.check_saved_model(remote + '/broken')
