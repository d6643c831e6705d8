"""Every script against every bad input: one line, exit 1, nothing left, inputs unchanged.

The scripts run in-process through their own `main` with parsed flags (a subprocess per case
would cost TensorFlow's start-up 40 times over); each script's own tests run the same command
lines as subprocesses.
"""

import contextlib
import os
import pathlib
import shutil
import subprocess

from absl import flags
import pytest
import tensorflow as tf

from conftest import tf_serving_model
from conftest import tree_digest

# The scripts themselves: this file tests their command lines, in-process.
import freezer
from freezerlib import freeze
from freezerlib.formats import frozen_graph
import model_gen
import optimize_from_ckpt
import optimize_from_pb
import optimize_from_pb_test

SCRIPTS = {'freezer': freezer, 'optimize_from_pb': optimize_from_pb,
           'optimize_from_pb_test': optimize_from_pb_test,
           'optimize_from_ckpt': optimize_from_ckpt, 'model_gen': model_gen}


def run_main(script, args, capsys):
  """Runs SCRIPT.main as `python SCRIPT.py ARGS` would; returns (exit code, stderr)."""
  module = SCRIPTS[script]
  capsys.readouterr()
  try:
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(['%s.py' % script] + [str(a) for a in args])
    code = module.main(argv)
  finally:
    flags.FLAGS.unparse_flags()
    flags.FLAGS.mark_as_parsed()
  return code, capsys.readouterr().err


@contextlib.contextmanager
def small_disk(tmp_path):
  """A 4 KiB tmpfs when this machine lets us mount one (root), else a write that fails with
  ENOSPC the way a full disk does."""
  mount = tmp_path / 'small_disk'
  mount.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4k', 'tmpfs', str(mount)],
                           capture_output=True, check=False).returncode == 0
  try:
    if mounted:
      yield str(mount)
    else:
      real = tf.io.gfile.GFile.write

      def full(self, data):
        if str(mount) in self.name:
          raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
        return real(self, data)
      tf.io.gfile.GFile.write = full
      try:
        yield str(mount)
      finally:
        tf.io.gfile.GFile.write = real
  finally:
    if mounted:
      subprocess.run(['umount', str(mount)], check=False)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _truncate(path, keep):
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[:keep] if keep >= 0 else data[:keep])


def _ckpt_copy(tiny_model, tmp_path):
  ckpt = _copy(tiny_model['checkpoint'].rsplit('/', 1)[0], tmp_path / 'ckpt')
  return ckpt, ckpt + '/' + tiny_model['checkpoint'].rsplit('/', 1)[1]


