"""Tables created inside functions: the pattern of tensorflow-transform's serving models.

A SavedModel that re-saves resources restored from another SavedModel holds its tables as
outputs of top-level StatefulPartitionedCall nodes calling `__inference__creator_*` functions,
filled by InitializeTableFromTextFileV2 in `__inference__initializer_*` functions (TF_NOTES.md).
Built here without tensorflow-transform: a module with vocabulary tables read from an asset
file is saved, loaded with tf.saved_model.load, wrapped in a tf.Module and saved again.
Before, freezer.py wrote such a model with 0 tables and every request failed with
`Table not initialized`.
"""

import numpy as np
import pytest
import tensorflow as tf

import capi_runner
from conftest import run_tf2_signatures
from freezerlib import freeze
from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.export import from_checkpoint
from freezerlib.export import from_frozen
from freezerlib.formats import saved_model
from freezerlib.freeze import tf2
from freezerlib.transforms import tables
from freezerlib.verify import loaders
from freezerlib.verify import serving_check

VOCAB = ['apple', 'banana', 'cherry', 'date']


class VocabModule(tf.Module):
  """string -> int (default -1) and int -> string (default UNK) tables from one asset file."""

  def __init__(self, vocab_path):
    super().__init__()
    line = tf.lookup.TextFileIndex.LINE_NUMBER
    whole = tf.lookup.TextFileIndex.WHOLE_LINE
    self.ids = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(vocab_path, tf.string, whole, tf.int64, line), -1)
    self.words = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(vocab_path, tf.int64, line, tf.string, whole), 'UNK')
    # tensorflow-transform's apply_vocabulary(num_oov_buckets=...): unseen words hash into
    # buckets past the vocabulary.
    self.oov = tf.lookup.StaticVocabularyTable(
        tf.lookup.TextFileInitializer(vocab_path, tf.string, whole, tf.int64, line), 3)
    # A mutable table restored from the checkpoint, its empty and deleted keys constants
    # inside the creator function once re-saved.
    self.dense = tf.lookup.experimental.DenseHashTable(
        tf.int64, tf.float32, default_value=-2.0, empty_key=-100, deleted_key=-101)
    self.dense.insert(tf.constant([0, 2, 7], tf.int64), tf.constant([0.5, 2.5, 7.5]))
    self.dense.remove(tf.constant([7], tf.int64))
    self.weight = tf.Variable([1.5])

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def encode(self, words):
    ids = self.ids.lookup(words)
    return {'ids': ids, 'score': tf.cast(ids, tf.float32) * self.weight,
            'oov_ids': self.oov.lookup(words)}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def decode(self, ids):
    return {'words': self.words.lookup(ids), 'weights': self.dense.lookup(ids)}


class Resaved(tf.Module):
  """What a TFT serving model is: restored resources, re-saved under a new module."""

  def __init__(self, inner):
    super().__init__()
    self.inner = inner

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
  def encode(self, words):
    return self.inner.encode(words)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def decode(self, ids):
    return self.inner.decode(ids)


FEEDS = {
    'encode': {'words': np.array([b'apple', b'zzz', b'date', b'', b'banana'], dtype=object)},
    'decode': {'ids': np.array([0, 3, 99, -1, 2], np.int64)},
}
# Unseen keys answer with the original's defaults: -1 (times the weight), UNK, -2.0 (7 was
# removed), and for the vocabulary with OOV buckets 4 + (fingerprint % 3), as TensorFlow
# computes it (StaticVocabularyTable's Fingerprint64 bucketing).
EXPECTED = {
    'encode': {'ids': np.int64([0, -1, 3, -1, 1]),
               'score': np.float32([0, -1.5, 4.5, -1.5, 1.5]),
               'oov_ids': np.int64([0, 4 + int(tf.strings.to_hash_bucket_fast('zzz', 3)), 3,
                                    4 + int(tf.strings.to_hash_bucket_fast('', 3)), 1])},
    'decode': {'words': np.array([b'apple', b'date', b'UNK', b'UNK', b'cherry'], dtype=object),
               'weights': np.float32([0.5, -2, -2, -2, 2.5])},
}


def _save_resaved(root, weight=None):
  root.mkdir(parents=True, exist_ok=True)
  vocab = root / 'vocab.txt'
  vocab.write_text('\n'.join(VOCAB) + '\n')
  module = VocabModule(str(vocab))
  tf.saved_model.save(module, str(root / 'original'),
                      signatures={'encode': module.encode, 'decode': module.decode})
  wrapper = Resaved(tf.saved_model.load(str(root / 'original')))
  tf.saved_model.save(wrapper, str(root / 'resaved'),
                      signatures={'encode': wrapper.encode, 'decode': wrapper.decode})
  vocab.unlink()  # the re-saved model reads its own assets/ copy, the frozen one none
  if weight is not None:
    wrapper.inner.weight.assign([weight])
    tf.train.Checkpoint(model=wrapper).save(str(root / 'ckpt' / 'ckpt'))
  return str(root / 'resaved')


