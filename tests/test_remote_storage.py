"""Every model path goes through fileio or tf.io.gfile: both paths run end to end on ram://."""

import ast
import pathlib

import pytest
import tensorflow as tf

from conftest import REPO
from conftest import TINY
from freezerlib import freeze
from freezerlib.demo import recsys_model
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.verify import compare
from freezerlib.verify import loaders


def test_both_paths_end_to_end_on_ram_filesystem(tmp_path):
  root = 'ram://%s' % tmp_path.name  # ram:// is per process: this test runs in-process
  model = recsys_model.train_and_export(root + '/model', recsys_model.ModelConfig(
      **{**TINY.__dict__, 'steps': 5}))
  assert tf.io.gfile.exists(model['saved_model'] + '/saved_model.pb')
  assert tf.io.gfile.glob(model['checkpoint'] + '.data-*')
  freeze.graph_from_saved_model(model['saved_model'], root + '/frozen.pb')
  from_frozen.saved_model_from_frozen_graph(
      root + '/frozen.pb', output_saved_model_dir=root + '/serving',
      output_graph=root + '/optimized.pb')
  # Kept variables: the checkpoint beside the graph (ram:// calls any prefix of a file's name a
  # directory, so frozen.pb "exists" once frozen.pb.variables/ does), copied, not linked.
  freeze.graph_from_saved_model(model['saved_model'], root + '/kept.pb',
                 keep_as_variables='item_embedding,user_stats')
  freeze.graph_from_saved_model(
      model['saved_model'], root + '/kept.pb', keep_as_variables='user_stats',
      overwrite=True)
  from_frozen.saved_model_from_frozen_graph(
      root + '/kept.pb', output_saved_model_dir=root + '/kept_serving',
      output_graph=root + '/kept_optimized.pb')
  assert tf.io.gfile.exists(root + '/kept_serving/variables/variables.index')
  from_checkpoint.saved_model_from_checkpoint(
      checkpoint=root + '/model/ckpt', output_dir=root + '/from_ckpt',
      saved_model_dir=model['saved_model'])
  # Hard links are for local disks: elsewhere --noprune copies.
  from_checkpoint.saved_model_from_checkpoint(
      checkpoint=model['checkpoint'], output_dir=root + '/full',
      saved_model_dir=model['saved_model'], prune_tensors=False)
  assert tf.io.gfile.exists(root + '/full/variables/variables.data-00000-of-00001')
  reference = loaders.load_saved_model(model['saved_model'])
  for new_dir in ('/serving', '/from_ckpt', '/full', '/kept_serving'):
    passed, results = compare.check(
        reference, loaders.load_saved_model(root + new_dir), batch_sizes=(),
        num_examples=40, out=open('/dev/null', 'w'))
    assert passed and len(results) == 4, (new_dir, results)
  for graph in ('/optimized.pb', '/kept.pb', '/kept_optimized.pb'):
    passed, _ = compare.check(
        reference, loaders.load_frozen_graph(root + graph), batch_sizes=(),
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
