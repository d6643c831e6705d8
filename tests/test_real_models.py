"""The scripts' library on models as users write them (tests/real_models.py), end to end.

Each model goes through the README's path: freeze -> re-dump -> compare, and the checkpoint
path with the SavedModel as structure and the training checkpoint. Every converted model must
answer as the original within 1e-6 on inputs that include values training never saw (hash
keys, vocabulary misses, empty and multi-valued features, rows without the label).

The asset cases (a vocabulary file listed three
times, trusted on the checkpoint path, an asset escaping assets/) are test_asset_policy.py's.
"""

import io
import os

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from freezerlib import freeze
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import saved_model
from freezerlib.verify import compare
from freezerlib.verify import inputs
from freezerlib.verify import loaders
import real_models

tf1 = tf.compat.v1
ATOL = 1e-6


def _run_saved_model(export_dir, feeds_by_signature):
  """{sig: {output: value}} through the TF1 loader (restore, then the init op), as TF Serving."""
  model = loaders.load_saved_model(str(export_dir))
  try:
    return {k: model.run(k, feeds) for k, feeds in feeds_by_signature.items()}
  finally:
    model.close()


def _assert_same(got, expected):
  assert sorted(got) == sorted(expected)
  for key in expected:
    assert sorted(got[key]) == sorted(expected[key]), key
    for out, want in expected[key].items():
      max_abs, _, passed, detail = compare.compare_arrays(want, got[key][out], ATOL, 0)
      assert passed, (key, out, max_abs, detail)


def _encodings(export_dir, sig_key='serving_default'):
  """{input key: 'name' | 'coo_sparse' | 'composite_tensor'} of a SavedModel's signature."""
  proto = saved_model.read_saved_model_proto(str(export_dir))
  meta_graph = saved_model.select_meta_graph(proto, ['serve'], str(export_dir))
  return {k: v.WhichOneof('encoding')
          for k, v in meta_graph.signature_def[sig_key].inputs.items()}


def _parsed(serialized, spec):
  """What the training reader yields for these records: tf.io.parse_example's result, with
  SparseTensors as SparseTensorValues of numpy arrays and dense tensors as numpy arrays."""
  out = {}
  for key, value in tf.io.parse_example(serialized, spec).items():
    if isinstance(value, tf.SparseTensor):
      out[key] = loaders.sparse_value(value.indices, value.values, value.dense_shape)
    elif isinstance(value, tf.RaggedTensor):
      out[key] = value
    else:
      out[key] = value.numpy()
  return out


def _tf2_kwargs(feeds):
  """Keyword arguments of a TF1 signature loaded by tf.saved_model.load: TF flattens a sparse
  input `k` into `k_indices`, `k_values`, `k_dense_shape`."""
  kwargs = {}
  for key, value in feeds.items():
    if isinstance(value, tf1.SparseTensorValue):
      kwargs.update({key + '_indices': tf.constant(value.indices),
                     key + '_values': tf.constant(value.values),
                     key + '_dense_shape': tf.constant(value.dense_shape)})
    else:
      kwargs[key] = tf.constant(value)
  return kwargs


def _check(reference, new, **kwargs):
  return compare.check(reference, new, batch_sizes=(), out=io.StringIO(), **kwargs)


def _freeze_and_redump(src, out_dir, **kwargs):
  """freeze.graph_from_saved_model then from_frozen, as the README's steps 2 and 3."""
  os.makedirs(out_dir, exist_ok=True)
  frozen = os.path.join(out_dir, 'frozen.pb')
  freeze.graph_from_saved_model(str(src), frozen, **kwargs)
  serving = os.path.join(out_dir, 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, serving, **kwargs)
  return frozen, serving


# ---------------------------------------------------------------------------------------------
# Census wide & deep on feature columns