def _assert_same(got, expected=EXPECTED):
  assert sorted(got) == sorted(expected)
  for key in expected:
    assert sorted(got[key]) == sorted(expected[key]), key
    for out, want in expected[key].items():
      have = got[key][out]
      assert np.shape(have) == np.shape(want), (key, out)
      if want.dtype == object:
        assert [bytes(x) for x in np.ravel(have)] == list(np.ravel(want)), (key, out, have)
      else:
        np.testing.assert_allclose(have, want, rtol=0, atol=1e-6, err_msg='%s/%s' % (key, out))


def _run_tf1(model):
  try:
    return {k: model.run(k, feeds) for k, feeds in FEEDS.items()}
  finally:
    model.close()


@pytest.fixture(scope='module')
def resaved(tmp_path_factory):
  """The re-saved model, frozen and re-dumped; its checkpoint holds weight 2.5."""
  root = tmp_path_factory.mktemp('function_tables')
  src = _save_resaved(root / 'model', weight=2.5)
  frozen = str(root / 'frozen.pb')
  report = freeze.graph_from_saved_model(src, frozen)
  serving = str(root / 'serving')
  from_frozen.saved_model_from_frozen_graph(frozen, serving)
  return {'root': root, 'src': src, 'frozen': frozen, 'report': report, 'serving': serving,
          'checkpoint': str(root / 'model' / 'ckpt')}


def test_the_resaved_model_has_the_tensorflow_transform_shape(resaved):
  """The pattern TF_NOTES.md describes: no table op at the top level, the tables come out of
  StatefulPartitionedCall nodes reaching `__inference__creator_*`, and are filled by
  InitializeTableFromTextFileV2 in `__inference__initializer_*` functions."""
  graph_def = saved_model.read_meta_graph(resaved['src'], ['serve']).graph_def
  assert not [n for n in graph_def.node if n.op in tables.TABLE_OPS]
  library = {f.signature.name: f for f in graph_def.library.function}
  creators = {name for name, f in library.items() if name.startswith('__inference__creator_')
              and any(n.op == 'HashTableV2' for n in f.node_def)}
  initializers = {name for name, f in library.items()
                  if name.startswith('__inference__initializer_')
                  and any(n.op == 'InitializeTableFromTextFileV2' for n in f.node_def)}
  assert len(creators) == 3 and len(initializers) == 3, (creators, initializers)
  made = []
  for node in graph_def.node:
    if node.op == 'StatefulPartitionedCall' and not node.input:
      inner, _ = tf2._function_output_source(library, node.attr['f'].func.name, 0)
      made.append(inner.op if inner is not None else None)
  assert sorted(made) == ['HashTableV2'] * 3 + ['MutableDenseHashTableV2'], made


def test_frozen_graph_keeps_both_tables_and_answers_as_the_original(resaved):
  report = resaved['report']
  assert report.freezer == 'tf2'
  kept = sorted((t.op, repr(sorted(np.ravel(t.keys).tolist()))) for t in report.tables)
  words = repr([b'apple', b'banana', b'cherry', b'date'])
  assert kept == [('HashTableV2', repr([0, 1, 2, 3])), ('HashTableV2', words),
                  ('HashTableV2', words), ('MutableDenseHashTableV2', repr([0, 2]))]
  assert report.model.table_init_op == tables.INIT_OP_NAME
  _assert_same(run_tf2_signatures(resaved['src'], FEEDS))  # the original, as written
  _assert_same(_run_tf1(loaders.load_frozen_graph(resaved['frozen'])))


def test_redumped_model_serves_through_both_loaders_and_the_c_api(resaved, capi):
  serving = resaved['serving']
  _assert_same(_run_tf1(loaders.load_saved_model(serving)))  # the TF1 loader, as TF Serving
  _assert_same(run_tf2_signatures(serving, FEEDS))           # tf.saved_model.load
  _assert_same(capi_runner.run_signatures(capi, serving, FEEDS))
  assert serving_check.check_saved_model(serving) > 0


def test_checkpoint_path_serves_the_resaved_model(resaved, capi):
  """The TF2 checkpoint path keeps the structure's creator and initializer functions and its
  assets: the tables fill at load, the weight comes from the checkpoint."""
  out = str(resaved['root'] / 'from_ckpt')
  from_checkpoint.saved_model_from_checkpoint(
      checkpoint=resaved['checkpoint'], output_dir=out, saved_model_dir=resaved['src'])
  expected = {k: dict(v) for k, v in EXPECTED.items()}
  expected['encode'] = dict(expected['encode'], score=np.float32([0, -2.5, 7.5, -2.5, 2.5]))
  _assert_same(_run_tf1(loaders.load_saved_model(out)), expected)
  _assert_same(run_tf2_signatures(out, FEEDS), expected)
  _assert_same(capi_runner.run_signatures(capi, out, FEEDS), expected)


