"""model_gen.py: a real training model with a reader, hash tables, partitions and Adam."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY
from conftest import TINY_FLAGS
from conftest import assert_one_line_error
from conftest import run_script
from freezerlib.demo import recsys_model
from freezerlib.formats import saved_model


def _checkpoint_tensors(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_layout_and_checkpoint_contents(tiny_model):
  ckpt_dir = tiny_model['checkpoint'].rsplit('/', 1)[0]
  # Saver(max_to_keep=1) with relative paths: the directory can be moved.
  state = tf.train.get_checkpoint_state(ckpt_dir)
  assert state.model_checkpoint_path == tiny_model['checkpoint']
  assert 'model.ckpt-%d' % TINY.steps in open(ckpt_dir + '/checkpoint').read()
  assert '/' not in open(ckpt_dir + '/checkpoint').read().split('"')[1]
  tensors = _checkpoint_tensors(tiny_model['checkpoint'])
  assert tensors['global_step'] == TINY.steps
  # Adam slots, a partitioned embedding saved as one logical tensor, both tables' contents.
  assert 'item_embedding/Adam' in tensors and 'item_embedding/Adam_1' in tensors
  assert tensors['item_embedding'].shape == (TINY.item_buckets, TINY.embedding_dim)
  keys, values = tensors['user_stats-keys'], tensors['user_stats-values']
  assert keys.dtype == np.int64 and values.shape == (len(keys), recsys_model.STATS_DIM)
  assert tensors['category_stats-keys'].dtype == object
  # Training inserted every id it saw: each key's impressions are counted, clicks <= imps.
  seen = TINY.steps * TINY.batch_size
  assert 50 < len(keys) <= TINY.num_users
  assert values[:, 0].sum() == pytest.approx(seen)
  assert np.all(values[:, 1] <= values[:, 0])
  assert set(keys) <= set(recsys_model.generate_examples(TINY)['user_id'])


def test_saved_model_is_fed_at_the_reader(tiny_model):
  proto = saved_model.read_saved_model_proto(tiny_model['saved_model'])
  meta_graph = saved_model.select_meta_graph(proto, ['serve'], 'x')
  sig = meta_graph.signature_def['serving_default']
  assert sorted(sig.inputs) == ['category', 'dense', 'item_id', 'user_id']
  assert all(i.name.startswith('IteratorGetNext:') for i in sig.inputs.values())
  ops = {n.op for n in meta_graph.graph_def.node}
  library_ops = {n.op for f in meta_graph.graph_def.library.function for n in f.node_def}
  assert {'IteratorGetNext', 'OneShotIterator', 'MutableHashTableOfTensorsV2',
          'LookupTableInsertV2', 'ResourceApplyAdam'} <= ops
  assert {'TFRecordDataset', 'ParseExampleV2'} <= library_ops | ops
  names = {n.name for n in meta_graph.graph_def.node}
  assert {'item_embedding/part_0', 'item_embedding/part_2'} <= names


def test_tfrecords_round_trip(tiny_model):
  files = tf.io.gfile.glob(tiny_model['data'] + '/*.tfrecord')
  assert len(files) == TINY.num_data_files
  records = list(tf.data.TFRecordDataset(files))
  assert len(records) == TINY.num_examples
  example = tf.train.Example.FromString(records[0].numpy())
  expected = recsys_model.generate_examples(TINY)
  assert example.features.feature['user_id'].int64_list.value[0] == expected['user_id'][0]
  assert list(example.features.feature['dense'].float_list.value) == pytest.approx(
      expected['dense'][0])


def test_same_seed_same_model(tmp_path):
  config = recsys_model.ModelConfig(**{**TINY.__dict__, 'steps': 5})
  first = recsys_model.train_and_export(str(tmp_path / 'a'), config)
  second = recsys_model.train_and_export(str(tmp_path / 'b'), config)
  other = recsys_model.train_and_export(
      str(tmp_path / 'c'), recsys_model.ModelConfig(**{**config.__dict__, 'seed': 4}))
  a = _checkpoint_tensors(first['checkpoint'])
  b = _checkpoint_tensors(second['checkpoint'])
  c = _checkpoint_tensors(other['checkpoint'])
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert not np.array_equal(a['logit/kernel'], c['logit/kernel'])


def test_readme_command_and_refusals(tmp_path):
  out = tmp_path / 'model'
  proc = run_script('model_gen.py', '--output_dir=%s' % out, *TINY_FLAGS[:-2], '--steps=3')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (out / 'saved_model' / 'saved_model.pb').is_file()
  assert proc.stdout.strip() == str(out / 'saved_model')
  before = (out / 'saved_model' / 'saved_model.pb').read_bytes()
  proc = run_script('model_gen.py', '--output_dir=%s' % out, '--steps=3')
  assert_one_line_error(proc, 'model_gen.py', str(out), '--overwrite')
  assert (out / 'saved_model' / 'saved_model.pb').read_bytes() == before
  proc = run_script('model_gen.py', '--output_dir=%s' % (tmp_path / 'x'), '--hidden_units=8,a')
  assert_one_line_error(proc, 'model_gen.py', '--hidden_units')
  assert not (tmp_path / 'x').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model']  # no temporary debris