def _case(name, tiny_model, tiny_frozen, tmp_path):
  """(script, args, inputs to keep unchanged, output that must not appear, message fragments)."""
  hp2 = lambda: tf_serving_model('saved_model_half_plus_two_cpu')
  out_pb, out_dir = str(tmp_path / 'out.pb'), str(tmp_path / 'out')
  sm = tiny_model['saved_model']
  if name == 'freezer-missing_dir':
    return 'freezer', ['--saved_model_dir=%s/nope' % tmp_path, '--output_graph=' + out_pb], [], \
        out_pb, ['nope', 'does not exist']
  if name == 'freezer-empty_dir':
    (tmp_path / 'empty').mkdir()
    return 'freezer', ['--saved_model_dir=%s/empty' % tmp_path, '--output_graph=' + out_pb], \
        [str(tmp_path / 'empty')], out_pb, ['empty']
  if name == 'freezer-truncated_pb':
    src = _copy(hp2(), tmp_path / 'hp2')
    _truncate(src + '/saved_model.pb', 500)
    return 'freezer', ['--saved_model_dir=' + src, '--output_graph=' + out_pb], [src], out_pb, \
        ['saved_model.pb']
  if name == 'freezer-unknown_tag':
    return 'freezer', ['--saved_model_dir=' + hp2(), '--output_graph=' + out_pb, '--tags=gpu'], \
        [hp2()], out_pb, ['gpu', 'serve']
  if name == 'freezer-unknown_signature':
    return 'freezer', ['--saved_model_dir=' + hp2(), '--output_graph=' + out_pb,
                       '--signature_def=nope'], [hp2()], out_pb, ["'nope'", 'serving_default']
  if name == 'freezer-session_bundle':
    bundle = tf_serving_model('bad_half_plus_two')
    return 'freezer', ['--saved_model_dir=' + bundle, '--output_graph=' + out_pb], [bundle], \
        out_pb, ['session-bundle']
  if name == 'freezer-stateful':
    counter = tf_serving_model('saved_model_counter')
    return 'freezer', ['--saved_model_dir=' + counter, '--output_graph=' + out_pb], [counter], \
        out_pb, ['incr_counter', "'counter'"]
  if name == 'freezer-unwritable_output':
    (tmp_path / 'a_file').write_text('x')
    return 'freezer', ['--saved_model_dir=' + sm, '--output_graph=%s/a_file/out.pb' % tmp_path],\
        [sm], str(tmp_path / 'a_file' / 'out.pb'), ['a_file', 'not a directory']
  if name == 'freezer-over_2gb':
    return 'freezer', ['--saved_model_dir=' + sm, '--output_graph=' + out_pb], [sm], out_pb, \
        ['2 GB', '--keep_as_variables=', 'optimize_from_ckpt.py']
  if name == 'freezer-bad_keep_size':
    return 'freezer', ['--saved_model_dir=' + sm, '--output_graph=' + out_pb,
                       '--keep_as_variables=12XB'], [sm], out_pb, ['--keep_as_variables=12XB',
                                                                   'not a size']
  if name == 'freezer-unknown_keep_name':
    return 'freezer', ['--saved_model_dir=' + sm, '--output_graph=' + out_pb,
                       '--keep_as_variables=item_embedding,nope'], [sm], out_pb, \
        ['nope', 'choose from', 'user_stats']
  if name == 'freezer-keep_disk_full':
    return 'freezer', ['--saved_model_dir=' + sm, '--output_graph={disk}/out.pb',
                       '--keep_as_variables=0.3KiB'], [sm], '{disk}/out.pb', \
        ['out.pb', 'No space left on device']
  if name.startswith(('optimize_from_pb-', 'optimize_from_pb_test-')) and 'beside' in name:
    kept = tmp_path / 'kept'
    kept.mkdir()
    freeze.graph_from_saved_model(sm, str(kept / 'frozen.pb'),
                                  keep_as_variables='item_embedding')
    if 'missing' in name:  # the graph moved without its checkpoint
      (tmp_path / 'moved').mkdir()
      os.rename(kept / 'frozen.pb', tmp_path / 'moved' / 'frozen.pb')
      graph, fragments = str(tmp_path / 'moved' / 'frozen.pb'), [
          'moved/frozen.pb.variables/variables', 'missing']
    else:  # another freeze's checkpoint beside it
      freeze.graph_from_saved_model(sm, str(tmp_path / 'other.pb'),
                                    keep_as_variables='item_embedding,user_stats')
      shutil.rmtree(kept / 'frozen.pb.variables')
      shutil.copytree(tmp_path / 'other.pb.variables', kept / 'frozen.pb.variables')
      graph, fragments = str(kept / 'frozen.pb'), ['kept/frozen.pb.variables/variables',
                                                   'not the one written with']
    if name.startswith('optimize_from_pb_test'):
      return 'optimize_from_pb_test', ['--graph=' + graph, '--reference_saved_model_dir=' + sm], \
          [graph], None, fragments
    return 'optimize_from_pb', ['--input_graph=' + graph, '--output_saved_model_dir=' + out_dir],\
        [graph], out_dir, fragments
  if name == 'optimize_from_pb-random_bytes':
    (tmp_path / 'random.pb').write_bytes(os.urandom(4096))
    return 'optimize_from_pb', ['--input_graph=%s/random.pb' % tmp_path,
                                '--output_saved_model_dir=' + out_dir], \
        [str(tmp_path / 'random.pb')], out_dir, ['random.pb']
  if name == 'optimize_from_pb-empty_file':
    (tmp_path / 'empty.pb').write_bytes(b'')
    return 'optimize_from_pb', ['--input_graph=%s/empty.pb' % tmp_path,
                                '--output_saved_model_dir=' + out_dir], \
        [str(tmp_path / 'empty.pb')], out_dir, ['empty.pb', 'empty']
  if name == 'optimize_from_pb-missing_file':
    return 'optimize_from_pb', ['--input_graph=%s/nope.pb' % tmp_path,
                                '--output_saved_model_dir=' + out_dir], [], out_dir, \
        ['nope.pb', 'does not exist']
  if name == 'optimize_from_pb-unknown_output':
    return 'optimize_from_pb', ['--input_graph=' + tiny_frozen, '--inputs=user_id:0',
                                '--outputs=no_such_op:0', '--output_saved_model_dir=' + out_dir], \
        [tiny_frozen], out_dir, ['no_such_op:0']
  if name == 'optimize_from_pb-disk_full':
    return 'optimize_from_pb', ['--input_graph=' + tiny_frozen,
                                '--output_saved_model_dir={disk}/serving'], [tiny_frozen], \
        '{disk}/serving', ['serving', 'No space left on device']
  if name == 'optimize_from_pb_test-missing_reference':
    return 'optimize_from_pb_test', ['--graph=' + tiny_frozen,
                                     '--reference_saved_model_dir=%s/nope' % tmp_path], \
        [tiny_frozen], None, ['nope']
  if name == 'optimize_from_pb_test-random_bytes':
    (tmp_path / 'random.pb').write_bytes(os.urandom(4096))
    return 'optimize_from_pb_test', ['--graph=%s/random.pb' % tmp_path,
                                     '--reference_saved_model_dir=' + sm], [sm], None, \
        ['random.pb']
  if name == 'optimize_from_ckpt-truncated_index':
    ckpt, prefix = _ckpt_copy(tiny_model, tmp_path)
    _truncate(prefix + '.index', 150)
    return 'optimize_from_ckpt', ['--saved_model_dir=' + sm, '--checkpoint=' + ckpt,
                                  '--output_saved_model_dir=' + out_dir], [ckpt], out_dir, \
        ['.index']
  if name == 'optimize_from_ckpt-missing_shard':
    ckpt, prefix = _ckpt_copy(tiny_model, tmp_path)
    os.remove(prefix + '.data-00000-of-00001')
    return 'optimize_from_ckpt', ['--saved_model_dir=' + sm, '--checkpoint=' + ckpt,
                                  '--output_saved_model_dir=' + out_dir], [ckpt], out_dir, \
        ['data-00000-of-00001', 'missing']
  if name == 'optimize_from_ckpt-truncated_shard':
    ckpt, prefix = _ckpt_copy(tiny_model, tmp_path)
    _truncate(prefix + '.data-00000-of-00001', -10)
    return 'optimize_from_ckpt', ['--saved_model_dir=' + sm, '--checkpoint=' + ckpt,
                                  '--output_saved_model_dir=' + out_dir], [ckpt], out_dir, \
        ['data-00000-of-00001', 'truncated']
  if name == 'optimize_from_ckpt-other_model':
    variables = hp2() + '/variables/variables'
    return 'optimize_from_ckpt', ['--saved_model_dir=' + sm, '--checkpoint=' + variables,
                                  '--output_saved_model_dir=' + out_dir], [hp2()], out_dir, \
        ['item_embedding missing', 'user_stats-keys missing']
  if name == 'optimize_from_ckpt-missing_checkpoint':
    return 'optimize_from_ckpt', ['--saved_model_dir=' + sm,
                                  '--checkpoint=%s/nope/model.ckpt-1' % tmp_path,
                                  '--output_saved_model_dir=' + out_dir], [], out_dir, \
        ['nope', 'does not exist']
  if name == 'optimize_from_ckpt-disk_full':
    ckpt = tiny_model['checkpoint'].rsplit('/', 1)[0]
    return 'optimize_from_ckpt', ['--saved_model_dir=' + sm, '--checkpoint=' + ckpt,
                                  '--output_saved_model_dir={disk}/serving', '--noprune'], \
        [ckpt], '{disk}/serving', ['serving', 'No space left on device']
  if name == 'model_gen-bad_hidden_units':
    return 'model_gen', ['--output_dir=' + out_dir, '--hidden_units=8,x'], [], out_dir, \
        ['--hidden_units']
  if name == 'model_gen-unwritable_output':
    (tmp_path / 'a_file').write_text('x')
    return 'model_gen', ['--output_dir=%s/a_file/model' % tmp_path, '--steps=1'], [], \
        str(tmp_path / 'a_file' / 'model'), ['a_file']
  raise KeyError(name)


