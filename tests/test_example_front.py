"""--serving_input=examples (transforms/example_front.py) on both paths.

The proof: TFRecords read by the training graph's own reader (the SavedModel's dataset pointed
at the test's records) answer exactly as the serving model answers the same records given to
its `examples` input, on the census reader-fed model (sparse features, vocabulary files) and
model_gen's demo model (hash tables), through the freeze path and the checkpoint path.
"""

import dataclasses
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from conftest import TINY
from conftest import run_main
import freezer  # the scripts, whose --serving_input flag is run in-process
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.demo import recsys_model
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.freeze import in_memory
from freezerlib.transforms import example_front
from freezerlib.verify import loaders
import optimize_from_ckpt
import optimize_from_pb
import real_models

tf1 = tf.compat.v1
ATOL = 1e-6


def _write_records(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example)
  return str(path)


def _pointed_at(saved_model_dir, data_files, records, out_dir):
  """A copy of a training SavedModel whose reader reads `records` instead of `data_files`:
  every string constant listing the data files (in the graph and in its dataset functions;
  by base name: model_gen wrote them in a directory since renamed) lists `records`."""
  shutil.copytree(saved_model_dir, out_dir)
  proto = saved_model.read_saved_model_proto(str(out_dir))
  wanted = sorted(os.path.basename(p) for p in data_files)
  patched = 0
  for graph_nodes in [proto.meta_graphs[0].graph_def.node] + [
      f.node_def for f in proto.meta_graphs[0].graph_def.library.function]:
    for node in graph_nodes:
      tensor = node.attr['value'].tensor if node.op == 'Const' else None
      if tensor is not None and tensor.dtype == tf.string.as_datatype_enum and sorted(
          os.path.basename(v.decode('utf-8', 'replace')) for v in tensor.string_val) == wanted:
        del tensor.string_val[:]
        tensor.string_val.append(records.encode())
        tensor.tensor_shape.dim[0].size = 1
        patched += 1
      if '_output_shapes' in node.attr:  # stale for what follows the file names
        del node.attr['_output_shapes']
  assert patched, 'no constant lists %s' % data_files
  with open(os.path.join(out_dir, 'saved_model.pb'), 'wb') as f:
    f.write(proto.SerializeToString())
  return str(out_dir)


def _reader_answers(training_dir, sig_key, id_key, batches):
  """{row id: {output: row}} of signature `sig_key` on what the graph's own reader yields
  (`batches` batches), rows told apart by the reader output `id_key`."""
  model = loaders.load_saved_model(training_dir)
  try:
    sig = model.signatures[sig_key]
    keys = sorted(sig.outputs)
    fetches = [sig.outputs[k].name for k in keys] + [sig.inputs[id_key].name]
    answers = {}
    for _ in range(batches):
      values = model.session.run(fetches)
      for i, row_id in enumerate(values[-1]):
        answers[tuple(np.ravel(row_id).tolist())] = {k: v[i] for k, v in zip(keys, values)}
    return answers
  finally:
    model.close()


def _assert_answers_as_the_reader(serving_dir, sig_key, answers, records_by_id, capi=None):
  """The serving model's `examples` input, given the records the reader read, answers alike."""
  ids = sorted(answers)
  examples = np.array([records_by_id[i] for i in ids], dtype=object)
  runs = [loaders.load_saved_model(serving_dir).run(sig_key, {'examples': examples})]
  if capi:
    runs += capi_runner.run_signatures(capi, serving_dir,
                                       {sig_key: {'examples': examples}}).values()
  worst = 0.0
  for got in runs:
    assert sorted(got) == sorted(answers[ids[0]])
    for key, values in got.items():
      want = np.stack([answers[i][key] for i in ids])
      assert values.shape == want.shape, (key, values.shape, want.shape)
      worst = max(worst, float(np.max(np.abs(values.astype(np.float64) - want))))
  assert worst <= ATOL, worst
  print('%s %s: %d records through the reader and through `examples`: max abs %.3g'
        % (serving_dir, sig_key, len(ids), worst))
  return worst


# ---------------------------------------------------------------------------------------------
# Census: sparse features, vocabulary files, a required label


