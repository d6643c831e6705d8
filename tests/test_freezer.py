"""freezer.py: variables to constants, every kind of table kept, bad input refused."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_one_line_error
from conftest import meta_graph_of
from conftest import run_script
from conftest import save_predict_model
from conftest import tf_serving_model
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.freeze import streaming
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders

tf1 = tf.compat.v1

VARIABLE_OPS = {'VariableV2', 'VarHandleOp', 'ReadVariableOp', 'ResourceGather'}


def _example(x):
  return tf.train.Example(features=tf.train.Features(feature={
      'x': tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})).SerializeToString()


# ---------------------------------------------------------------------------------------------
# model_gen's model


def test_frozen_tiny_model_keeps_tables_and_answers_as_the_original(tiny_model, tiny_frozen):
  frozen = frozen_graph.frozen_from_graph_def(
      frozen_graph.read_graph_def(tiny_frozen), tiny_frozen)
  ops = {n.op for n in frozen.graph_def.node}
  assert not ops & VARIABLE_OPS
  assert sorted(frozen.signatures) == ['embeddings', 'serving_default']
  assert frozen.table_init_op == 'freezer/init_tables'
  # Both tables are filled with every key the checkpoint holds.
  reader = tf.train.load_checkpoint(tiny_model['checkpoint'])
  nodes = {n.name: n for n in frozen.graph_def.node}
  for table in ('user_stats', 'category_stats'):
    keys = tf.make_ndarray(nodes['freezer/tables/%s/keys' % table].attr['value'].tensor)
    assert sorted(keys) == sorted(reader.get_tensor(table + '-keys'))
  # Method names, dtypes and shapes travel with the graph.
  sig = frozen.signatures['serving_default']
  assert sig.method_name == 'tensorflow/serving/predict'
  assert sig.inputs['user_id'].dtype == tf.int64.as_datatype_enum

  reference = loaders.load_saved_model(tiny_model['saved_model'])
  new = loaders.load_frozen_graph(tiny_frozen)
  maker = inputs.InputMaker(reference, seed=5)
  feeds = {k: maker.make(k, 200) for k in reference.signatures}
  results = compare.compare(reference, new, feeds, atol=1e-6, rtol=0)
  assert len(results) == 4 and all(r.passed for r in results), results
  # The inputs really mix trained and unseen keys: stats are non-zero for some rows only.
  stats = reference.run('embeddings', feeds['embeddings'])['user_stats']
  assert 20 < np.count_nonzero(stats[:, 0]) < 180


def test_tensorflow_baseline_loses_the_tables(tiny_model):
  """The problem this tool exists for: convert_variables_to_constants empties the tables."""
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  sig = reference.signatures['embeddings']
  outputs = [graphs.node_name(sig.outputs['user_stats'].name)]
  baseline = tf1.graph_util.convert_variables_to_constants(
      reference.session, reference.graph_def, outputs)
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(baseline, name='')
  feeds = inputs.InputMaker(reference, seed=1).make('embeddings', 100)
  with tf1.Session(graph=graph) as session:
    lost = session.run(sig.outputs['user_stats'].name,
                       {sig.inputs['user_id'].name: feeds['user_id'],
                        sig.inputs['item_id'].name: feeds['item_id']})
  assert not lost.any()
  assert reference.run('embeddings', feeds)['user_stats'].any()


# ---------------------------------------------------------------------------------------------
# Every kind of table and variable


def _build_table_model(export_dir, vocab_dir):
  """A TF1 SavedModel reading MutableHashTable (scalar and vector values), DenseHashTable,
  StaticHashTable from constants and from an asset file, a ref variable and a partitioned
  resource variable."""
  vocab = vocab_dir / 'vocab.txt'
  vocab.write_text('apple\nbanana\ncherry\n')
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    words = tf1.placeholder(tf.string, [None], name='words')
    mutable = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0,
                                                      name='mutable')
    of_tensors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, [0.0] * 3,
                                                         name='of_tensors')
    dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.float32, default_value=-2.0,
                                                  empty_key=-1, deleted_key=-3, name='dense')
    static = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['apple', 'kiwi']), tf.constant([10, 20], tf.int64)), -9, name='static')
    asset = tf.constant(str(vocab), name='vocab_path')
    tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, asset)
    from_file = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER), -1, name='from_file')
    ref_var = tf1.Variable([1.5], use_resource=False, name='ref_weight')
    emb = tf1.get_variable('emb', [10, 2], initializer=tf1.random_normal_initializer(seed=1),
                           partitioner=tf1.fixed_size_partitioner(2))
    id_score = mutable.lookup(ids) * ref_var + dense.lookup(ids)
    word_score = (tf.reduce_sum(of_tensors.lookup(words), axis=1)
                  + tf.cast(static.lookup(words) + 100 * from_file.lookup(words), tf.float32))
    embedded = tf1.nn.embedding_lookup(emb, tf.math.floormod(ids, 10))
    train = tf.group(
        mutable.insert(tf.constant([3, 5, 7], tf.int64), tf.constant([0.5, 1.5, 2.5])),
        of_tensors.insert(tf.constant(['apple', 'cherry']),
                          tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])),
        dense.insert(tf.constant([3, 11, 13], tf.int64), tf.constant([30.0, 110.0, 130.0])))
    with tf1.Session(graph=graph) as session:
      session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      session.run(train)
      session.run(dense.remove(tf.constant([13], tf.int64)))  # leaves a deleted bucket
      info = tf1.saved_model.utils.build_tensor_info
      signature = tf1.saved_model.signature_def_utils.build_signature_def(
          inputs={'ids': info(ids), 'words': info(words)},
          outputs={'id_score': info(id_score), 'word_score': info(word_score),
                   'embedded': info(embedded)},
          method_name='tensorflow/serving/predict')
      builder = tf1.saved_model.Builder(str(export_dir))
      builder.add_meta_graph_and_variables(
          session, ['serve'], signature_def_map={'serving_default': signature},
          assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
          main_op=tf1.tables_initializer())
      builder.save()


def test_every_table_kind_survives_freezing(tmp_path):
  export_dir = tmp_path / 'model'
  _build_table_model(export_dir, tmp_path)
  feeds = {'ids': np.array([3, 5, 7, 11, 13, 4, 999], np.int64),
           'words': np.array([b'apple', b'banana', b'cherry', b'kiwi', b'zzz', b'', b'apple'],
                             dtype=object)}
  reference = loaders.load_saved_model(str(export_dir))
  expected = reference.run('serving_default', feeds)
  reference.close()
  np.testing.assert_allclose(expected['id_score'],
                             [0.75 + 30, 2.25 - 2, 3.75 - 2, -1.5 + 110, -1.5 - 2, -1.5 - 2,
                              -1.5 - 2])
  np.testing.assert_allclose(expected['word_score'],
                             [6 + 10 + 0, -9 + 100, 15 - 9 + 200, 20 - 100, -9 - 100,
                              -9 - 100, 6 + 10])
  output = str(tmp_path / 'frozen.pb')
  report = freeze.graph_from_saved_model(str(export_dir), output)
  model = report.model
  assert sorted(t.name for t in report.tables) == ['dense', 'from_file', 'mutable',
                                                   'of_tensors', 'static']
  assert {t.name: t.num_keys for t in report.tables}['dense'] == 2  # empty/deleted dropped
  assert not {n.op for n in model.graph_def.node} & VARIABLE_OPS
  # The frozen graph is self-contained: no asset file, no checkpoint needed.
  shutil.rmtree(export_dir)
  (tmp_path / 'vocab.txt').unlink()
  new = loaders.load_frozen_graph(output)
  got = new.run('serving_default', feeds)
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], atol=1e-6, err_msg=key)


def test_parameter_server_devices_are_cleared(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    w = tf1.get_variable('w', initializer=tf.constant(3.0))
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0, name='t')
    y = x * w + table.lookup(tf.constant([7], tf.int64))
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      session.run(table.insert(tf.constant([7], tf.int64), tf.constant([0.25])))
      save_predict_model(session, str(tmp_path / 'ps_model'), {'x': x}, {'y': y})
  # Place state on parameter servers, as a SavedModel exported from a PS cluster has it.
  pb = tmp_path / 'ps_model' / 'saved_model.pb'
  proto = saved_model.read_saved_model_proto(str(tmp_path / 'ps_model'))
  for node in proto.meta_graphs[0].graph_def.node:
    node.device = '/job:ps/task:%d' % (hash(node.name) % 2) if node.name[0] in 'wt' else \
        '/job:worker/task:0'
  pb.write_bytes(proto.SerializeToString())
  model = freeze.graph_from_saved_model(str(tmp_path / 'ps_model'), str(tmp_path / 'f.pb')).model
  assert not any(n.device for n in model.graph_def.node)
  got = loaders.load_frozen_graph(str(tmp_path / 'f.pb')).run(
      'serving_default', {'x': np.array([1.0, 2.0], np.float32)})
  np.testing.assert_allclose(got['y'], [3.25, 6.25])


# ---------------------------------------------------------------------------------------------
# TF Serving's own models


def test_half_plus_two_all_signatures(tmp_path):
  src = tf_serving_model('saved_model_half_plus_two_cpu')
  digest = tree_digest(src)
  output = str(tmp_path / 'hp2.pb')
  model = freeze.graph_from_saved_model(src, output).model
  assert sorted(model.signatures) == ['classify_x_to_y', 'regress_x2_to_y3', 'regress_x_to_y',
                                      'regress_x_to_y2', 'serving_default']
  assert model.signatures['classify_x_to_y'].method_name == 'tensorflow/serving/classify'
  new = loaders.load_frozen_graph(output)
  run = new.run
  np.testing.assert_allclose(
      run('serving_default', {'x': np.array([[1.0], [2.0]], np.float32)})['y'],
      [[2.5], [3.0]])
  np.testing.assert_allclose(
      run('regress_x2_to_y3', {'inputs': np.array([[4.0]], np.float32)})['outputs'],
      [[5.0]])
  examples = np.array([_example(4.0)], dtype=object)
  np.testing.assert_allclose(run('regress_x_to_y', {'inputs': examples})['outputs'], [[4.0]])
  np.testing.assert_allclose(run('classify_x_to_y', {'inputs': examples})['scores'], [[4.0]])
  np.testing.assert_allclose(run('regress_x_to_y2', {'inputs': examples})['outputs'], [[5.0]])
  assert tree_digest(src) == digest


def test_stateful_signature_is_refused_and_read_only_one_freezes(tmp_path):
  src = tf_serving_model('saved_model_counter')
  output = tmp_path / 'counter.pb'
  with pytest.raises(errors.UserError, match=r"signature 'incr_counter' .* writes 'counter'"):
    freeze.graph_from_saved_model(src, str(output))
  assert not output.exists()
  freeze.graph_from_saved_model(src, str(output), signature_names=['get_counter'])
  value = tf.train.load_checkpoint(src + '/variables/variables').get_tensor('counter')
  got = loaders.load_frozen_graph(str(output)).run('get_counter', {})
  assert got['output'] == value


# ---------------------------------------------------------------------------------------------
# The command line


def test_readme_command(tiny_model, tmp_path):
  output = tmp_path / 'frozen.pb'
  proc = run_script('freezer.py', '--saved_model_dir=%s' % tiny_model['saved_model'],
                    '--output_graph=%s' % output)
  assert proc.returncode == 0, proc.stderr[-2000:]
  first = output.read_bytes()
  assert frozen_graph.frozen_from_graph_def(
      frozen_graph.read_graph_def(str(output)), 'x').table_init_op
  proc = run_script('freezer.py', '--saved_model_dir=%s' % tiny_model['saved_model'],
                    '--output_graph=%s' % output, '--signature_def=embeddings')
  assert_one_line_error(proc, 'freezer.py', str(output), '--overwrite')
  assert output.read_bytes() == first
  proc = run_script('freezer.py', '--saved_model_dir=%s' % tiny_model['saved_model'],
                    '--output_graph=%s' % output, '--signature_def=embeddings', '--overwrite')
  assert proc.returncode == 0, proc.stderr[-2000:]
  frozen = frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(str(output)), 'x')
  assert list(frozen.signatures) == ['embeddings']
  assert sorted(p.name for p in tmp_path.iterdir()) == ['frozen.pb']


def _truncated(tmp_path):
  dst = tmp_path / 'truncated'
  shutil.copytree(tf_serving_model('saved_model_half_plus_two_cpu'), dst)
  pb = dst / 'saved_model.pb'
  pb.write_bytes(pb.read_bytes()[:700])
  return str(dst), []


def _empty(tmp_path):
  (tmp_path / 'empty').mkdir()
  return str(tmp_path / 'empty'), []


BAD_INPUTS = {
    'missing_dir': (lambda p: (str(p / 'nope'), []), 'does not exist'),
    'empty_dir': (_empty, 'is empty'),
    'truncated_pb': (_truncated, 'saved_model.pb'),
    'unknown_tag': (lambda p: (tf_serving_model('saved_model_half_plus_two_cpu'),
                               ['--tags=gpu']), 'gpu'),
    'unknown_signature': (lambda p: (tf_serving_model('saved_model_half_plus_two_cpu'),
                                     ['--signature_def=nope']), "'nope'"),
    'session_bundle': (lambda p: (tf_serving_model('bad_half_plus_two'), []), 'session-bundle'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input(case, tmp_path):
  make, message = BAD_INPUTS[case]
  src, extra = make(tmp_path)
  digest = tree_digest(src) if tf.io.gfile.exists(src) else None
  output = tmp_path / 'out' / 'frozen.pb'
  with pytest.raises(errors.UserError, match=message):
    freeze.graph_from_saved_model(
        src, str(output), tags=[a.split('=')[1] for a in extra if 'tags' in a] or
        ['serve'], signature_names=[a.split('=')[1] for a in extra if 'signature' in a])
  if case in ('missing_dir', 'truncated_pb', 'session_bundle'):  # a few as the user runs them
    proc = run_script('freezer.py', '--saved_model_dir=%s' % src, '--output_graph=%s' % output,
                      *extra)
    assert_one_line_error(proc, 'freezer.py', src)
  assert not output.exists() and not output.parent.exists() or not list(output.parent.iterdir())
  if digest:
    assert tree_digest(src) == digest


def test_model_past_the_protobuf_limit_is_refused_before_loading(tiny_model, tmp_path,
                                                                 monkeypatch):
  # A real >2 GB model is built by benchmarks/benchmark.py; here the limit is lowered to the
  # tiny model's size, which exercises the same estimate from the variables index.
  index = checkpoint_index.read_index(tiny_model['saved_model'] + '/variables/variables')
  inference = sum(index.nbytes(n) for n in index.entries
                  if 'Adam' not in n and n not in ('global_step', 'beta1_power', 'beta2_power'))
  monkeypatch.setattr(frozen_graph, 'PROTOBUF_LIMIT', inference - 1)
  loads = []
  monkeypatch.setattr(tf1.saved_model.loader, 'load', lambda *a, **k: loads.append(a))
  with pytest.raises(errors.UserError, match=r'past protobuf\'s 2 GB limit.*optimize_from_ckpt'):
    freeze.graph_from_saved_model(tiny_model['saved_model'], str(tmp_path / 'f.pb'))
  assert not loads and not (tmp_path / 'f.pb').exists()
  # With room for the graph around the values it goes ahead: optimizer slots are not counted.
  monkeypatch.undo()
  monkeypatch.setattr(frozen_graph, 'PROTOBUF_LIMIT', inference + 100000)
  freeze.graph_from_saved_model(tiny_model['saved_model'], str(tmp_path / 'f.pb'))
  assert (tmp_path / 'f.pb').stat().st_size < 2 * inference + 100000


def test_streaming_and_in_memory_freezers_agree(tiny_model, tmp_path):
  meta_graph = meta_graph_of(tiny_model['saved_model'])
  signatures = saved_model.select_signatures(meta_graph, None, 'x')
  the_plan = streaming.plan(meta_graph, signatures, tiny_model['saved_model'])
  assert the_plan is not None and len(the_plan.variables) == 7  # 3 partitions + 2 layers
  assert sorted(the_plan.table_sources) == ['category_stats', 'user_stats']
  streamed, memory = str(tmp_path / 'streamed.pb'), str(tmp_path / 'memory.pb')
  freeze.graph_from_saved_model(tiny_model['saved_model'], streamed)
  freeze.graph_from_saved_model(tiny_model['saved_model'], memory, streaming_allowed=False)
  a, b = loaders.load_frozen_graph(streamed), loaders.load_frozen_graph(memory)
  reference = loaders.load_saved_model(tiny_model['saved_model'])
  feeds = {k: inputs.InputMaker(reference, seed=9).make(k, 100) for k in a.signatures}
  for key, feed in feeds.items():
    for name, value in a.run(key, feed).items():
      np.testing.assert_array_equal(value, b.run(key, feed)[name], err_msg=name)
  # Both are GraphDefs any TensorFlow tool reads; the streamed one has every weight as a Const.
  consts = {n.name for n in frozen_graph.read_graph_def(streamed).node if n.op == 'Const'}
  assert set(the_plan.variables) <= consts


def test_variables_read_through_control_flow_fall_back_to_in_memory(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    w = tf1.get_variable('w', initializer=tf.constant(3.0))
    y = tf1.cond(tf.reduce_sum(x) > 0, lambda: x * w, lambda: x - w)  # v1 Switch/Merge
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      save_predict_model(session, str(tmp_path / 'm'), {'x': x}, {'y': y})
  meta_graph = meta_graph_of(str(tmp_path / 'm'))
  signatures = saved_model.select_signatures(meta_graph, None, 'm')
  assert streaming.plan(meta_graph, signatures, str(tmp_path / 'm')) is None
  freeze.graph_from_saved_model(str(tmp_path / 'm'), str(tmp_path / 'f.pb'))
  run = loaders.load_frozen_graph(str(tmp_path / 'f.pb')).run
  np.testing.assert_allclose(run('serving_default', {'x': np.array([1.0, 2.0], np.float32)})['y'],
                             [3.0, 6.0])
  np.testing.assert_allclose(run('serving_default', {'x': np.array([-1.0], np.float32)})['y'],
                             [-4.0])


def test_streaming_freezer_keeps_dense_and_scalar_tables(tmp_path):
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.float32, default_value=-2.0,
                                                  empty_key=-1, deleted_key=-3, name='dense')
    scalar = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, -1, name='scalar')
    w = tf1.Variable([0.5], use_resource=False, name='w')  # a ref variable
    y = dense.lookup(ids) * w + tf.cast(scalar.lookup(ids), tf.float32)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      session.run([dense.insert(tf.constant([3, 11, 13], tf.int64), tf.constant([3., 11., 13.])),
                   scalar.insert(tf.constant([3, 4], tf.int64), tf.constant([30, 40], tf.int64))])
      session.run(dense.remove(tf.constant([13], tf.int64)))
      save_predict_model(session, str(tmp_path / 'm'), {'ids': ids}, {'y': y})
  meta_graph = meta_graph_of(str(tmp_path / 'm'))
  the_plan = streaming.plan(meta_graph, saved_model.select_signatures(
      meta_graph, None, 'm'), str(tmp_path / 'm'))
  assert the_plan is not None and sorted(the_plan.table_sources) == ['dense', 'scalar']
  report = freeze.graph_from_saved_model(str(tmp_path / 'm'), str(tmp_path / 'f.pb'))
  assert {t.name: t.num_keys for t in report.tables} == {'dense': 2, 'scalar': 2}
  got = loaders.load_frozen_graph(str(tmp_path / 'f.pb')).run(
      'serving_default', {'ids': np.array([3, 4, 11, 13, 99], np.int64)})
  np.testing.assert_allclose(got['y'], [1.5 + 30, -1 + 40, 5.5 - 1, -1 - 1, -1 - 1])


def test_frozen_graph_leaves_the_reader_out(tiny_frozen):
  """The training reader (TFRecord dataset, iterator, their embedded file names) is not run by
  serving: freezer.py cuts at the signature inputs and leaves it out."""
  graph_def = frozen_graph.read_graph_def(tiny_frozen)
  ops = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function
                                          for n in f.node_def}
  assert not ops & {'IteratorGetNext', 'OneShotIterator', 'TFRecordDataset', 'MapDataset'}
  frozen = frozen_graph.frozen_from_graph_def(graph_def, tiny_frozen)
  inputs = {k: i.name for k, i in frozen.signatures['serving_default'].inputs.items()}
  assert inputs == {'category': 'category:0', 'dense': 'dense:0', 'item_id': 'item_id:0',
                    'user_id': 'user_id:0'}
  assert not [n for n in graph_def.node if n.device]


# ---------------------------------------------------------------------------------------------
# --inputs / --outputs


def _reader_model_without_signatures(export_dir):
  """A tf.data reader feeding y = x * w + 1, saved by a Builder with no signatures at all."""
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(0)  # other tests may have enabled op determinism
    data = tf.data.Dataset.from_tensor_slices(np.arange(12, dtype=np.float32).reshape(6, 2))
    x = tf1.data.make_one_shot_iterator(data.batch(3)).get_next()
    w = tf1.get_variable('w', initializer=tf.constant([[1.0], [3.0]]))
    tf.add(tf.matmul(x, w), 1.0, name='y')
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      builder = tf1.saved_model.Builder(str(export_dir))
      builder.add_meta_graph_and_variables(session, ['serve'])
      builder.save()
  return str(export_dir)


def test_inputs_and_outputs_freeze_a_model_without_signatures(tmp_path, capsys):
  from test_bad_input_matrix import run_main
  model = _reader_model_without_signatures(tmp_path / 'm')
  out = str(tmp_path / 'f.pb')
  code, err = run_main('freezer', ['--saved_model_dir=' + model, '--output_graph=' + out], capsys)
  assert code == 1 and 'has no signatures' in err and '--inputs and --outputs' in err, err
  code, err = run_main('freezer', ['--saved_model_dir=' + model, '--output_graph=' + out,
                                   '--inputs=IteratorGetNext:0', '--outputs=y:0'], capsys)
  assert code == 0, err
  frozen = loaders.load_frozen_graph(out)
  sig = frozen.signatures['serving_default']
  assert list(frozen.signatures) == ['serving_default']
  assert (sorted(sig.inputs), sorted(sig.outputs)) == (['IteratorGetNext'], ['y'])
  got = frozen.run('serving_default', {'IteratorGetNext': np.float32([[1, 1], [2, 0]])})
  np.testing.assert_array_equal(got['y'], [[5.0], [3.0]])
  ops = {n.op for n in frozen.graph_def.node}
  assert 'IteratorGetNext' not in ops and 'VarHandleOp' not in ops  # reader cut, w frozen


def test_inputs_and_outputs_replace_the_signatures(tmp_path):
  """As on optimize_from_pb.py and optimize_from_ckpt.py: one signature, serving_default, over
  the tensors named (keys from their node names), in place of the SavedModel's own."""
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    half = tf.multiply(x, 0.5, name='half')
    y = tf.add(half, 2.0, name='y')
    with tf1.Session() as session:
      save_predict_model(session, tmp_path / 'm', {'input': x}, {'output': y})
  model = str(tmp_path / 'm')
  out = tmp_path / 'f.pb'
  result = freeze.graph_from_saved_model(model, str(out), inputs=['x:0'],
                                         outputs=['half:0', 'y:0'])
  assert {k: (sorted(s.inputs), sorted(s.outputs))
          for k, s in result.model.signatures.items()} == {
              'serving_default': (['x'], ['half', 'y'])}
  got = loaders.load_frozen_graph(str(out)).run('serving_default', {'x': np.float32([1, 2])})
  np.testing.assert_array_equal(got['y'], [2.5, 3.0])
  np.testing.assert_array_equal(got['half'], [0.5, 1.0])
  for kwargs, message in (
      (dict(inputs=['x:0']), 'give both --inputs and --outputs'),
      (dict(inputs=['x:0'], outputs=['y:0'], signature_names=['serving_default']),
       '--signature_def chooses among the signatures'),
      (dict(inputs=['x:0'], outputs=['nope:0']), '--outputs names nope:0')):
    with pytest.raises(errors.UserError, match=message):
      freeze.graph_from_saved_model(model, str(tmp_path / 'g.pb'), **kwargs)
  module = tf.Module()
  module.serve = tf.function(lambda x: {'y': x + 1.0},
                             input_signature=[tf.TensorSpec([None], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'tf2'), signatures=module.serve)
  with pytest.raises(errors.UserError, match='apply to TF1 SavedModels.*--signature_def'):
    freeze.graph_from_saved_model(str(tmp_path / 'tf2'), str(tmp_path / 'g.pb'),
                                  inputs=['serving_default_x:0'], outputs=['Identity:0'])
  assert not (tmp_path / 'g.pb').exists()
