"""freeze/keep: --keep_as_variables parsed, what it picks, and the 2 GB estimate before loading.

(Freezing with kept variables and serving them: tests/test_keep_as_variables.py.)
"""

import shutil

import pytest

from conftest import meta_graph_of
from freezerlib.core import errors
from freezerlib.formats import checkpoint_index
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.freeze import keep
from freezerlib.transforms import saver
import small_graphs


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """small_graphs.stateful_model: its path, MetaGraph, signatures, restores and index."""
  path = small_graphs.stateful_model(tmp_path_factory.mktemp('keep') / 'm')
  meta_graph = meta_graph_of(path)
  restores = {r.target: r for r in saver.restores_of_saver(meta_graph.graph_def,
                                                           meta_graph.saver_def, path)}
  index = checkpoint_index.read_index(path + '/variables/variables')
  return path, meta_graph, saved_model.select_signatures(meta_graph, None, path), restores, index


@pytest.mark.parametrize('spec,expected', [
    ('64MiB', 64 << 20), ('1.5GB', 1500000000), ('500000', 500000), ('2KB', 2000),
    ('3kib', 3072), ('1GiB', 1 << 30), (' 7 MB ', 7000000)])
def test_sizes_parse(spec, expected):
  assert keep.parse_spec(spec).min_bytes == expected


def test_names_parse():
  assert keep.parse_spec(None) is None and keep.parse_spec('  ') is None
  spec = keep.parse_spec(' emb, w ,emb')
  assert spec.names == ['emb', 'w'] and spec.min_bytes is None
  assert str(spec) == 'emb,w' and str(keep.parse_spec('1.5MiB')) == '1.5 MiB or more'
  with pytest.raises(errors.UserError, match='--keep_as_variables=emb,,w holds an empty name'):
    keep.parse_spec('emb,,w')
  with pytest.raises(errors.UserError, match='--keep_as_variables=-5MB is not a size .* nor a '
                                             'list of variable names'):
    keep.parse_spec('-5MB')


def test_suggested_size_leaves_the_rest_under_the_limit():
  mib = 1 << 20
  sizes = [525 * mib] * 4 + [10 * mib, mib]
  assert keep.suggest_size(sizes, 2048 * mib) == '525MiB'
  assert keep.suggest_size(sizes, 1000 * mib) == '525MiB'
  assert keep.suggest_size(sizes, 500 * mib) == '525MiB'
  assert keep.suggest_size(sizes, 5 * mib) == '10MiB'
  assert keep.suggest_size([3000 * mib], 10 * mib) == '3000MiB'
  assert keep.suggest_size(sizes, 4000 * mib) is None  # fits without keeping


def test_restore_bytes_and_aliases(model):
  _, _, _, restores, index = model
  assert keep.restore_bytes(index, restores['emb/part_0']) == 4 * 2 * 4  # its slice only
  assert keep.restore_bytes(index, restores['emb/part_2']) == 3 * 2 * 4
  assert keep.restore_bytes(index, restores['w']) == 4000
  assert keep.restore_bytes(index, restores['table']) == 2 * 8 + 2 * 4  # keys and values
  assert keep.aliases(restores['emb/part_1']) == {'emb/part_1', 'emb'}
  assert keep.aliases(restores['w']) == {'w'}
  assert keep.aliases(restores['table']) == {'table'}  # not table-keys nor table-values


def test_select(model):
  path, _, _, restores, index = model
  needed = [restores[t] for t in ('emb/part_0', 'emb/part_1', 'emb/part_2', 'w', 'b', 'table')]
  by_size = keep.select(keep.KeepSpec(min_bytes=24), needed, index, path)
  assert [r.target for r in by_size] == ['emb/part_0', 'emb/part_1', 'emb/part_2', 'w', 'table']
  by_name = keep.select(keep.parse_spec('table,emb'), needed, index, path)
  assert [r.target for r in by_name] == ['emb/part_0', 'emb/part_1', 'emb/part_2', 'table']
  one = keep.select(keep.parse_spec('emb/part_1'), needed, index, path)
  assert [r.target for r in one] == ['emb/part_1']
  with pytest.raises(errors.UserError) as caught:
    keep.select(keep.parse_spec('emb,nope,unused'), needed, index, path)
  assert str(caught.value) == (
      '--keep_as_variables names nope, unused, which is no variable or table the signatures of '
      '%s read; choose from: b, emb, table, w' % path)