@pytest.fixture(scope='module')
def census_records(census, tmp_path_factory):
  """64 census records (a third with unseen values), each with its own age and with the
  label the training reader requires; and the training SavedModel reading them."""
  rows = real_models.census_rows(64, seed=21, unseen=True)
  for i, row in enumerate(rows):
    row['age'] = [17.0 + 0.5 * i]
    row.setdefault(real_models.LABEL, [float(i % 2)])
  examples = [e for e in real_models.serialized_examples(rows)]
  root = tmp_path_factory.mktemp('census_records')
  path = _write_records(root / 'serving.tfrecord', examples)
  training = _pointed_at(census['reader_fed'], census['data'], path, root / 'training')
  by_id = {(row['age'][0],): e for row, e in zip(rows, examples)}
  return {'training': training, 'by_id': by_id, 'rows': rows,
          'answers': _reader_answers(training, 'serving_default', 'age', 6)}


def test_census_examples_freeze_path_answers_as_the_reader(census, census_records, tmp_path,
                                                           capi):
  frozen = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(census['reader_fed'], frozen, serving_input='examples')
  serving = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, serving, serving_input='examples')
  answers = census_records['answers']
  assert len(answers) >= 40
  _assert_answers_as_the_reader(serving, 'serving_default', answers, census_records['by_id'],
                                capi)
  sig = loaders.load_saved_model(serving).signatures['serving_default']
  assert list(sig.inputs) == ['examples']
  assert sig.inputs['examples'].dtype == tf.string.as_datatype_enum
  assert [d.size for d in sig.inputs['examples'].tensor_shape.dim] == [-1]
  # Neither the reader nor its files are left; the parse op is the reader's own, trimmed.
  graph_def = frozen_graph.read_graph_def(frozen)
  ops = {n.op for n in graph_def.node}
  assert not ops & {'IteratorGetNext', 'OneShotIterator', 'TFRecordDataset', 'MapDataset'}
  [parse] = [n for n in graph_def.node if n.op == 'ParseExampleV2']
  [dense_keys] = [n for n in graph_def.node if n.name == parse.input[3]]
  dense = [v.decode() for v in dense_keys.attr['value'].tensor.string_val]
  assert sorted(dense) == ['age', 'capital_gain', 'hours_per_week']  # no income_bracket


def test_census_label_is_not_required_at_serving(census, census_records, tmp_path):
  """A record without the label the training spec required is answered (and alike)."""
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(census['checkpoint'], out,
                                              saved_model_dir=census['reader_fed'],
                                              serving_input='examples')
  answers = census_records['answers']
  _assert_answers_as_the_reader(out, 'serving_default', answers, census_records['by_id'])
  unlabelled = []
  for row in census_records['rows']:
    row = {k: v for k, v in row.items() if k != real_models.LABEL}
    unlabelled.append(real_models.to_example(row).SerializeToString())
  model = loaders.load_saved_model(out)
  with_label = model.run('serving_default', {'examples': np.array(
      [census_records['by_id'][(r['age'][0],)] for r in census_records['rows']], object)})
  without = model.run('serving_default', {'examples': np.array(unlabelled, object)})
  for key in with_label:
    np.testing.assert_array_equal(with_label[key], without[key])


# ---------------------------------------------------------------------------------------------
# model_gen's demo model: hash tables, a partitioned embedding, two signatures


@pytest.fixture(scope='module')
def demo_records(tiny_model, tmp_path_factory):
  config = dataclasses.replace(TINY, seed=99, num_examples=64)
  data = recsys_model.generate_examples(config)
  # Half the users are ones training saw, so the tables' contents matter.
  trained = recsys_model.generate_examples(TINY)['user_id']
  data['user_id'][::2] = trained[:32]
  rows = [{k: v[i] for k, v in data.items()} for i in range(64)]
  examples = [recsys_model.make_example(r).SerializeToString() for r in rows]
  root = tmp_path_factory.mktemp('demo_records')
  path = _write_records(root / 'serving.tfrecord', examples)
  data_files = sorted(tf.io.gfile.glob(os.path.join(tiny_model['data'], '*')))
  training = _pointed_at(tiny_model['saved_model'], data_files, path, root / 'training')
  by_id = {tuple(r['dense'].tolist()): e for r, e in zip(rows, examples)}
  return {'by_id': by_id,
          'answers': _reader_answers(training, 'serving_default', 'dense', 6)}