CASES = ['freezer-missing_dir', 'freezer-empty_dir', 'freezer-truncated_pb',
         'freezer-unknown_tag', 'freezer-unknown_signature', 'freezer-session_bundle',
         'freezer-stateful', 'freezer-unwritable_output', 'freezer-over_2gb',
         'freezer-bad_keep_size', 'freezer-unknown_keep_name', 'freezer-keep_disk_full',
         'optimize_from_pb-missing_beside_checkpoint', 'optimize_from_pb-other_beside_checkpoint',
         'optimize_from_pb_test-missing_beside_checkpoint',
         'optimize_from_pb-random_bytes', 'optimize_from_pb-empty_file',
         'optimize_from_pb-missing_file', 'optimize_from_pb-unknown_output',
         'optimize_from_pb-disk_full', 'optimize_from_pb_test-missing_reference',
         'optimize_from_pb_test-random_bytes', 'optimize_from_ckpt-truncated_index',
         'optimize_from_ckpt-missing_shard', 'optimize_from_ckpt-truncated_shard',
         'optimize_from_ckpt-other_model', 'optimize_from_ckpt-missing_checkpoint',
         'optimize_from_ckpt-disk_full', 'model_gen-bad_hidden_units',
         'model_gen-unwritable_output']


@pytest.mark.parametrize('name', CASES)
def test_bad_input(name, tiny_model, tiny_frozen, tmp_path, capsys, monkeypatch):
  script, args, inputs, output, fragments = _case(name, tiny_model, tiny_frozen, tmp_path)
  if name.endswith('over_2gb'):
    monkeypatch.setattr(frozen_graph, 'PROTOBUF_LIMIT', 1000)
  digests = {p: tree_digest(p) for p in inputs}
  with small_disk(tmp_path) as disk:
    args = [a.replace('{disk}', disk) for a in args]
    output = output.replace('{disk}', disk) if output else None
    code, err = run_main(script, args, capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 1, (code, err)
    assert 'Traceback' not in err
    assert len(lines) == 1 and lines[0].startswith('%s.py: error: ' % script), lines
    for fragment in fragments:
      assert fragment in lines[0], (fragment, lines[0])
    if output:
      assert not os.path.exists(output)
      assert not os.path.exists(frozen_graph.checkpoint_dir(output))
      parent = os.path.dirname(output)
      if os.path.isdir(parent):
        assert not [n for n in os.listdir(parent) if '.tmp-' in n]  # no half-written temp
  for path, digest in digests.items():
    assert tree_digest(path) == digest