def test_check_fits_estimates_before_loading(model, monkeypatch):
  path, meta_graph, signatures, _, _ = model
  assert keep.check_fits(path, meta_graph, signatures) == set()
  assert keep.check_fits(path, meta_graph, signatures, keep.parse_spec('w,table')) == {
      'w', 'table'}
  # 4108 bytes to freeze (w 4000, emb 80, table 24, b 4; `unused` is not counted) past a
  # limit lowered to 4020: keeping w fits, keeping emb does not.
  monkeypatch.setattr(frozen_graph, 'PROTOBUF_LIMIT', 4020)
  with pytest.raises(errors.UserError) as caught:
    keep.check_fits(path, meta_graph, signatures)
  message = str(caught.value)
  assert message.startswith('freezing %s would put 4.0 KiB of variables and tables into one '
                            'GraphDef, past protobuf\'s 2 GB limit; keep the largest variables '
                            'and tables as variables, restored from a checkpoint beside the '
                            'graph: --keep_as_variables=4000; or serve it' % path)
  assert message.endswith('optimize_from_ckpt.py --saved_model_dir=%s --checkpoint=%s/variables/'
                          'variables --output_saved_model_dir=DIR' % (path, path))
  assert keep.check_fits(path, meta_graph, signatures, keep.parse_spec('w')) == {'w'}
  with pytest.raises(errors.UserError, match=r'\(with --keep_as_variables: emb\), past'):
    keep.check_fits(path, meta_graph, signatures, keep.parse_spec('emb'))


def test_a_model_without_variables(tmp_path):
  tf = small_graphs.lean_tf.tensorflow

  def build():
    x = tf.compat.v1.placeholder(tf.float32, [None], name='x')
    return {'x': x}, {'y': x * 2.0}

  path = small_graphs.save_tf1(tmp_path / 'm', build)
  shutil.rmtree(tmp_path / 'm' / 'variables')
  meta_graph = meta_graph_of(path)
  signatures = saved_model.select_signatures(meta_graph, None, path)
  assert keep.check_fits(path, meta_graph, signatures, keep.parse_spec('1MB')) == set()
  with pytest.raises(errors.UserError, match='--keep_as_variables names w, but .* has no '
                                             'variables/ checkpoint to keep them from'):
    keep.check_fits(path, meta_graph, signatures, keep.parse_spec('w'))


def test_tf2_estimate_counts_what_each_signature_captures(tmp_path, monkeypatch):
  tf = small_graphs.lean_tf.tensorflow

  class Module(tf.Module):

    def __init__(self):
      super().__init__()
      self.emb = tf.Variable(tf.zeros([100, 4]))  # 1600 bytes
      self.table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0)
      self.calls = tf.Variable(0, dtype=tf.int64)  # 8 bytes, only `count` reads it

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def score(self, ids):
      return {'y': tf.reduce_sum(tf.gather(self.emb, ids), 1) + self.table.lookup(ids)}

    @tf.function(input_signature=[])
    def count(self):
      return {'calls': self.calls.read_value()}

  module = Module()
  module.table.insert(tf.constant([1, 2, 3], tf.int64), tf.constant([1.0, 2.0, 3.0]))  # 36 bytes
  path = str(tmp_path / 'm')
  tf.saved_model.save(module, path, signatures={'serving_default': module.score,
                                                'count': module.count})
  meta_graph = meta_graph_of(path)
  both = saved_model.select_signatures(meta_graph, None, path)
  one = saved_model.select_signatures(meta_graph, ['serving_default'], path)
  assert keep.tf2_captured_bytes(path, meta_graph, one) == 1600 + 36
  assert keep.tf2_captured_bytes(path, meta_graph, both) == 1600 + 36 + 8
  assert keep.check_fits(path, meta_graph, one) == set()
  monkeypatch.setattr(frozen_graph, 'PROTOBUF_LIMIT', 1000)
  with pytest.raises(errors.UserError) as caught:
    keep.check_fits(path, meta_graph, one)
  assert str(caught.value) == (
      'freezing %s would put 1.6 KiB of variables and tables into one GraphDef, past '
      'protobuf\'s 2 GB limit; serve it from its checkpoint: optimize_from_ckpt.py '
      '--saved_model_dir=%s --checkpoint=%s/variables/variables --output_saved_model_dir=DIR'
      % (path, path, path))