@pytest.mark.parametrize('path', ['freeze', 'checkpoint'])
def test_demo_model_examples_answers_as_the_reader(path, tiny_model, demo_records, tmp_path):
  serving = str(tmp_path / 'serving')
  if path == 'freeze':
    frozen = str(tmp_path / 'frozen.pb')
    result = freeze.graph_from_saved_model(tiny_model['saved_model'], frozen,
                                           serving_input='examples')
    assert result.freezer == 'streaming'
    from_frozen.saved_model_from_frozen_graph(frozen, serving)
  else:
    from_checkpoint.saved_model_from_checkpoint(tiny_model['checkpoint'], serving,
                                                saved_model_dir=tiny_model['saved_model'],
                                                serving_input='examples')
  answers = demo_records['answers']
  assert len(answers) >= 40
  _assert_answers_as_the_reader(serving, 'serving_default', answers, demo_records['by_id'])
  signatures = loaders.load_saved_model(serving).signatures
  # Two floats per example (logit, probability): neither Classify nor Regress applies.
  assert sorted(signatures) == ['embeddings', 'serving_default']
  assert {k: list(v.inputs) for k, v in signatures.items()} == {
      'embeddings': ['examples'], 'serving_default': ['examples']}


# ---------------------------------------------------------------------------------------------
# Classify and Regress


def _classifier(out_dir, records):
  """A reader-fed model with `scores` and `classes` outputs (serving_default) and one
  probability per example (`probability`); untrained, seeded."""
  spec = {'word': tf.io.VarLenFeature(tf.string),
          'x': tf.io.FixedLenFeature([1], tf.float32),
          'label': tf.io.FixedLenFeature([1], tf.float32)}
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(3)
    dataset = (tf.data.TFRecordDataset([records]).repeat().batch(8)
               .map(lambda s: tf.io.parse_example(s, spec)))
    features = tf1.data.make_one_shot_iterator(dataset).get_next()
    table = tf.lookup.StaticVocabularyTable(tf.lookup.KeyValueTensorInitializer(
        ['a', 'b', 'c'], np.arange(3, dtype=np.int64)), num_oov_buckets=1)
    ids = tf.SparseTensor(features['word'].indices, table.lookup(features['word'].values),
                          features['word'].dense_shape)
    embedding = tf1.get_variable('embedding', [4, 2])
    logits = (tf.nn.safe_embedding_lookup_sparse(embedding, ids, combiner='sum') +
              features['x'] * tf1.get_variable('w', [1, 2]))
    scores = tf.nn.softmax(logits)
    classes = tf.tile(tf.constant([[b'no', b'yes']]), [tf.shape(scores)[0], 1])
    info = tf1.saved_model.build_tensor_info
    inputs = {k: info(v) for k, v in features.items() if k != 'label'}
    build = tf1.saved_model.signature_def_utils.build_signature_def
    with tf1.Session() as sess:
      sess.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      builder = tf1.saved_model.Builder(out_dir)
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': build(inputs, {'scores': info(scores), 'classes': info(classes)},
                                   example_front.PREDICT_METHOD),
          'probability': build(inputs, {'probability': info(scores[:, 1:])},
                               example_front.PREDICT_METHOD)},
                                           main_op=tf1.tables_initializer())
      builder.save()
  return out_dir