@pytest.fixture(scope='module')
def census_rows():
  """Rows for serving: about a third with values training never saw, some without a label."""
  rows = real_models.census_rows(120, seed=77, unseen=True)
  assert any(real_models.LABEL not in r for r in rows)
  assert any('Unknown-degree' in r['education'] for r in rows)
  assert any('occupation' not in r for r in rows)
  return rows


@pytest.fixture(scope='module')
def reader_feeds(census, census_rows):
  """The reader-fed signature's inputs for census_rows: what its reader would yield."""
  return {'serving_default': _parsed(real_models.serialized_examples(census_rows),
                                     census['serving_spec'])}


@pytest.fixture(scope='module')
def reader_expected(census, reader_feeds):
  return _run_saved_model(census['reader_fed'], reader_feeds)


def test_census_models_are_what_users_export(census, census_rows, reader_expected):
  """The facts the converters meet on this model (TF 2.21), checked so a change shows."""
  encodings = _encodings(census['reader_fed'])
  assert encodings == {'education': 'coo_sparse', 'occupation': 'coo_sparse',
                       'native_country': 'coo_sparse', 'residence_country': 'coo_sparse',
                       'age': 'name', 'hours_per_week': 'name', 'capital_gain': 'name'}
  for name in ('reader_fed', 'estimator_style'):
    meta_graph = saved_model.select_meta_graph(
        saved_model.read_saved_model_proto(census[name]), ['serve'], census[name])
    # The TF1 Builder lists assets in the saved_model_assets collection, not asset_file_def:
    # one entry per table, three tables over one file (native_country is in both halves).
    assert not meta_graph.asset_file_def
    assets = saved_model.asset_defs(meta_graph)
    assert [a.filename for a in assets] == ['countries.txt'] * 3
    assert os.listdir(os.path.join(census[name], 'assets')) == ['countries.txt']
    # legacy_init_op= and main_op= both land in the saved_model_main_op collection.
    assert list(meta_graph.collection_def['saved_model_main_op'].node_list.value)
    partitions = [n.name for n in meta_graph.graph_def.node if n.op == 'VarHandleOp' and
                  n.name.split('/')[-2:-1] == ['embedding_weights'] and 'occupation' in n.name]
    assert len(partitions) == 3, partitions
  library = saved_model.select_meta_graph(
      saved_model.read_saved_model_proto(census['reader_fed']), ['serve'],
      census['reader_fed']).graph_def.library
  parsers = [f.signature.name for f in library.function
             if any(n.op == 'ParseExampleV2' for n in f.node_def)]
  assert len(parsers) == 1 and 'Dataset_map' in parsers[0], parsers
  # The reader-fed training graph and the Estimator-style export answer alike: the same
  # records, parsed by the reader's spec or by the serving placeholder's parser.
  via_examples = _run_saved_model(
      census['estimator_style'],
      {'predict': {'examples': real_models.serialized_examples(census_rows)}})
  for key in ('logits', 'logistic', 'probabilities', 'class_ids'):
    np.testing.assert_allclose(reader_expected['serving_default'][key],
                               via_examples['predict'][key], rtol=0, atol=ATOL, err_msg=key)
  logistic = reader_expected['serving_default']['logistic']
  assert np.std(logistic) > 0.02  # trained: the inputs matter


@pytest.fixture(scope='module')
def reader_fed_redumped(census, tmp_path_factory):
  """(frozen .pb, serving SavedModel) of the reader-fed census model."""
  return _freeze_and_redump(census['reader_fed'], str(tmp_path_factory.mktemp('rf_redump')))


