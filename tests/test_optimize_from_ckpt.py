"""optimize_from_ckpt.py: a serving SavedModel from a structure graph and a checkpoint."""

import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY
from conftest import assert_one_line_error
from conftest import run_script
from conftest import tf_serving_model
from conftest import tree_digest
from freezerlib.core import errors
from freezerlib.demo import recsys_model
from freezerlib.export import from_checkpoint
from freezerlib.formats import checkpoint_index
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders


def _compare(reference_dir, new_dir, examples=150):
  reference = loaders.load_saved_model(reference_dir)
  new = loaders.load_saved_model(new_dir)
  maker = inputs.InputMaker(reference, seed=11)
  feeds = {k: maker.make(k, examples) for k in reference.signatures}
  results = compare.compare(reference, new, feeds, atol=1e-6, rtol=0)
  stats = reference.run('embeddings', feeds['embeddings'])['user_stats']
  return results, stats


@pytest.fixture(scope='module')
def exported(tiny_model, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('ckpt_export') / 'serving')
  report = from_checkpoint.saved_model_from_checkpoint(
      checkpoint=tiny_model['checkpoint'].rsplit('/', 1)[0],
      output_dir=out, saved_model_dir=tiny_model['saved_model'])
  return out, report


def test_pruned_export_answers_as_the_checkpoint(tiny_model, exported):
  out, report = exported
  results, stats = _compare(tiny_model['saved_model'], out)
  assert len(results) == 4 and all(r.passed for r in results), results
  assert 10 < np.count_nonzero(stats[:, 0]) < 140  # trained and unseen ids both fed
  names = set(tf.train.load_checkpoint(out + '/variables/variables').get_variable_to_shape_map())
  assert 'item_embedding' in names and 'user_stats-keys' in names
  assert 'category_stats-values' in names
  assert not {n for n in names if 'Adam' in n or n in ('global_step', 'beta1_power')}
  source = checkpoint_index.read_index(tiny_model['checkpoint'])
  needed = sum(source.nbytes(n) for n in names)
  assert report.bytes_exported == needed
  dropped = set(source.entries) - names
  assert dropped == {n for n in source.entries
                     if 'Adam' in n or n in ('global_step', 'beta1_power', 'beta2_power')}
  assert report.bytes_exported == report.bytes_in_checkpoint - sum(source.nbytes(n)
                                                                  for n in dropped)
  # The partition layout of the training graph is kept.
  layout = checkpoint_index.slices_of(checkpoint_index.read_index(out + '/variables/variables'),
                                 'item_embedding')
  assert layout == checkpoint_index.slices_of(source, 'item_embedding') and len(layout) == 3


def test_export_serves_through_the_c_api(tiny_model, exported, capi):
  import capi_runner
  out, _ = exported
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  feeds = {k: inputs.InputMaker(reference, seed=2).make(k, 50) for k in reference.signatures}
  got = capi_runner.run_signatures(capi, out, feeds)
  for key, feed in feeds.items():
    expected = reference.run(key, feed)
    for name, value in expected.items():
      np.testing.assert_allclose(got[key][name], value, atol=1e-6, rtol=0, err_msg=name)
  assert np.count_nonzero(got['embeddings']['user_stats'])  # the tables were restored


def test_export_has_no_training_ops_and_loads_with_tf2(exported):
  out, _ = exported
  graph_def = loaders.load_saved_model(out).graph_def
  ops = {n.op for n in graph_def.node}
  assert not ops & {'IteratorGetNext', 'OneShotIterator', 'ResourceApplyAdam', 'ScalarSummary'}
  assert {'RestoreV2', 'LookupTableImportV2', 'VarHandleOp'} <= ops
  assert not any(n.device for n in graph_def.node)
  loaded = tf.saved_model.load(out)
  got = loaded.signatures['embeddings'](item_id=tf.constant([5, 6], tf.int64),
                                        user_id=tf.constant([1, 2], tf.int64))
  assert got['item_embedding'].shape == (2, TINY.embedding_dim)