def test_classify_and_regress_signatures(tmp_path, capsys):
  """The scripts' --serving_input=examples on a model with `scores` and `classes` outputs and
  one with one probability per example."""
  rng = np.random.RandomState(0)
  examples = []
  for i in range(20):
    feature = {'x': tf.train.Feature(float_list=tf.train.FloatList(value=[rng.normal()])),
               'word': tf.train.Feature(bytes_list=tf.train.BytesList(
                   value=[w.encode() for w in rng.choice(['a', 'b', 'c', 'zz'], i % 3)]))}
    if i % 2:
      feature['label'] = tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))
    examples.append(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())
  records = _write_records(tmp_path / 'train.tfrecord', examples)
  model_dir = _classifier(str(tmp_path / 'model'), records)
  serving = str(tmp_path / 'serving')
  frozen = str(tmp_path / 'frozen.pb')
  assert run_main(freezer, ['--saved_model_dir=%s' % model_dir, '--output_graph=%s' % frozen,
                            '--serving_input=examples'], capsys) == (0, '')
  # Already fed with serialized tf.Example: the flag changes nothing more.
  assert run_main(optimize_from_pb, ['--input_graph=%s' % frozen, '--serving_input=examples',
                                     '--output_saved_model_dir=%s' % serving], capsys) == (0, '')
  model = loaders.load_saved_model(serving)
  methods = {k: (v.method_name.rsplit('/', 1)[1], sorted(v.inputs), sorted(v.outputs))
             for k, v in model.signatures.items()}
  assert methods == {
      'serving_default': ('predict', ['examples'], ['classes', 'scores']),
      'classification': ('classify', ['inputs'], ['classes', 'scores']),
      'probability': ('predict', ['examples'], ['probability']),
      'probability_regression': ('regress', ['inputs'], ['outputs'])}
  batch = np.array(examples, dtype=object)
  predicted = model.run('serving_default', {'examples': batch})
  classified = model.run('classification', {'inputs': batch})
  np.testing.assert_array_equal(classified['scores'], predicted['scores'])
  np.testing.assert_array_equal(classified['classes'][0], [b'no', b'yes'])
  regressed = model.run('probability_regression', {'inputs': batch})['outputs']
  np.testing.assert_array_equal(regressed[:, 0], predicted['scores'][:, 1])
  # What the training graph computes from the same records, parsed as its reader parses.
  spec = {'word': tf.io.VarLenFeature(tf.string), 'x': tf.io.FixedLenFeature([1], tf.float32)}
  parsed = tf.io.parse_example(batch, spec)
  feeds = {'word': loaders.sparse_value(parsed['word'].indices, parsed['word'].values,
                                        parsed['word'].dense_shape), 'x': parsed['x'].numpy()}
  reference = loaders.load_saved_model(model_dir).run('serving_default', feeds)
  np.testing.assert_allclose(predicted['scores'], reference['scores'], rtol=0, atol=ATOL)
  # The checkpoint path gives the same signatures.
  from_ckpt = str(tmp_path / 'from_ckpt')
  assert run_main(optimize_from_ckpt, [
      '--saved_model_dir=%s' % model_dir, '--output_saved_model_dir=%s' % from_ckpt,
      '--checkpoint=%s' % os.path.join(model_dir, 'variables', 'variables'),
      '--serving_input=examples'], capsys) == (0, '')
  again = loaders.load_saved_model(from_ckpt)
  assert sorted(again.signatures) == sorted(methods)
  np.testing.assert_array_equal(again.run('classification', {'inputs': batch})['scores'],
                                classified['scores'])


# ---------------------------------------------------------------------------------------------
# optimize_from_pb.py on a frozen graph that still holds its reader; where there is no reader


def test_frozen_graph_with_its_reader_gets_the_front(census, census_records, tmp_path):
  """A frozen graph whose signatures are still fed at the reader (frozen in a session, not
  cut): optimize_from_pb.py --serving_input=examples finds the reader in it."""
  graph = tf.Graph()
  with tf1.Session(graph=graph) as session:
    tf1.saved_model.loader.load(session, ['serve'], census['reader_fed'])
    signatures = dict(saved_model.select_meta_graph(
        saved_model.read_saved_model_proto(census['reader_fed']), ['serve'],
        census['reader_fed']).signature_def)
    model, _, _ = in_memory.freeze_session(session, graph.as_graph_def(), signatures, ['serve'])
  assert 'IteratorGetNext' in {n.op for n in model.graph_def.node}
  frozen = str(tmp_path / 'with_reader.pb')
  frozen_graph.write_graph_def(frozen_graph.frozen_to_graph_def(model), frozen)
  serving = str(tmp_path / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, serving, serving_input='examples')
  _assert_answers_as_the_reader(serving, 'serving_default', census_records['answers'],
                                census_records['by_id'])


def test_no_reader_is_one_line(census, history, tmp_path):
  frozen = str(tmp_path / 'frozen.pb')
  freeze.graph_from_saved_model(census['reader_fed'], frozen)  # the reader is cut
  with pytest.raises(errors.UserError, match='no signature input comes from a tf.data') as e:
    from_frozen.saved_model_from_frozen_graph(frozen, str(tmp_path / 'out'),
                                              serving_input='examples')
  assert frozen in str(e.value) and '\n' not in str(e.value)
  with pytest.raises(errors.UserError, match='tf.saved_model.save'):
    freeze.graph_from_saved_model(history['tf2_module'], str(tmp_path / 'tf2.pb'),
                                  serving_input='examples')
  with pytest.raises(errors.UserError, match='TF2 SavedModel'):
    from_checkpoint.saved_model_from_checkpoint(history['checkpoint'], str(tmp_path / 'o2'),
                                                saved_model_dir=history['tf2_module'],
                                                serving_input='examples')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['frozen.pb']