def test_reader_fed_census_freezes_and_redumps_with_sparse_inputs(reader_feeds, reader_expected,
                                                                  reader_fed_redumped, census):
  frozen, serving = reader_fed_redumped
  # The same keys, sparse ones still coo_sparse: a client's request does not change.
  assert _encodings(serving) == _encodings(census['reader_fed'])
  sig = saved_model.select_meta_graph(saved_model.read_saved_model_proto(serving), ['serve'],
                                      serving).signature_def['serving_default']
  assert sig.inputs['education'].coo_sparse.indices_tensor_name == 'education/indices:0'
  _assert_same(_run_saved_model(serving, reader_feeds), reader_expected)
  model = loaders.load_frozen_graph(frozen)
  try:
    _assert_same({k: model.run(k, f) for k, f in reader_feeds.items()}, reader_expected)
  finally:
    model.close()
  ops = {n.op for n in loaders.load_saved_model(serving).graph_def.node}
  assert not ops & {'IteratorGetNext', 'OneShotIterator', 'DeserializeSparse',
                    'ResourceApplyFtrl', 'ResourceApplyAdagrad', 'VarHandleOp'}


def test_reader_fed_census_redumped_serves_through_tf2_loader(census, reader_feeds,
                                                              reader_fed_redumped):
  _, serving = reader_fed_redumped
  kwargs = _tf2_kwargs(reader_feeds['serving_default'])
  expected = tf.saved_model.load(census['reader_fed']).signatures['serving_default'](**kwargs)
  got = tf.saved_model.load(serving).signatures['serving_default'](**kwargs)
  _assert_same({'s': {k: v.numpy() for k, v in got.items()}},
               {'s': {k: v.numpy() for k, v in expected.items()}})


def test_reader_fed_census_redumped_serves_through_the_c_api(reader_feeds, reader_expected,
                                                             reader_fed_redumped, capi):
  """TF Serving's loader: the client feeds the sparse inputs' component tensors by name."""
  _, serving = reader_fed_redumped
  _assert_same(capi_runner.run_signatures(capi, serving, reader_feeds), reader_expected)


def test_reader_fed_census_compares_with_generated_and_recorded_inputs(census,
                                                                       reader_fed_redumped):
  """optimize_from_pb_test.py's check builds sparse inputs (vocabulary words and unseen ones)
  and reads the training TFRecords, and finds the re-dumped model equal."""
  _, serving = reader_fed_redumped
  reference = loaders.load_saved_model(census['reader_fed'])
  new = loaders.load_saved_model(serving)
  feeds = inputs.InputMaker(reference, seed=3).make('serving_default', 64)
  words = set(np.asarray(feeds['education'].values).tolist())
  assert words & {w.encode() for w in real_models.EDUCATION}
  assert words - {w.encode() for w in real_models.EDUCATION}
  countries = set(np.asarray(feeds['native_country'].values).tolist())
  assert countries & {w.encode() for w in real_models.COUNTRIES}  # from the vocabulary file
  rows = np.bincount(feeds['education'].indices[:, 0], minlength=64)
  assert rows.min() == 0 and rows.max() > 1  # empty and multi-valued rows
  passed, results = _check(reference, new)
  assert passed and len(results) == 4, results
  passed, results = _check(reference, new, inputs=census['data'])
  assert passed and len(results) == 4, results


def test_reader_fed_census_from_checkpoint(census, reader_feeds, reader_expected, tmp_path, capi):
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(census['checkpoint'], out,
                                              saved_model_dir=census['reader_fed'])
  assert _encodings(out) == _encodings(census['reader_fed'])
  _assert_same(_run_saved_model(out, reader_feeds), reader_expected)
  _assert_same(capi_runner.run_signatures(capi, out, reader_feeds), reader_expected)
  assert os.listdir(os.path.join(out, 'assets')) == ['countries.txt']


@pytest.fixture(scope='module')
def example_feeds(census_rows):
  """The Estimator-style signatures' inputs for census_rows: serialized tf.Example."""
  examples = real_models.serialized_examples(census_rows)
  return {'serving_default': {'inputs': examples}, 'classification': {'inputs': examples},
          'regression': {'inputs': examples}, 'predict': {'examples': examples}}


