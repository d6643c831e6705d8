"""Tables in every serving SavedModel are restored from variables/ straight into the table.

The freeze path (optimize_from_pb.py, with --constants_as_variables and the serving rewrites),
the --keep_as_variables path and the checkpoint path (optimize_from_ckpt.py): each SavedModel
answers as the training model, through TensorFlow's TF1 and TF2 loaders and its C API (the
loader TF Serving uses), and once loaded holds no variable and no constant of keys or values:
its saver's RestoreV2 feeds LookupTableImportV2, as TensorFlow's own table saveables do.
"""

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from conftest import meta_graph_of
from conftest import run_tf2_signatures
from freezerlib import freeze
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import saved_model
from freezerlib.transforms import read_only_tables
from freezerlib.verify import inputs
from freezerlib.verify import loaders

tf1 = tf.compat.v1
INT64 = np.iinfo(np.int64)
# Every table the saver restores, by checkpoint name.
TABLES = ('mutable', 'of_tensors', 'dense', 'static')


def _build(export_dir):
  """A TF1 SavedModel reading a MutableHashTable (scalars), a MutableHashTableOfTensors, a
  DenseHashTable (with a removed key), a static table and a 2-part embedding (`mod`)."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    words = tf1.placeholder(tf.string, [None], name='words')
    mutable = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0, name='mutable')
    of_tensors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, [0.5] * 3,
                                                         name='of_tensors')
    dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.float32, default_value=-2.0,
                                                  empty_key=-1, deleted_key=-3, name='dense')
    static = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['apple', 'kiwi']), tf.constant([10, 20], tf.int64)), -9, name='static')
    emb = tf1.get_variable('emb', [10, 2], initializer=tf1.random_normal_initializer(seed=1),
                           partitioner=tf1.fixed_size_partitioner(2))
    id_score = mutable.lookup(ids) + dense.lookup(tf.abs(ids) + 100)
    word_score = (tf.reduce_sum(of_tensors.lookup(words), axis=1) +
                  tf.cast(static.lookup(words), tf.float32))
    embedded = tf1.nn.embedding_lookup(emb, tf.math.floormod(ids, 10))
    train = tf.group(
        mutable.insert(tf.constant([3, 5, 7], tf.int64), tf.constant([0.5, 1.5, 2.5])),
        of_tensors.insert(tf.constant(['apple', 'cherry']),
                          tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])),
        dense.insert(tf.constant([103, 111, 113], tf.int64), tf.constant([30.0, 110.0, 130.0])))
    with tf1.Session(graph=graph) as session:
      session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      session.run(train)
      session.run(dense.remove(tf.constant([113], tf.int64)))
      info = tf1.saved_model.utils.build_tensor_info
      signature = tf1.saved_model.signature_def_utils.build_signature_def(
          inputs={'ids': info(ids), 'words': info(words)},
          outputs={'id_score': info(id_score), 'word_score': info(word_score),
                   'embedded': info(embedded)},
          method_name='tensorflow/serving/predict')
      builder = tf1.saved_model.Builder(str(export_dir))
      builder.add_meta_graph_and_variables(
          session, ['serve'], signature_def_map={'serving_default': signature},
          main_op=tf1.tables_initializer())
      builder.save()


# Keys held, unseen, and those a dense table reserves (read_only_tables' markers and stand-in).
FEEDS = {'serving_default': {
    'ids': np.array([3, 5, 7, 11, 13, 4, 999, INT64.min, INT64.min + 1, INT64.min + 2],
                    np.int64),
    'words': np.array([b'apple', b'banana', b'cherry', b'kiwi', b'', b'\x00freezer:0',
                       b'\x00freezer:1', b'\x00freezer:2', b'zzz', b'apple'], object)}}


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  root = tmp_path_factory.mktemp('serving_tables')
  _build(root / 'model')
  reference = loaders.load_saved_model(str(root / 'model'))
  return {'root': root, 'saved_model': str(root / 'model'),
          'expected': {'serving_default': reference.run('serving_default',
                                                        FEEDS['serving_default'])}}


def _assert_equal(got, expected):
  for key, outputs in expected.items():
    for name, value in outputs.items():
      np.testing.assert_allclose(got[key][name], value, atol=1e-6, rtol=0, err_msg=name)


def _assert_serves(export_dir, feeds, expected, capi):
  """Equal answers from the TF1 loader, the TF2 loader and the C API; returns the TF1 model."""
  loaded = loaders.load_saved_model(export_dir)
  _assert_equal({k: loaded.run(k, f) for k, f in feeds.items()}, expected)
  _assert_equal(run_tf2_signatures(export_dir, feeds), expected)
  _assert_equal(capi_runner.run_signatures(capi, export_dir, feeds), expected)
  return loaded


def _assert_no_second_copy(loaded, export_dir):
  """After the load, the session's graph holds no keys/values variable and no constant bigger
  than a few numbers but the saver's lists of names; every table is imported by the saver."""
  meta_graph = meta_graph_of(export_dir)
  saver = saved_model.saver_nodes(meta_graph.graph_def, meta_graph.saver_def)
  graph_def = loaded.session.graph.as_graph_def()
  assert not [n.name for n in graph_def.node if n.op == 'VarHandleOp' and 'tables' in n.name]
  # What the saver assigns to variables: no table's keys or values among them.
  from freezerlib.transforms import saver as saver_lib
  restores = saver_lib.restores_of_saver(meta_graph.graph_def, meta_graph.saver_def, export_dir)
  assigned = [n for r in restores if r.op.op != 'LookupTableImportV2' for n in r.names]
  assert assigned and not [n for n in assigned if n.endswith(('-keys', '-values'))], assigned
  big = [n.name for n in graph_def.node if n.op == 'Const' and n.name not in saver and
         n.attr['value'].tensor.ByteSize() > 64]
  assert not big, big
  tables = {n.name for n in graph_def.node if n.op == read_only_tables.DENSE_OP or
            'HashTable' in n.op}
  imported = {n.input[0] for n in meta_graph.graph_def.node
              if n.op == 'LookupTableImportV2' and n.name in saver}
  assert tables and imported == tables, (tables, imported)
  assert not [n.name for n in graph_def.node if n.op in ('LookupTableImportV2',
                                                         'LookupTableInsertV2')
              and n.name not in saver]
  return meta_graph


