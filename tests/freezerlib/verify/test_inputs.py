"""verify/inputs: inputs made from the signatures and the tables' own keys, or read from files."""

import numpy as np
import pytest
import tensorflow as tf

import small_graphs
from freezerlib.core import errors
from freezerlib.verify import inputs
from freezerlib.verify import loaders

tf1 = tf.compat.v1
KEYS_A, KEYS_B = [10, 20], [31]


def _build():
  """ids -> Cast -> DynamicPartition -> two table shards; words -> a static table; a parser of
  serialized Examples; dense [None, 3]."""
  ids = tf1.placeholder(tf.int64, [None], name='ids')
  words = tf1.placeholder(tf.string, [None], name='words')
  serialized = tf1.placeholder(tf.string, [None], name='serialized')
  dense = tf1.placeholder(tf.float32, [None, 3], name='dense')
  shard_a = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0, name='shard_a')
  shard_b = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0, name='shard_b')
  vocab = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(['x', 'y']), tf.constant([1.0, 2.0])), 0.0, name='vocab')
  same = tf.cast(tf.identity(ids), tf.int64)
  parts = tf.dynamic_partition(same, tf.cast(same % 2, tf.int32), 2)
  found = tf.reduce_sum(shard_a.lookup(parts[0])) + tf.reduce_sum(shard_b.lookup(parts[1]))
  parsed = tf.io.parse_example(serialized, {'age': tf.io.FixedLenFeature([2], tf.float32),
                                            'tags': tf.io.VarLenFeature(tf.string)})
  y = (found + tf.reduce_sum(vocab.lookup(words)) + tf.reduce_sum(parsed['age']) +
       tf.reduce_sum(dense) + tf.cast(tf.size(parsed['tags'].values), tf.float32))
  fill = [shard_a.insert(tf.constant(KEYS_A, tf.int64), tf.constant([1.0, 2.0])),
          shard_b.insert(tf.constant(KEYS_B, tf.int64), tf.constant([3.0]))]
  return ({'ids': ids, 'words': words, 'serialized': serialized, 'dense': dense},
          {'y': tf.identity(y, name='y')}, fill)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  path = small_graphs.save_tf1(tmp_path_factory.mktemp('inputs') / 'm', _build,
                               main_op=tf1.tables_initializer)
  loaded = loaders.load_saved_model(path)
  yield loaded
  loaded.close()


def _info(model, key):
  return model.signatures['serving_default'].inputs[key]


def test_trace_finds_the_tables_and_the_parser(model):
  tables, spec = inputs.trace_input(model, _info(model, 'ids').name)
  assert sorted(t.name for t in tables) == ['shard_a', 'shard_b'] and spec is None
  tables, spec = inputs.trace_input(model, _info(model, 'words').name)
  assert [t.name for t in tables] == ['vocab']
  tables, spec = inputs.trace_input(model, _info(model, 'serialized').name)
  assert tables == [] and spec.features == {'age': (tf.float32, (2,)), 'tags': (tf.string, None)}
  assert inputs.trace_input(model, _info(model, 'dense').name) == ([], None)


def test_input_spec_reads_the_graph(model):
  assert inputs.input_spec(model, _info(model, 'dense')) == (tf.float32, [-1, 3])
  assert inputs.input_spec(model, _info(model, 'ids')) == (tf.int64, [-1])


def test_made_inputs_hit_the_tables_half_the_time(model):
  maker = inputs.InputMaker(model, seed=3)
  feeds = maker.make('serving_default', 200)
  assert {k: v.shape for k, v in feeds.items()} == {'ids': (200,), 'words': (200,),
                                                    'serialized': (200,), 'dense': (200, 3)}
  known = np.isin(feeds['ids'], KEYS_A + KEYS_B).mean()
  assert 0.35 < known < 0.65 and (feeds['ids'] >= 0).all()
  assert 0.35 < np.isin(feeds['words'], [b'x', b'y']).mean() < 0.65
  example = tf.train.Example.FromString(feeds['serialized'][0])
  assert len(example.features.feature['age'].float_list.value) == 2
  assert 1 <= len(example.features.feature['tags'].bytes_list.value) <= 3
  assert feeds['dense'].dtype == np.float32
  again = inputs.InputMaker(model, seed=3).make('serving_default', 200)
  assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # seeded
  assert not np.array_equal(maker.make('serving_default', 201)['ids'][:200], feeds['ids'])
  model.run('serving_default', feeds)  # the model takes them


