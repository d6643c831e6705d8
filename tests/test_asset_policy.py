"""One asset policy for every script (analysis/unsafe_ops.py).

A text-file table initialiser that reads the SavedModel's own assets/ (every
`categorical_column_with_vocabulary_file`) is how SavedModels work: freezer.py and
optimize_from_ckpt.py trust it alike. A path that escapes assets/ is refused by both. A
signature that opens an asset each time it runs cannot be frozen (a frozen graph carries no
files) and is refused saying so; the checkpoint path, which keeps assets, serves it.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import meta_graph_of
from conftest import tree_digest
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import saved_model_pb2
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import saved_model
from freezerlib.verify import loaders
import real_models

tf1 = tf.compat.v1


@pytest.fixture(scope='module')
def census(tmp_path_factory):
  return real_models.wide_and_deep(str(tmp_path_factory.mktemp('census')), num_examples=200,
                                   steps=10)


def _examples():
  return real_models.serialized_examples(real_models.census_rows(40, seed=9, unseen=True))


def _feeds(model, examples):
  """Each signature's one input (`examples` or `inputs`) fed the serialized tf.Examples."""
  return {k: {next(iter(sig.inputs)): examples} for k, sig in model.signatures.items()}


def test_census_estimator_style_through_the_checkpoint_path(census, tmp_path, capi):
  """Vocabulary files (one of them listed twice) read by the main op: trusted, copied once,
  and the export answers as the original, through Python and through the C API."""
  import capi_runner
  structure = census['estimator_style']
  listed = [a.filename for a in saved_model.asset_defs(meta_graph_of(structure))]
  assert len(listed) > len(set(listed)) == 1  # countries.txt, more than once
  digests = {p: tree_digest(p) for p in (structure, os.path.dirname(census['checkpoint']))}
  out = str(tmp_path / 'serving')
  from_checkpoint.saved_model_from_checkpoint(checkpoint=census['checkpoint'], output_dir=out,
                                              saved_model_dir=structure)  # no --allow_ops
  assert os.listdir(os.path.join(out, 'assets')) == ['countries.txt']
  assert {p: tree_digest(p) for p in digests} == digests
  reference, new = loaders.load_saved_model(structure), loaders.load_saved_model(out)
  examples = _examples()
  feeds = _feeds(reference, examples)
  assert sorted(feeds) == ['classification', 'predict', 'regression', 'serving_default']
  for key, feed in feeds.items():
    expected, got = reference.run(key, feed), new.run(key, feed)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
      np.testing.assert_array_equal(got[name], value, err_msg='%s %s' % (key, name))
  served = capi_runner.run_signatures(capi, out, {'predict': feeds['predict']})['predict']
  expected = reference.run('predict', feeds['predict'])
  for name, value in expected.items():
    np.testing.assert_array_equal(served[name], value, err_msg=name)
  # Both vocabulary columns answer for countries in and out of the file.
  assert len(np.unique(expected['logits'])) > 10


def test_census_estimator_style_through_the_freeze_path(census, tmp_path):
  """The same initialisers, the same trust: freezer.py and optimize_from_pb.py without
  --allow_ops; the frozen graph refills the tables from constants and reads no file."""
  frozen = str(tmp_path / 'frozen.pb')
  result = freeze.graph_from_saved_model(census['estimator_style'], frozen,
                                         signature_names=['predict'])
  assert result.tables
  serving, _, _ = from_frozen.saved_model_from_frozen_graph(
      frozen, output_saved_model_dir=str(tmp_path / 'serving'))
  assert not {n.op for n in serving.graph_def.node} & {'InitializeTableFromTextFileV2'}
  examples = _examples()
  expected = loaders.load_saved_model(census['estimator_style']).run('predict',
                                                                     {'examples': examples})
  got = loaders.load_saved_model(str(tmp_path / 'serving')).run('predict',
                                                                 {'examples': examples})
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def _rename_assets(export_dir, filename):
  """Every asset entry of the TF1 SavedModel `export_dir` names `filename` instead."""
  path = os.path.join(export_dir, 'saved_model.pb')
  proto = saved_model_pb2.SavedModel()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  values = proto.meta_graphs[0].collection_def['saved_model_assets'].any_list.value
  for value in values:
    asset = meta_graph_pb2.AssetFileDef()
    value.Unpack(asset)
    asset.filename = filename
    value.Pack(asset)
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  return len(values)


def test_asset_escaping_assets_is_refused_by_both_paths(census, tmp_path):
  structure = str(tmp_path / 'structure')
  shutil.copytree(census['estimator_style'], structure)
  assert _rename_assets(structure, '../../countries.txt') > 1
  digest = tree_digest(structure)
  message = r"asset file name '../../countries.txt' escapes the assets directory"
  with pytest.raises(errors.UserError, match=message):
    from_checkpoint.saved_model_from_checkpoint(
        checkpoint=census['checkpoint'], output_dir=str(tmp_path / 'ck'),
        saved_model_dir=structure, allow_ops=['InitializeTableFromTextFileV2'])
  with pytest.raises(errors.UserError, match=message):
    freeze.graph_from_saved_model(structure, str(tmp_path / 'f.pb'),
                                  allow_ops=['InitializeTableFromTextFileV2'])
  assert not (tmp_path / 'ck').exists() and not (tmp_path / 'f.pb').exists()
  assert tree_digest(structure) == digest