def test_estimator_style_census_freezes_and_redumps(census, example_feeds, tmp_path):
  _, serving = _freeze_and_redump(census['estimator_style'], str(tmp_path))
  reference = loaders.load_saved_model(census['estimator_style'])
  new = loaders.load_saved_model(serving)
  _assert_same({k: new.run(k, f) for k, f in example_feeds.items()},
               {k: reference.run(k, f) for k, f in example_feeds.items()})
  methods = {k: v.method_name for k, v in new.signatures.items()}
  assert methods == {'serving_default': 'tensorflow/serving/classify',
                     'classification': 'tensorflow/serving/classify',
                     'regression': 'tensorflow/serving/regress',
                     'predict': 'tensorflow/serving/predict'}
  passed, results = _check(reference, new)  # serialized tf.Example with vocabulary words
  assert passed and len(results) == 11, results


# ---------------------------------------------------------------------------------------------
# A CTR model on feature columns (identity ids into partitioned embeddings, shared embeddings,
# weighted tags, crosses, FTRL)


@pytest.fixture(scope='module')
def ctr(tmp_path_factory):
  return real_models.feature_column_ctr(str(tmp_path_factory.mktemp('ctr')))


def test_feature_column_ctr_compares_with_generated_inputs(ctr, tmp_path):
  """optimize_from_pb_test.py's generated inputs fit the columns: identity ids inside their
  buckets (past them, the partitioned embedding's partition index fails), a weighted
  column's ids and weights with the same indices; the reference answers and the re-dumped
  model is found equal."""
  _, serving = _freeze_and_redump(ctr['reader_fed'], str(tmp_path))
  reference = loaders.load_saved_model(ctr['reader_fed'])
  feeds = inputs.InputMaker(reference, seed=3).make('serving_default', 64)
  for key, buckets in (('user_id', real_models.CTR_USERS), ('item_id', real_models.CTR_ITEMS),
                       ('clicked_items', real_models.CTR_ITEMS)):
    values = np.asarray(feeds[key].values)
    assert len(values) and values.min() >= 0 and values.max() < buckets, key
  np.testing.assert_array_equal(feeds['tag'].indices, feeds['tag_weight'].indices)
  assert len(set(feeds['user_id'].values.tolist())) > 10
  reference.run('serving_default', feeds)  # answers, no error
  new = loaders.load_saved_model(serving)
  passed, results = _check(reference, new)
  assert passed and len(results) == 2, results
  passed, results = _check(reference, new, inputs=ctr['data'])
  assert passed and len(results) == 2, results


# ---------------------------------------------------------------------------------------------
# Keras 3 with preprocessing layers


@pytest.fixture(scope='module')
def keras_model(tmp_path_factory):
  return real_models.keras3_preprocessing(str(tmp_path_factory.mktemp('keras3')), epochs=1)


def _keras_feeds(kind):
  """Inputs for a Keras export's serving_default, by its signature's own input keys."""
  values = real_models.keras_inputs(80, seed=5, unseen=True)
  if kind == 'exported':  # model.export keeps the Input names
    return values
  # tf.saved_model.save names a dict-input model's inputs `inputs`, `inputs_1`, ... in the
  # sorted order of the dict's keys.
  names = ['inputs'] + ['inputs_%d' % i for i in range(1, len(values))]
  return dict(zip(names, [values[k] for k in sorted(values)]))


