"""verify/inputs: inputs made from the signatures and the tables' own keys, or read from files."""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.verify import inputs
from freezerlib.verify import loaders
import small_graphs

tf1 = tf.compat.v1
KEYS_A, KEYS_B = small_graphs.LOOKUP_KEYS


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  path = small_graphs.save_tf1(tmp_path_factory.mktemp('inputs') / 'm', small_graphs.lookups,
                               main_op=tf1.tables_initializer)
  loaded = loaders.load_saved_model(path)
  yield loaded
  loaded.close()


def _info(model, key):
  return model.signatures['serving_default'].inputs[key]


def test_input_spec_reads_the_graph(model):
  assert inputs.input_spec(model, _info(model, 'dense')) == (tf.float32, [-1, 3])
  assert inputs.input_spec(model, _info(model, 'ids')) == (tf.int64, [-1])


def test_made_inputs_hit_the_tables_half_the_time(model):
  maker = inputs.InputMaker(model, seed=3)
  feeds = maker.make('serving_default', 200)
  assert {k: v.shape for k, v in feeds.items()} == {'ids': (200,), 'words': (200,),
                                                    'serialized': (200,), 'dense': (200, 3)}
  known = np.isin(feeds['ids'], KEYS_A + KEYS_B).mean()
  assert 0.35 < known < 0.65
  assert (feeds['ids'] >= 0).all() and (feeds['ids'] < 40).all()  # the embedding's rows
  assert 0.35 < np.isin(feeds['words'], [b'x', b'y']).mean() < 0.65
  example = tf.train.Example.FromString(feeds['serialized'][0])
  assert len(example.features.feature['age'].float_list.value) == 2
  # Every example's VarLen feature has 0 to 3 values (empty rows too), varying across the batch.
  lengths = {len(tf.train.Example.FromString(s).features.feature['tags'].bytes_list.value)
             for s in feeds['serialized']}
  assert lengths <= {0, 1, 2, 3} and len(lengths) > 1, lengths
  assert feeds['dense'].dtype == np.float32
  again = inputs.InputMaker(model, seed=3).make('serving_default', 200)
  assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # seeded
  assert not np.array_equal(maker.make('serving_default', 201)['ids'][:200], feeds['ids'])
  model.run('serving_default', feeds)  # the model takes them


def test_random_values_of_each_dtype():
  rng = np.random.RandomState(0)
  random_values = inputs._random_values
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
  assert feeds['a']['w'].dtype == object and feeds['a']['w'].tolist() == [b'u']  # as fed
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


def test_npz_strings_arrive_byte_for_byte(tmp_path):
  """numpy's fixed-width bytes drop trailing NULs: such arrays are refused, save_npz's kept."""
  sigs = {'s': small_graphs.signature({'e': 'e:0', 'sp': 'sp:0'}, {})}
  sigs['s'].inputs['sp'].coo_sparse.values_tensor_name = 'v:0'
  strings = np.array([b'ends in NUL\x00', b'ab'], dtype=object)
  sparse = loaders.sparse_value(np.array([[0, 0], [1, 2]]), np.array([3, 4]), np.array([2, 3]))
  inputs.save_npz(str(tmp_path / 'in.npz'), {'e': strings, 's/sp': sparse})
  feeds = inputs.inputs_from_npz(str(tmp_path / 'in.npz'), sigs)['s']
  assert feeds['e'].tolist() == strings.tolist()
  assert feeds['sp'].indices.tolist() == [[0, 0], [1, 2]]
  assert feeds['sp'].values.tolist() == [3, 4] and feeds['sp'].dense_shape.tolist() == [2, 3]
  np.savez(tmp_path / 'lossy.npz', e=strings.astype('S'), sp=np.zeros(1))
  with pytest.raises(errors.UserError, match="array 'e' of .*lossy.npz holds fixed-width strings "
                                             r'\(dtype S12\), some shorter than the width'):
    inputs.inputs_from_npz(str(tmp_path / 'lossy.npz'), {'s': small_graphs.signature(
        {'e': 'e:0'}, {})})
  inputs.save_npz(str(tmp_path / 'dense.npz'), {'e': strings, 'sp': np.zeros(1)})
  with pytest.raises(errors.UserError, match=r"has no array 'sp.indices' \(the input 'sp' is "
                                             r'sparse\)'):
    inputs.inputs_from_npz(str(tmp_path / 'dense.npz'), sigs)