@pytest.mark.parametrize('form', read_only_tables.FORMS)
def test_freeze_path_restores_every_table_into_itself(model, capi, tmp_path, form):
  frozen = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(model['saved_model'], frozen)
  out = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, out, constants_as_variables=1,
                                            rewrites=('one_gather', form + '_tables'))
  loaded = _assert_serves(out, FEEDS, model['expected'], capi)
  meta_graph = _assert_no_second_copy(loaded, out)
  assert 'saved_model_main_op' not in meta_graph.collection_def  # nothing left to fill
  ops = {n.name: n.op for n in meta_graph.graph_def.node}
  # The read-only mutable tables are dense (or static) tables of rows now; the others kept
  # their kind.
  made = read_only_tables.DENSE_OP if form == 'dense' else read_only_tables.STATIC_OP
  assert [ops[t] for t in TABLES] == [made, made, read_only_tables.DENSE_OP, 'HashTableV2']
  names = set(tf.train.load_checkpoint(out + '/variables/variables').get_variable_to_shape_map())
  assert {'%s-%s' % (t, part) for t in TABLES for part in ('keys', 'values')} <= names
  assert 'emb/by_id' in names and 'of_tensors/values_by_row' in names


def test_keep_path_restores_kept_and_frozen_tables_into_themselves(tiny_model, capi, tmp_path):
  frozen = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(tiny_model['saved_model'], frozen,
                                keep_as_variables='item_embedding,user_stats')
  out = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, out, constants_as_variables=1)
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  feeds = {k: inputs.InputMaker(reference, seed=4).make(k, 40) for k in reference.signatures}
  expected = {k: reference.run(k, f) for k, f in feeds.items()}
  loaded = _assert_serves(out, feeds, expected, capi)
  _assert_no_second_copy(loaded, out)
  # variables/ is the kept checkpoint (hard-linked, its own shard) merged with the new tensors.
  reader = tf.train.load_checkpoint(out + '/variables/variables')
  names = set(reader.get_variable_to_shape_map())
  assert {'item_embedding', 'user_stats-keys', 'category_stats-keys'} <= names
  training = tf.train.load_checkpoint(tiny_model['saved_model'] + '/variables/variables')
  np.testing.assert_array_equal(reader.get_tensor('item_embedding'),
                                training.get_tensor('item_embedding'))
  assert np.count_nonzero(expected['embeddings']['user_stats'])


def test_checkpoint_path_restores_tables_into_themselves(tiny_model, capi, tmp_path):
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(tiny_model['checkpoint'], out,
                                              saved_model_dir=tiny_model['saved_model'])
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  feeds = {k: inputs.InputMaker(reference, seed=6).make(k, 40) for k in reference.signatures}
  expected = {k: reference.run(k, f) for k, f in feeds.items()}
  loaded = _assert_serves(out, feeds, expected, capi)
  _assert_no_second_copy(loaded, out)