def test_a_function_made_table_left_out_is_refused_not_written_empty(resaved, tmp_path,
                                                                   monkeypatch):
  """Without the rewrite above (as before), the table reaches the freezer as a call node: it is
  refused, naming it, instead of being frozen empty."""
  monkeypatch.setattr(tf2, 'tables_from_functions', lambda *args: [])
  output = tmp_path / 'frozen.pb'
  with pytest.raises(errors.UserError, match=r"read 'inner/\w+' \(StatefulPartitioned"
                     r"Call(_\d+)?, op StatefulPartitionedCall\), a resource"):
    freeze.graph_from_saved_model(resaved['src'], str(output))
  assert not output.exists()


# ---------------------------------------------------------------------------------------------
# What is refused, on graphs built by hand


def _call_graph(made_op):
  """A graph whose signature reads a resource made by `made_op` inside a creator function, as
  the re-saved model's is, plus a LookupTableFindV2 at the top level reading it."""
  graph_def = lean_tf.graph_pb2.GraphDef()
  creator = graph_def.library.function.add()
  creator.signature.name = '__inference__creator_1'
  creator.signature.output_arg.add(name='identity', type=20)  # DT_RESOURCE
  inner = creator.node_def.add(name='made', op=made_op)
  if made_op == 'HashTableV2':
    inner.attr['key_dtype'].type = 7
    inner.attr['value_dtype'].type = 9
  else:
    inner.attr['dtype'].type = 1
  ident = creator.node_def.add(name='Identity', op='Identity', input=['made:resource:0'])
  ident.attr['T'].type = 20
  creator.ret['identity'] = 'Identity:output:0'
  call = graph_def.node.add(name='StatefulPartitionedCall', op='StatefulPartitionedCall')
  call.attr['f'].func.name = creator.signature.name
  call.attr['Tout'].list.type.append(20)
  return graph_def


def test_a_resource_made_in_a_function_that_is_not_a_table_is_refused_naming_it():
  graph_def = _call_graph('VarHandleOp')
  with pytest.raises(errors.UserError, match=r"read 'model/state' \(StatefulPartitionedCall, "
                     r'made by function __inference__creator_1\).*op VarHandleOp'):
    tf2.tables_from_functions(graph_def, {'StatefulPartitionedCall': None},
                              {'StatefulPartitionedCall': 'model/state'}, '/m')


def test_a_table_made_in_a_function_becomes_the_table_op():
  graph_def = _call_graph('HashTableV2')
  assert tf2.tables_from_functions(graph_def, {'StatefulPartitionedCall': None}, {}, '/m') == [
      'StatefulPartitionedCall']
  node = graph_def.node[0]
  assert (node.name, node.op, node.attr['key_dtype'].type) == (
      'StatefulPartitionedCall', 'HashTableV2', 7)


def _lookup_graph(with_fill, made_in_function=False):
  if made_in_function:
    graph_def = _call_graph('HashTableV2')
  else:
    graph_def = lean_tf.graph_pb2.GraphDef()
    table = graph_def.node.add(name='StatefulPartitionedCall', op='HashTableV2')
    table.attr['key_dtype'].type = 7
    table.attr['value_dtype'].type = 9
  graph_def.node.add(name='keys', op='Placeholder').attr['dtype'].type = 7
  graph_def.node.add(name='default', op='Const')
  graph_def.node.add(name='find', op='LookupTableFindV2',
                     input=['StatefulPartitionedCall', 'keys', 'default'])
  if with_fill:
    graph_def.node.add(name='fill', op='LookupTableImportV2',
                       input=['StatefulPartitionedCall', 'keys', 'default'])
    graph_def.node.add(name=tables.INIT_OP_NAME, op='NoOp', input=['^fill'])
  signature = lean_tf.meta_graph_pb2.SignatureDef()
  signature.inputs['keys'].name = 'keys:0'
  signature.outputs['ids'].name = 'find:0'
  return graph_def, {'serving_default': signature}


def test_static_check_refuses_a_table_nothing_fills():
  graph_def, signatures = _lookup_graph(with_fill=False)
  with pytest.raises(errors.UserError, match='read the table StatefulPartitionedCall '
                     r'\(HashTableV2\), which nothing fills'):
    tables.check_tables_filled(graph_def, signatures, None, where='/m')
  graph_def, signatures = _lookup_graph(with_fill=True)
  tables.check_tables_filled(graph_def, signatures, tables.INIT_OP_NAME, where='/m')
  graph_def, signatures = _lookup_graph(with_fill=False, made_in_function=True)
  with pytest.raises(errors.UserError, match='resource made by StatefulPartitionedCall '
                     r'\(a call of function __inference__creator_1\)'):
    tables.check_tables_filled(graph_def, signatures, None, where='/m')
