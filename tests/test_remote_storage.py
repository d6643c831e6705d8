"""Every model path goes through fileio or tf.io.gfile: both paths run end to end on ram://."""

import ast
import pathlib

import pytest
import tensorflow as tf

from conftest import REPO
from conftest import TINY
import checkpoint_export
import comparison
import freezer
import model_gen
import optimize_from_pb
import optimize_from_pb_test


def test_both_paths_end_to_end_on_ram_filesystem(tmp_path):
  root = 'ram://%s' % tmp_path.name  # ram:// is per process: this test runs in-process
  model = model_gen.train_and_export(root + '/model', model_gen.ModelConfig(
      **{**TINY.__dict__, 'steps': 5}))
  assert tf.io.gfile.exists(model['saved_model'] + '/saved_model.pb')
  assert tf.io.gfile.glob(model['checkpoint'] + '.data-*')
  freezer.freeze(model['saved_model'], root + '/frozen.pb')
  optimize_from_pb.optimize(root + '/frozen.pb', output_saved_model_dir=root + '/serving',
                            output_graph=root + '/optimized.pb')
  # Kept variables: the checkpoint beside the graph (ram:// calls any prefix of a file's name a
  # directory, so frozen.pb "exists" once frozen.pb.variables/ does), copied, not linked.
  freezer.freeze(model['saved_model'], root + '/kept.pb',
                 keep_as_variables='item_embedding,user_stats')
  freezer.freeze(model['saved_model'], root + '/kept.pb', keep_as_variables='user_stats',
                 overwrite=True)
  optimize_from_pb.optimize(root + '/kept.pb', output_saved_model_dir=root + '/kept_serving',
                            output_graph=root + '/kept_optimized.pb')
  assert tf.io.gfile.exists(root + '/kept_serving/variables/variables.index')
  checkpoint_export.export(checkpoint=root + '/model/ckpt', output_dir=root + '/from_ckpt',
                           saved_model_dir=model['saved_model'])
  # Hard links are for local disks: elsewhere --noprune copies.
  checkpoint_export.export(checkpoint=model['checkpoint'], output_dir=root + '/full',
                           saved_model_dir=model['saved_model'], prune=False)
  assert tf.io.gfile.exists(root + '/full/variables/variables.data-00000-of-00001')
  reference = comparison.load_saved_model(model['saved_model'])
  for new_dir in ('/serving', '/from_ckpt', '/full', '/kept_serving'):
    passed, results = optimize_from_pb_test.check(
        reference, comparison.load_saved_model(root + new_dir), batch_sizes=(),
        num_examples=40, out=open('/dev/null', 'w'))
    assert passed and len(results) == 4, (new_dir, results)
  for graph in ('/optimized.pb', '/kept.pb', '/kept_optimized.pb'):
    passed, _ = optimize_from_pb_test.check(
        reference, comparison.load_frozen_graph(root + graph), batch_sizes=(),
        num_examples=40, out=open('/dev/null', 'w'))
    assert passed, graph
  # Nothing was written to the local disk under those names.
  assert not list(pathlib.Path('.').glob('ram:*'))


# Local-only calls on what may be a model path. Allowed where the path is known to be local:
# hard links (with a gfile fallback), process ids, and the benchmark's own scratch space.
_LOCAL_ONLY = {('os', 'path'), ('shutil', None), ('os', 'makedirs'), ('os', 'listdir'),
               ('os', 'remove'), ('os', 'rename'), ('os', 'walk'), ('os', 'stat'),
               ('os', 'mkdir'), ('os', 'unlink'), ('os', 'replace')}


def _local_only_calls(source):
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'open':
      found.append((node.lineno, 'open'))
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
      if (node.value.id, node.attr) in _LOCAL_ONLY or (node.value.id, None) in _LOCAL_ONLY:
        found.append((node.lineno, '%s.%s' % (node.value.id, node.attr)))
  return found


# fileio.py is where a path is told local or remote: it calls the OS only for local ones.
@pytest.mark.parametrize('module', sorted(p.name for p in REPO.glob('*.py')
                                          if p.name != 'fileio.py'))
def test_no_local_only_file_calls(module):
  found = _local_only_calls((REPO / module).read_text())
  assert not found, '%s uses local-only file calls: %s' % (module, found)