def test_vocabulary_file_outside_the_assets_is_refused_by_both_paths(tmp_path):
  """A table initialised from a path the graph holds as a plain constant (no asset entry):
  loading would read whatever is there. Both paths stop unless allowed, and then convert."""
  vocabulary = tmp_path / 'vocab.txt'
  vocabulary.write_text('a\nb\nc\n')
  model = str(tmp_path / 'm')
  graph = tf.Graph()
  with graph.as_default():
    words = tf1.placeholder(tf.string, [None], name='words')
    table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        tf.constant(str(vocabulary)), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), -1)
    w = tf1.get_variable('w', initializer=tf.constant(10, tf.int64))
    ids = tf.identity(table.lookup(words) * w, name='ids')
    with tf1.Session() as session:
      session.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      builder = tf1.saved_model.Builder(model)
      builder.add_meta_graph_and_variables(
          session, ['serve'], main_op=tf1.tables_initializer(), signature_def_map={
              'serving_default': tf1.saved_model.predict_signature_def({'words': words},
                                                                       {'ids': ids})})
      builder.save()
  checkpoint = model + '/variables/variables'
  refused = r'InitializeTableFromTextFileV2.*--allow_ops=InitializeTableFromTextFileV2'
  with pytest.raises(errors.UserError, match=refused):
    freeze.graph_from_saved_model(model, str(tmp_path / 'f.pb'))
  with pytest.raises(errors.UserError, match=refused):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=checkpoint,
                                                output_dir=str(tmp_path / 'ck'),
                                                saved_model_dir=model)
  allowed = ['InitializeTableFromTextFileV2']
  freeze.graph_from_saved_model(model, str(tmp_path / 'f.pb'), allow_ops=allowed)
  from_checkpoint.saved_model_from_checkpoint(checkpoint=checkpoint,
                                              output_dir=str(tmp_path / 'ck'),
                                              saved_model_dir=model, allow_ops=allowed)
  feed = {'words': np.array([b'c', b'z', b'a'], dtype=object)}
  assert list(loaders.load_frozen_graph(str(tmp_path / 'f.pb')).run(
      'serving_default', feed)['ids']) == [20, -10, 0]
  assert list(loaders.load_saved_model(str(tmp_path / 'ck')).run(
      'serving_default', feed)['ids']) == [20, -10, 0]


class _ReadsAnAsset(tf.Module):
  """y = x * w + the number in an asset file, read by the signature each time it runs."""

  def __init__(self, path):
    super().__init__()
    self.offset = tf.saved_model.Asset(path)
    self.w = tf.Variable(2.0)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
  def serve(self, x):
    return {'y': x * self.w + tf.strings.to_number(tf.io.read_file(self.offset))}


def test_tf2_signature_reading_an_asset(tmp_path):
  """freezer.py refuses it saying what is not supported (not naming TF2's asset-holding
  variable as if it were the model's); the checkpoint path, which keeps assets, serves it."""
  source = tmp_path / 'offset.txt'
  source.write_text('5')
  module = _ReadsAnAsset(str(source))
  structure = str(tmp_path / 'structure')
  tf.saved_model.save(module, structure, signatures={'serving_default': module.serve})
  module.w.assign(3.0)  # trained after the structure was written
  checkpoint = tf.train.Checkpoint(model=module).save(str(tmp_path / 'ckpt' / 'ckpt'))
  os.remove(source)  # only the SavedModel's own copy is left
  for allow in ([], ['ReadFile']):
    with pytest.raises(errors.UserError) as raised:
      freeze.graph_from_saved_model(structure, str(tmp_path / 'f.pb'), allow_ops=allow)
    message = str(raised.value)
    assert "signature 'serving_default'" in message and "asset file 'offset.txt'" in message
    assert 'op ReadFile at __inference_serve_' in message and 'not supported' in message
    assert 'Variable' not in message
  assert not (tmp_path / 'f.pb').exists()
  out = str(tmp_path / 'serving')
  with pytest.raises(errors.UserError, match=r'ReadFile.*--allow_ops=ReadFile'):
    from_checkpoint.saved_model_from_checkpoint(checkpoint=checkpoint, output_dir=out,
                                                saved_model_dir=structure)
  from_checkpoint.saved_model_from_checkpoint(checkpoint=checkpoint, output_dir=out,
                                              saved_model_dir=structure, allow_ops=['ReadFile'])
  shutil.rmtree(structure)
  served = tf.saved_model.load(out).signatures['serving_default'](x=tf.constant([1.0, 2.0]))
  assert list(served['y'].numpy()) == [8.0, 11.0]