def test_small_chunks_and_noprune_give_the_same_answers(tiny_model, tmp_path):
  out = str(tmp_path / 'chunked')
  from_checkpoint.saved_model_from_checkpoint(checkpoint=tiny_model['checkpoint'], output_dir=out,
                           saved_model_dir=tiny_model['saved_model'], chunk_bytes=7)
  assert sorted(os.listdir(out + '/variables')) == ['variables.data-00000-of-00002',
                                                   'variables.data-00001-of-00002',
                                                   'variables.index']
  source = tf.train.load_checkpoint(tiny_model['checkpoint'])
  copy = tf.train.load_checkpoint(out + '/variables/variables')
  for name in copy.get_variable_to_shape_map():
    np.testing.assert_array_equal(copy.get_tensor(name), source.get_tensor(name))
  results, _ = _compare(tiny_model['saved_model'], out, examples=60)
  assert all(r.passed for r in results), results

  full = str(tmp_path / 'full')
  report = from_checkpoint.saved_model_from_checkpoint(
      checkpoint=tiny_model['checkpoint'], output_dir=full,
      saved_model_dir=tiny_model['saved_model'], prune_tensors=False)
  source = pathlib.Path(tiny_model['checkpoint'] + '.data-00000-of-00001')
  copy = pathlib.Path(full) / 'variables' / 'variables.data-00000-of-00001'
  assert copy.read_bytes() == source.read_bytes()
  assert os.stat(copy).st_ino == os.stat(source).st_ino  # hard-linked, not copied
  assert report.tensors_exported == report.tensors_in_checkpoint
  results, _ = _compare(tiny_model['saved_model'], full, examples=60)
  assert all(r.passed for r in results), results


def test_partition_count_change_is_refused(tiny_model, tmp_path):
  other = recsys_model.train_and_export(
      str(tmp_path / 'two_parts'), recsys_model.ModelConfig(**{**TINY.__dict__, 'steps': 1,
                                                            'num_partitions': 2}))
  out = tmp_path / 'out'
  with pytest.raises(errors.UserError, match=r'item_embedding is split in 3 partitions in the '
                     r'checkpoint, 2 in'):
    from_checkpoint.saved_model_from_checkpoint(
        checkpoint=tiny_model['checkpoint'], output_dir=str(out),
        saved_model_dir=other['saved_model'])
  assert not out.exists()


def _truncated_shard(tmp_path, tiny_model):
  dst = tmp_path / 'ckpt'
  shutil.copytree(tiny_model['checkpoint'].rsplit('/', 1)[0], dst)
  data = dst / ('%s.data-00000-of-00001' % tiny_model['checkpoint'].rsplit('/', 1)[1])
  data.write_bytes(data.read_bytes()[:-100])
  return str(dst), 'truncated'


def _truncated_index(tmp_path, tiny_model):
  dst = tmp_path / 'ckpt'
  shutil.copytree(tiny_model['checkpoint'].rsplit('/', 1)[0], dst)
  index = dst / ('%s.index' % tiny_model['checkpoint'].rsplit('/', 1)[1])
  index.write_bytes(index.read_bytes()[:200])
  return str(dst), '.index'


def _missing_shard(tmp_path, tiny_model):
  dst = tmp_path / 'ckpt'
  shutil.copytree(tiny_model['checkpoint'].rsplit('/', 1)[0], dst)
  (dst / ('%s.data-00000-of-00001' % tiny_model['checkpoint'].rsplit('/', 1)[1])).unlink()
  return str(dst), 'missing'


BAD = {
    'other_model': (lambda p, m: (tf_serving_model('saved_model_half_plus_two_cpu')
                                  + '/variables/variables', 'item_embedding missing')),
    'missing_checkpoint': (lambda p, m: (str(p / 'nope' / 'model.ckpt-1'), 'does not exist')),
    'truncated_shard': _truncated_shard,
    'truncated_index': _truncated_index,
    'missing_shard': _missing_shard,
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_checkpoint(case, tiny_model, tmp_path):
  checkpoint, message = BAD[case](tmp_path, tiny_model)
  digest = tree_digest(checkpoint) if os.path.isdir(checkpoint) else None
  out = tmp_path / 'out'
  with pytest.raises(errors.UserError, match=message):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=checkpoint, output_dir=str(out),
                             saved_model_dir=tiny_model['saved_model'])
  assert not out.exists()
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.out')] == []
  if digest:
    assert tree_digest(checkpoint) == digest


def test_readme_command(tiny_model, tmp_path):
  out = tmp_path / 'serving'
  proc = run_script('optimize_from_ckpt.py', '--saved_model_dir=%s' % tiny_model['saved_model'],
                    '--checkpoint=%s' % tiny_model['checkpoint'].rsplit('/', 1)[0],
                    '--output_saved_model_dir=%s' % out)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (out / 'variables' / 'variables.index').is_file()
  proc = run_script('optimize_from_ckpt.py', '--saved_model_dir=%s' % tiny_model['saved_model'],
                    '--checkpoint=%s' % tf_serving_model('saved_model_half_plus_two_cpu'),
                    '--output_saved_model_dir=%s' % (tmp_path / 'other'))
  assert_one_line_error(proc, 'optimize_from_ckpt.py', 'no `checkpoint` state file')
  assert not (tmp_path / 'other').exists()