@pytest.mark.parametrize('kind', ['exported', 'saved'])
def test_keras3_preprocessing_freezes_and_redumps(keras_model, kind, tmp_path):
  src = keras_model[kind]
  feeds = _keras_feeds(kind)
  loaded = tf.saved_model.load(src)
  keys = sorted(k for k in loaded.signatures)
  assert keys == (['serve', 'serving_default'] if kind == 'exported' else ['serving_default'])
  expected = {k: {o: v.numpy() for o, v in loaded.signatures[k](
      **{i: tf.constant(a) for i, a in feeds.items()}).items()} for k in keys}
  frozen, serving = _freeze_and_redump(src, str(tmp_path))
  _assert_same(_run_saved_model(serving, {k: feeds for k in keys}), expected)
  reference = loaders.load_saved_model(src)
  new = loaders.load_saved_model(serving)
  # Generated users come from StringLookup's vocabulary, read from the TF2 loader's table.
  generated = inputs.InputMaker(reference, seed=1).make('serving_default', 64)
  user_key = 'user' if kind == 'exported' else 'inputs_3'
  users = set(np.ravel(generated[user_key]).tolist())
  assert users & {u.encode() for u in real_models.KERAS_USERS}, users
  passed, results = _check(reference, new)
  assert passed and len(results) == len(keys), results
  # The vocabularies kept their contents: known users and items score differently from
  # unseen ones (all unseen would map to the OOV row).
  scores = expected['serving_default']['output_0'][:, 0]
  assert np.std(scores) > 1e-3
  assert os.path.exists(frozen)


# ---------------------------------------------------------------------------------------------
# A RaggedTensor reader output and a RaggedTensorSpec signature


@pytest.fixture(scope='module')
def history_batch(history):
  """The reader's parse of serving rows (with unseen items, empty histories, no labels)."""
  rows = real_models.history_rows(90, seed=8, unseen=True)
  assert any(not r['history'] for r in rows)
  serialized = [real_models.history_example(r).SerializeToString() for r in rows]
  spec = {k: v for k, v in history['feature_spec'].items() if k != 'clicked'}
  return tf.io.parse_example(serialized, spec)


@pytest.fixture(scope='module')
def history_feeds(history_batch):
  return {'serving_default': {'history': history_batch['history'],
                              'user_age': history_batch['user_age'].numpy()}}


def test_ragged_reader_fed_freezes_and_redumps(history, history_feeds, tmp_path, capi):
  assert _encodings(history['reader_fed']) == {'history': 'composite_tensor',
                                               'user_age': 'name'}
  expected = _run_saved_model(history['reader_fed'], history_feeds)
  _, serving = _freeze_and_redump(history['reader_fed'], str(tmp_path))
  assert _encodings(serving) == _encodings(history['reader_fed'])
  _assert_same(_run_saved_model(serving, history_feeds), expected)
  _assert_same(capi_runner.run_signatures(capi, serving, history_feeds), expected)
  passed, results = _check(loaders.load_saved_model(history['reader_fed']),
                           loaders.load_saved_model(serving))
  assert passed and len(results) == 2, results


def test_ragged_reader_fed_from_checkpoint(history, history_feeds, tmp_path):
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(history['checkpoint'], out,
                                              saved_model_dir=history['reader_fed'])
  _assert_same(_run_saved_model(out, history_feeds),
               _run_saved_model(history['reader_fed'], history_feeds))


def test_ragged_tf2_signature_freezes_and_redumps(history, history_batch, history_feeds,
                                                  tmp_path):
  """TF2 flattens a RaggedTensorSpec argument into dense inputs `history` (values) and
  `history_1` (row splits, int64 where the reader made int32)."""
  ragged = history_batch['history'].with_row_splits_dtype(tf.int64)
  feeds = {'history': ragged.values.numpy(), 'history_1': ragged.row_splits.numpy(),
           'user_age': history_batch['user_age'].numpy()}
  loaded = tf.saved_model.load(history['tf2_module']).signatures['serving_default']
  expected = {o: v.numpy() for o, v in loaded(
      **{k: tf.constant(v) for k, v in feeds.items()}).items()}
  _, serving = _freeze_and_redump(history['tf2_module'], str(tmp_path))
  _assert_same(_run_saved_model(serving, {'serving_default': feeds}),
               {'serving_default': expected})
  # And it answers as the TF1 training graph the variables came from.
  reader = _run_saved_model(history['reader_fed'], history_feeds)
  np.testing.assert_allclose(expected['logit'], reader['serving_default']['logit'], rtol=0,
                             atol=ATOL)
