"""formats/frozen_graph: the metadata node, the GraphDef file, the checkpoint beside it."""

import os

import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import frozen_graph
from freezerlib.formats import graph_check
import small_graphs

FLOAT = tf.float32.as_datatype_enum
GRAPH = '''
node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "y" op: "Identity" input: "x" attr { key: "T" value { type: DT_FLOAT } } }
node { name: "init" op: "NoOp" }
node { name: "save/restore_all" op: "NoOp" }
node { name: "r" op: "NoOp" }
library { function { signature { name: "f" } } }
versions { producer: 1234 }
'''


def _frozen(**kwargs):
  sig = small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})
  sig.outputs['y'].dtype = FLOAT + 100  # a ref variable fetched as an output
  return frozen_graph.FrozenModel(graph_def=small_graphs.graph_def(GRAPH),
                                  signatures={'serving_default': sig}, tags=['serve', 'x'],
                                  **kwargs)


def test_metadata_round_trip():
  saver_def = lean_tf.saver_pb2.SaverDef(restore_op_name='save/restore_all')
  frozen = _frozen(table_init_op='init', saver_def=saver_def,
                   variables_prefix='f.pb.variables/variables', variables_digest='abc')
  written = frozen_graph.frozen_to_graph_def(frozen)
  assert [n.name for n in written.node] == ['x', 'y', 'init', 'save/restore_all', 'r',
                                           'freezer_metadata']
  assert (written.node[-1].SerializeToString(deterministic=True) ==
          frozen_graph.metadata_record(frozen))
  assert written.library == frozen.graph_def.library and written.versions.producer == 1234
  back = frozen_graph.frozen_from_graph_def(written, 'f.pb')
  assert back == frozen  # signatures, tags, table init op, saver and checkpoint place
  assert len(written.node) == 6  # a copy: the written graph keeps its metadata node
  in_place = frozen_graph.frozen_from_graph_def(written, 'f.pb', in_place=True)
  assert in_place.graph_def is written and len(written.node) == 5
  assert in_place == frozen


def test_metadata_without_saver_or_table_init():
  back = frozen_graph.frozen_from_graph_def(frozen_graph.frozen_to_graph_def(_frozen()), 'f')
  assert back.table_init_op is None and back.saver_def is None
  assert back.variables_prefix is None and back.variables_digest is None
  assert frozen_graph.frozen_from_graph_def(small_graphs.graph_def(GRAPH), 'f') is None


def test_corrupt_metadata_is_named():
  graph_def = frozen_graph.frozen_to_graph_def(_frozen())
  graph_def.node[-1].attr['value'].tensor.string_val[0] = b'\xff\xff'
  with pytest.raises(errors.UserError, match='f.pb: its freezer_metadata node is corrupt'):
    frozen_graph.frozen_from_graph_def(graph_def, 'f.pb')
  graph_def.node[-1].attr['value'].tensor.string_val.append(b'')
  with pytest.raises(errors.UserError, match=r'corrupt \(not one string\)'):
    frozen_graph.frozen_from_graph_def(graph_def, 'f.pb')
  frozen = _frozen(saver_def=lean_tf.saver_pb2.SaverDef(restore_op_name='r'),
                   variables_prefix='')
  with pytest.raises(errors.UserError, match='has a saver but no checkpoint location'):
    frozen_graph.frozen_from_graph_def(frozen_graph.frozen_to_graph_def(frozen), 'f.pb')


def test_frozen_signatures_lose_ref_dtypes():
  sigs = _frozen().signatures
  out = frozen_graph.frozen_signatures(sigs)
  assert out['serving_default'].outputs['y'].dtype == FLOAT
  assert sigs['serving_default'].outputs['y'].dtype == FLOAT + 100  # not modified


def test_check_protobuf_size():
  frozen_graph.check_protobuf_size(frozen_graph.PROTOBUF_LIMIT, 'not raised')
  with pytest.raises(errors.UserError) as caught:
    frozen_graph.check_protobuf_size(3 << 30, 'the graph for f.pb would be {size}, past {limit}')
  assert str(caught.value) == "the graph for f.pb would be 3.0 GiB, past protobuf's 2 GB limit"


def test_write_and_read_graph_def(tmp_path, monkeypatch):
  graph_def = frozen_graph.frozen_to_graph_def(_frozen())
  path = str(tmp_path / 'f.pb')
  size = frozen_graph.write_graph_def(graph_def, path)
  assert size == os.path.getsize(path) == graph_def.ByteSize()
  assert frozen_graph.read_graph_def(path) == graph_def
  with pytest.raises(errors.UserError, match='f.pb already exists'):
    frozen_graph.write_graph_def(graph_def, path)
  monkeypatch.setattr(frozen_graph, 'PROTOBUF_LIMIT', size - 1)
  with pytest.raises(errors.UserError, match=r'would be \d+ B, past protobuf.*optimize_from_ckpt'):
    frozen_graph.write_graph_def(graph_def, str(tmp_path / 'g.pb'))
  assert sorted(os.listdir(tmp_path)) == ['f.pb']
  (tmp_path / 'g.pbtxt').write_text(str(graph_def))
  assert frozen_graph.read_graph_def(str(tmp_path / 'g.pbtxt')) == graph_def