def test_random_values_of_each_dtype():
  rng = np.random.RandomState(0)
  random_values = inputs._random_values  # pylint: disable=protected-access
  assert random_values(rng, tf.bool, (4,)).dtype == np.bool_
  values = random_values(rng, tf.uint8, (100,))
  assert values.dtype == np.uint8 and values.max() > 100
  with pytest.raises(errors.UserError, match='cannot make random inputs of dtype complex64; pass '
                                             '--inputs'):
    random_values(rng, tf.complex64, (2,))


def test_inputs_from_npz(tmp_path):
  sigs = {'a': small_graphs.signature({'x': 'x:0', 'w': 'w:0'}, {}),
          'b': small_graphs.signature({'x': 'x:0'}, {})}
  np.savez(tmp_path / 'in.npz', x=np.arange(3), **{'a/x': np.arange(2), 'w': np.array(['u'])})
  feeds = inputs.inputs_from_npz(str(tmp_path / 'in.npz'), sigs)
  assert feeds['a']['x'].tolist() == [0, 1] and feeds['b']['x'].tolist() == [0, 1, 2]
  assert feeds['a']['w'].dtype == object and feeds['a']['w'].tolist() == ['u']
  np.savez(tmp_path / 'short.npz', x=np.arange(3))
  with pytest.raises(errors.UserError, match=r"short.npz has no array 'w' \(or 'a/w'\) for "
                                             "signature 'a'"):
    inputs.inputs_from_npz(str(tmp_path / 'short.npz'), sigs)
  (tmp_path / 'bad.npz').write_bytes(b'not a zip')
  with pytest.raises(errors.UserError, match='cannot read inputs from .*bad.npz'):
    inputs.inputs_from_npz(str(tmp_path / 'bad.npz'), sigs)


def _record(ids, word):
  example = tf.train.Example(features=tf.train.Features(feature={
      'ids': tf.train.Feature(int64_list=tf.train.Int64List(value=[ids])),
      'words': tf.train.Feature(bytes_list=tf.train.BytesList(value=[word])),
      'dense': tf.train.Feature(float_list=tf.train.FloatList(value=[1.0, 2.0, 3.0]))}))
  return example.SerializeToString()


def test_inputs_from_tfrecords(model, tmp_path):
  records = [_record(i, b'w%d' % i) for i in range(5)]
  for name, part in (('a.tfrecord', records[:3]), ('b.tfrecord', records[3:])):
    with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
      for record in part:
        writer.write(record)
  feeds = inputs.inputs_from_tfrecords([str(tmp_path / '*.tfrecord')], model, 4)
  got = feeds['serving_default']
  ids = got['ids'].tolist()  # 4 records, from files in the order the glob lists them
  assert len(set(ids)) == 4 and set(ids) <= set(range(5))
  assert got['words'].tolist() == [b'w%d' % i for i in ids]
  assert got['dense'].shape == (4, 3) and got['dense'].dtype == np.float32
  assert got['serialized'].tolist() == [records[i] for i in ids]  # the parser's: the records
  with pytest.raises(errors.UserError, match='no TFRecord files match .*nothing'):
    inputs.inputs_from_tfrecords([str(tmp_path / 'nothing*')], model, 4)
  (tmp_path / 'empty.tfrecord').write_bytes(b'')
  with pytest.raises(errors.UserError, match='empty.tfrecord holds no records'):
    inputs.inputs_from_tfrecords([str(tmp_path / 'empty.tfrecord')], model, 4)
  with tf.io.TFRecordWriter(str(tmp_path / 'other.tfrecord')) as writer:
    writer.write(tf.train.Example().SerializeToString())
  with pytest.raises(errors.UserError, match="have no feature 'dense' \\(signature "
                                             "'serving_default'\\)"):
    inputs.inputs_from_tfrecords([str(tmp_path / 'other.tfrecord')], model, 4)