@pytest.mark.parametrize('kind,message', [
    ('missing', 'graph file .*/g.pb does not exist'),
    ('directory', '/g.pb is a directory, not a GraphDef file'),
    ('empty', 'graph file .*/g.pb is empty'),
    ('garbage', r'/g.pb is not a GraphDef \(truncated or corrupt'),
    ('no_nodes', '/g.pb is not a GraphDef: it parses but holds no nodes'),
    ('corrupt', "/g.pb is corrupt: node 'y' takes input 'nope'"),
])
def test_read_graph_def_errors(tmp_path, kind, message):
  path = tmp_path / 'g.pb'
  if kind == 'directory':
    path.mkdir()
  elif kind == 'empty':
    path.write_bytes(b'')
  elif kind == 'garbage':
    path.write_bytes(b'\xff' * 10)
  elif kind == 'no_nodes':
    path.write_bytes(small_graphs.graph_def('versions { producer: 1 }').SerializeToString())
  elif kind == 'corrupt':
    graph_def = small_graphs.graph_def(GRAPH)
    graph_def.node[1].input[0] = 'nope'
    path.write_bytes(graph_def.SerializeToString())
  error = graph_check.CorruptGraphError if kind == 'corrupt' else errors.UserError
  with pytest.raises(error, match=message):
    frozen_graph.read_graph_def(str(path))


# ---------------------------------------------------------------------------------------------
# The checkpoint beside the graph


def test_beside_paths():
  assert frozen_graph.checkpoint_dir('/d/f.pb') == '/d/f.pb.variables'
  assert frozen_graph.relative_prefix('/d/f.pb') == 'f.pb.variables/variables'
  assert frozen_graph.resolve_prefix('/d/f.pb', 'f.pb.variables/variables') == (
      '/d/f.pb.variables/variables')
  assert frozen_graph.resolve_prefix('f.pb', 'f.pb.variables/variables') == (
      'f.pb.variables/variables')


@pytest.fixture
def checkpoint(tmp_path):
  return tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).write(str(tmp_path / 'src' / 'ckpt'))


def _keeping(prefix):
  frozen = _frozen(saver_def=lean_tf.saver_pb2.SaverDef(restore_op_name='save/restore_all'),
                   variables_prefix='elsewhere', variables_digest=frozen_graph.index_digest(prefix))
  return frozen


def test_write_graph_puts_its_checkpoint_beside_it(tmp_path, checkpoint):
  out = str(tmp_path / 'f.pb')
  size = frozen_graph.write_graph(_keeping(checkpoint), checkpoint, out)
  assert size == os.path.getsize(out)
  assert sorted(os.listdir(tmp_path)) == ['f.pb', 'f.pb.variables', 'src']
  assert sorted(os.listdir(tmp_path / 'f.pb.variables')) == [
      'variables.data-00000-of-00001', 'variables.index']
  frozen = frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(out), out)
  assert frozen.variables_prefix == 'f.pb.variables/variables'
  assert frozen_graph.checkpoint_of(frozen, out) == out + '.variables/variables'
  with pytest.raises(errors.UserError, match='f.pb already exists'):
    frozen_graph.write_graph(_keeping(checkpoint), checkpoint, out)


def test_checkpoint_of_refuses_a_missing_or_other_checkpoint(tmp_path, checkpoint):
  out = str(tmp_path / 'f.pb')
  frozen_graph.write_graph(_keeping(checkpoint), checkpoint, out)
  frozen = frozen_graph.frozen_from_graph_def(frozen_graph.read_graph_def(out), out)
  other = tf.train.Checkpoint(v=tf.Variable([3.0, 4.0])).write(str(tmp_path / 'other' / 'c'))
  for suffix in ('.index', '.data-00000-of-00001'):
    os.replace(other + suffix, out + '.variables/variables' + suffix)
  with pytest.raises(errors.UserError, match='is not the one written with .*f.pb'):
    frozen_graph.checkpoint_of(frozen, out)
  frozen.variables_digest = None  # without a digest, only its shards are checked
  assert frozen_graph.checkpoint_of(frozen, out) == out + '.variables/variables'
  os.remove(out + '.variables/variables.data-00000-of-00001')
  with pytest.raises(errors.UserError, match='data-00000-of-00001 is missing'):
    frozen_graph.checkpoint_of(frozen, out)
  os.remove(out + '.variables/variables.index')
  with pytest.raises(errors.UserError, match='which is missing: move or copy the graph and its '
                                             'f.pb.variables directory together'):
    frozen_graph.checkpoint_of(frozen, out)


def test_graph_and_checkpoint_appear_together_or_not_at_all(tmp_path, checkpoint):
  out = str(tmp_path / 'f.pb')
  with pytest.raises(ZeroDivisionError):
    with frozen_graph.graph_and_checkpoint_output(out) as (graph_tmp, ckpt_tmp):
      checkpoint_copy.link_checkpoint(checkpoint, ckpt_tmp)
      raise ZeroDivisionError
  assert sorted(os.listdir(tmp_path)) == ['src']
  # A checkpoint directory without its graph (a run killed between the two moves) goes.
  os.makedirs(out + '.variables')
  (tmp_path / 'f.pb.variables' / 'debris').write_bytes(b'x')
  with frozen_graph.graph_and_checkpoint_output(out) as (graph_tmp, ckpt_tmp):
    assert os.path.dirname(graph_tmp) == os.path.dirname(ckpt_tmp)
    checkpoint_copy.link_checkpoint(checkpoint, ckpt_tmp)
    with open(graph_tmp, 'wb') as f:
      f.write(b'graph')
    assert not os.path.exists(out)
  assert open(out, 'rb').read() == b'graph'
  assert sorted(os.listdir(out + '.variables')) == ['variables.data-00000-of-00001',
                                                    'variables.index']
  frozen_graph.remove_stale_checkpoint(out)
  assert sorted(os.listdir(tmp_path)) == ['f.pb', 'src']
