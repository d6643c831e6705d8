"""formats/saved_model: read with errors that name the path, build and write a serving one."""

import os
import pathlib

from google.protobuf import text_format
import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.formats import graph_check
from freezerlib.formats import saved_model
import small_graphs

tf1 = tf.compat.v1


@pytest.fixture(scope='module')
def linear(tmp_path_factory):
  """A TF1 SavedModel: serving_default maps x to 2x + 1."""
  return small_graphs.linear_model(tmp_path_factory.mktemp('linear') / 'm')


# ---------------------------------------------------------------------------------------------
# Reading


def _bad(tmp_path, kind):
  path = tmp_path / 'm'
  if kind == 'missing':
    return str(path)
  if kind == 'file':
    path.write_bytes(b'x')
    return str(path)
  path.mkdir()
  if kind == 'session_bundle':
    (path / 'export.meta').write_bytes(b'x')
  elif kind == 'other_files':
    (path / 'model.h5').write_bytes(b'x')
  elif kind == 'corrupt_pb':
    (path / 'saved_model.pb').write_bytes(b'\xff\xff\xff\xff')
  elif kind == 'bad_pbtxt':
    (path / 'saved_model.pbtxt').write_text('meta_graphs { nonsense')
  elif kind == 'no_meta_graph':
    (path / 'saved_model.pb').write_bytes(b'')
  return str(path)


@pytest.mark.parametrize('kind,message', [
    ('missing', r'SavedModel directory .*/m does not exist'),
    ('file', r'/m is a file, not a SavedModel directory'),
    ('empty', r'SavedModel directory .*/m is empty'),
    ('session_bundle', r'/m is an old session-bundle export \(export.meta\)'),
    ('other_files', r'/m holds no saved_model.pb: not a SavedModel directory'),
    ('corrupt_pb', r'/m/saved_model.pb is not a valid SavedModel \(truncated or corrupt'),
    ('bad_pbtxt', r'/m/saved_model.pbtxt is not a valid SavedModel'),
    ('no_meta_graph', r'/m/saved_model.pb holds no MetaGraph'),
])
def test_read_errors_name_the_path(tmp_path, kind, message):
  with pytest.raises(errors.UserError, match=message):
    saved_model.read_saved_model_proto(_bad(tmp_path, kind))


def test_pbtxt_reads_as_the_pb(linear, tmp_path):
  proto = saved_model.read_saved_model_proto(linear)
  (tmp_path / 'saved_model.pbtxt').write_text(text_format.MessageToString(proto))
  assert saved_model.read_saved_model_proto(str(tmp_path)) == proto


def test_read_meta_graph_checks_the_graph(linear, tmp_path):
  meta_graph = saved_model.read_meta_graph(linear, ['serve'])
  assert 'serving_default' in meta_graph.signature_def
  proto = saved_model.read_saved_model_proto(linear)
  proto.meta_graphs[0].graph_def.node.add(name='x', op='NoOp')  # a second node named x
  (tmp_path / 'saved_model.pb').write_bytes(proto.SerializeToString())
  with pytest.raises(graph_check.CorruptGraphError,
                     match=r"saved_model.pb is corrupt: two nodes are named 'x'"):
    saved_model.read_meta_graph(str(tmp_path), ['serve'])


def test_select_meta_graph_by_the_whole_tag_set(linear):
  proto = saved_model.read_saved_model_proto(linear)
  second = proto.meta_graphs.add()
  second.meta_info_def.tags.extend(['serve', 'gpu'])
  assert saved_model.select_meta_graph(proto, ['gpu', 'serve'], 'm') is proto.meta_graphs[1]
  assert saved_model.select_meta_graph(proto, ['serve'], 'm') is proto.meta_graphs[0]
  with pytest.raises(errors.UserError, match='m has no MetaGraph tagged tpu; choose --tags '
                                             'from: serve; serve,gpu'):
    saved_model.select_meta_graph(proto, ['tpu'], 'm')


def _meta_graph_with(keys):
  meta_graph = lean_tf.meta_graph_pb2.MetaGraphDef()
  for key in keys:
    meta_graph.signature_def[key].method_name = 'tensorflow/serving/predict'
  return meta_graph


def test_select_signatures():
  meta_graph = _meta_graph_with(['b', 'a', saved_model.INIT_OP_SIGNATURE_KEY])
  assert list(saved_model.select_signatures(meta_graph, None, 'm')) == ['a', 'b']
  assert list(saved_model.select_signatures(meta_graph, ['b'], 'm')) == ['b']
  with pytest.raises(errors.UserError, match="m has no signature 'c', '__saved_model_init_op'; "
                                             'choose from: a, b'):
    saved_model.select_signatures(meta_graph, ['c', saved_model.INIT_OP_SIGNATURE_KEY], 'm')
  with pytest.raises(errors.UserError, match='m has no signatures: .* --inputs and --outputs'):
    saved_model.select_signatures(_meta_graph_with([saved_model.INIT_OP_SIGNATURE_KEY]), [], 'm')


def test_signatures_from_named_tensors(linear):
  meta_graph = saved_model.read_meta_graph(linear, ['serve'])
  sigs = saved_model.signatures_to_serve(meta_graph, None, ['x'], ['y:0', 'mul:0'], 'm')
  sig = sigs['serving_default']
  assert list(sigs) == ['serving_default'] and sig.method_name == 'tensorflow/serving/predict'
  assert {k: (v.name, v.dtype) for k, v in sig.inputs.items()} == {
      'x': ('x:0', tf.float32.as_datatype_enum)}
  assert sorted(sig.outputs) == ['mul', 'y']
  assert tf.TensorShape(sig.outputs['y'].tensor_shape).as_list() == [None]
  assert saved_model.signatures_to_serve(meta_graph, ['serving_default'], (), (), 'm') == {
      'serving_default': meta_graph.signature_def['serving_default']}
  for args, message in (((None, ['x'], []), 'give both --inputs and --outputs'),
                        ((['serving_default'], ['x'], ['y']), '--signature_def chooses among'),
                        ((None, ['x'], ['nope:0']), '--outputs names nope:0, which is not a '
                                                    'tensor of m')):
    with pytest.raises(errors.UserError, match=message):
      saved_model.signatures_to_serve(meta_graph, *args, 'm')


def test_signature_from_tensors_keys_other_outputs_by_index():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.int32, [4, 2], name='x')
    tf.split(x, 2, axis=1, name='split')
  sig = saved_model.signature_from_tensors(graph.as_graph_def(), ['x:0'], ['split:1'], 'g')
  assert sorted(sig.outputs) == ['split_1'] and sig.outputs['split_1'].name == 'split:1'
  assert tf.TensorShape(sig.outputs['split_1'].tensor_shape).as_list() == [4, 1]
  bad = small_graphs.graph_def('node { name: "a" op: "NoSuchOp" }')
  with pytest.raises(errors.UserError, match='cannot import g: .*NoSuchOp'):
    saved_model.signature_from_tensors(bad, ['a'], ['a'], 'g')


def test_signature_output_nodes_and_tensor_checks():
  sigs = {'s1': small_graphs.signature({'x': 'x:0'}, {'b': 'y:1', 'a': 'z:0'}),
          's2': small_graphs.signature({}, {'c': 'y:0'})}
  assert saved_model.signature_output_nodes(sigs) == ['z', 'y']
  graph = small_graphs.graph_def('node { name: "x" op: "NoOp" } node { name: "y" op: "NoOp" }')
  with pytest.raises(errors.UserError, match="signature 's1' output 'a' names z:0, which is not "
                                             'in m'):
    saved_model.check_tensors_exist(graph, sigs, 'm')
  sparse = small_graphs.signature({}, {'a': 'x:0'})
  coo = sparse.inputs['ids'].coo_sparse
  coo.values_tensor_name = 'x:0'
  with pytest.raises(errors.UserError, match="signature 's' input 'ids' of m names no tensor "
                                             r"\(or not all of a sparse tensor's three\)"):
    saved_model.check_tensors_exist(graph, {'s': sparse}, 'm')
  coo.indices_tensor_name, coo.dense_shape_tensor_name = 'y:0', 'shape:0'
  with pytest.raises(errors.UserError, match="signature 's' input 'ids' names shape:0, which is "
                                             'not in m'):
    saved_model.check_tensors_exist(graph, {'s': sparse}, 'm')
  coo.dense_shape_tensor_name = 'y:1'
  saved_model.check_tensors_exist(graph, {'s': sparse}, 'm')


def test_saver_nodes_are_what_save_and_restore_need(linear):
  meta_graph = saved_model.read_meta_graph(linear, ['serve'])
  names = saved_model.saver_op_names(meta_graph.saver_def)
  assert names == ['save/restore_all', 'save/Identity', 'save/Const']
  nodes = saved_model.saver_nodes(meta_graph.graph_def, meta_graph.saver_def)
  assert {'save/RestoreV2', 'save/SaveV2', 'save/MergeV2Checkpoints', 'w', 'b'} <= nodes
  assert not nodes & {'x', 'y', 'mul', 'add'}
  assert saved_model.saver_nodes(meta_graph.graph_def, None) == set()
  assert saved_model.saver_nodes(meta_graph.graph_def, lean_tf.saver_pb2.SaverDef()) == set()


def test_init_ops_and_assets():
  meta_graph = lean_tf.meta_graph_pb2.MetaGraphDef()
  assert saved_model.init_ops_of(meta_graph) == []
  assert not meta_graph.collection_def  # reading did not add the collections
  meta_graph.collection_def['saved_model_main_op'].node_list.value.append('main')
  meta_graph.collection_def['legacy_init_op'].node_list.value.append('legacy')
  meta_graph.signature_def[saved_model.INIT_OP_SIGNATURE_KEY].outputs['x'].name = 'init:0'
  assert saved_model.init_ops_of(meta_graph) == ['main', 'legacy', 'init:0']
  assert saved_model.asset_defs(meta_graph) == []
  own = meta_graph.asset_file_def.add(filename='a.txt')
  old = lean_tf.meta_graph_pb2.AssetFileDef(filename='b.txt')
  meta_graph.collection_def['saved_model_assets'].any_list.value.add().Pack(old)
  assert saved_model.asset_defs(meta_graph) == [own, old]


def test_directory_size(tmp_path):
  (tmp_path / 'a').write_bytes(b'x' * 10)
  (tmp_path / 'd').mkdir()
  (tmp_path / 'd' / 'b').write_bytes(b'x' * 5)
  assert saved_model.directory_size(str(tmp_path)) == 15
  assert saved_model.directory_size(str(tmp_path / 'a')) == 10


def test_object_based_and_its_loader(linear, tmp_path):
  assert not saved_model.is_object_based(saved_model.read_meta_graph(linear, ['serve']))
  module = tf.Module()
  module.v = tf.Variable(3.0)
  module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'tf2'), signatures=module.f)
  meta_graph = saved_model.read_meta_graph(str(tmp_path / 'tf2'), ['serve'])
  assert saved_model.is_object_based(meta_graph)
  loaded = saved_model.load_objects(str(tmp_path / 'tf2'), ['serve'])
  assert float(loaded.f(tf.constant(2.0))) == 6.0
  with pytest.raises(errors.UserError, match="cannot load SavedModel .*tf2: .*tags"):
    saved_model.load_objects(str(tmp_path / 'tf2'), ['gpu'])


@pytest.mark.parametrize('change,message', [
    (lambda g: g.nodes[0].children[0].__setattr__('node_id', 99),
     'its object graph object 0 refers to object 99, of '),
    (lambda g: g.concrete_functions[sorted(g.concrete_functions)[0]].bound_inputs.append(-1),
     'binds concrete function .* to object -1, of '),
    (lambda g: g.concrete_functions.__delitem__(
        next(n for n in g.nodes if n.WhichOneof('kind') == 'function')
        .function.concrete_functions[0]),
     'names concrete function .*, which it does not hold'),
], ids=['child', 'bound_input', 'concrete_function'])
def test_a_corrupt_object_graph_is_refused_where_it_is_read(change, message, tmp_path):
  module = tf.Module()
  module.v = tf.Variable(3.0)
  module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'tf2'), signatures=module.f)
  path = tmp_path / 'tf2' / 'saved_model.pb'
  proto = lean_tf.saved_model_pb2.SavedModel.FromString(path.read_bytes())
  change(proto.meta_graphs[0].object_graph_def)
  path.write_bytes(proto.SerializeToString())
  with pytest.raises(errors.UserError, match='%s is corrupt: .*%s' % (path, message)):
    saved_model.read_meta_graph(str(tmp_path / 'tf2'), ['serve'])


# ---------------------------------------------------------------------------------------------
# Building and writing


def test_serving_meta_graph_from_the_structures_meta_info(linear):
  structure = saved_model.read_meta_graph(linear, ['serve'])
  assert structure.meta_info_def.stripped_op_list.op
  sigs = dict(structure.signature_def)
  asset = lean_tf.meta_graph_pb2.AssetFileDef(filename='v.txt')
  meta_graph = saved_model.serving_meta_graph(
      structure.graph_def, sigs, ['serve', 'x'], saver_def=structure.saver_def, main_op='init',
      assets=[asset], meta_info_def=structure.meta_info_def)
  assert list(meta_graph.meta_info_def.tags) == ['serve', 'x']
  assert not meta_graph.meta_info_def.stripped_op_list.op
  assert meta_graph.meta_info_def.tensorflow_version == (
      structure.meta_info_def.tensorflow_version)
  assert meta_graph.graph_def == structure.graph_def
  assert meta_graph.saver_def == structure.saver_def
  assert list(meta_graph.collection_def['saved_model_main_op'].node_list.value) == ['init']
  assert dict(meta_graph.signature_def) == sigs and list(meta_graph.asset_file_def) == [asset]


def test_serving_meta_graph_strips_default_attributes_as_the_builder_does():
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [2, 2], name='x')
    tf.matmul(x, x, name='y')  # transpose_a=False: its op's default
    tf.no_op(name='init')
  graph_def = graph.as_graph_def()
  assert 'transpose_a' in [n for n in graph_def.node if n.name == 'y'][0].attr
  sigs = {'s': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}
  meta_graph = saved_model.serving_meta_graph(graph_def, sigs, ['serve'], main_op='init',
                                              strip_default_attrs=True)
  y = [n for n in meta_graph.graph_def.node if n.name == 'y'][0]
  assert 'transpose_a' not in y.attr and 'T' in y.attr
  assert {o.name for o in meta_graph.meta_info_def.stripped_op_list.op} == {
      'MatMul', 'NoOp', 'Placeholder'}
  assert meta_graph.meta_info_def.tensorflow_version == tf.version.VERSION
  assert list(meta_graph.collection_def['saved_model_main_op'].node_list.value) == ['init']
  assert list(meta_graph.meta_info_def.tags) == ['serve']


def test_write_saved_model_writes_a_loadable_model(linear, tmp_path):
  structure = saved_model.read_meta_graph(linear, ['serve'])
  (tmp_path / 'assets').mkdir()
  (tmp_path / 'assets' / 'v.txt').write_text('vocabulary')
  (tmp_path / 'extra' / 'sub').mkdir(parents=True)
  (tmp_path / 'extra' / 'sub' / 'warmup').write_text('requests')
  meta_graph = saved_model.serving_meta_graph(
      structure.graph_def, dict(structure.signature_def), ['serve'],
      saver_def=structure.saver_def, meta_info_def=structure.meta_info_def,
      assets=[lean_tf.meta_graph_pb2.AssetFileDef(filename='v.txt')] * 2)
  seen = []

  def write_variables(variables_dir):
    for name in os.listdir(os.path.join(linear, 'variables')):
      pathlib.Path(variables_dir, name).write_bytes(
          pathlib.Path(linear, 'variables', name).read_bytes())

  def finalize(directory):
    seen.append((directory, sorted(os.listdir(directory))))

  out = str(tmp_path / 'out')
  path, size = saved_model.write_saved_model(
      out, meta_graph, write_variables, assets_dir=str(tmp_path / 'assets'), finalize=finalize,
      assets_extra_dir=str(tmp_path / 'extra'))
  assert path == out and size == saved_model.directory_size(out)
  assert seen[0][0] != out and seen[0][1] == ['assets', 'assets.extra', 'saved_model.pb',
                                               'variables']
  assert (tmp_path / 'out' / 'assets' / 'v.txt').read_text() == 'vocabulary'
  assert (tmp_path / 'out' / 'assets.extra' / 'sub' / 'warmup').read_text() == 'requests'
  with tf1.Session(graph=tf.Graph()) as session:
    tf1.saved_model.loader.load(session, ['serve'], out)
    assert list(session.run('y:0', {'x:0': [1.0, 3.0]})) == [3.0, 7.0]
  with pytest.raises(errors.UserError, match='already exists; pass --overwrite'):
    saved_model.write_saved_model(out, meta_graph, write_variables, str(tmp_path / 'assets'))


def test_write_saved_model_refuses_a_missing_asset_and_leaves_nothing(linear, tmp_path):
  meta_graph = saved_model.read_meta_graph(linear, ['serve'])
  meta_graph.asset_file_def.add(filename='missing.txt')
  with pytest.raises(errors.UserError, match=r'asset .*assets/missing.txt is missing'):
    saved_model.write_saved_model(str(tmp_path / 'out'), meta_graph,
                                  assets_dir=str(tmp_path / 'assets'))
  with pytest.raises(errors.UserError, match='asset missing.txt is missing'):
    saved_model.write_saved_model(str(tmp_path / 'out'), meta_graph)
  assert os.listdir(tmp_path) == []


def test_write_saved_model_versions_and_file_copied_as_it_is(linear, tmp_path):
  meta_graph = saved_model.read_meta_graph(linear, ['serve'])
  source = os.path.join(linear, 'saved_model.pb')
  path, _ = saved_model.write_saved_model(str(tmp_path / 'base'), meta_graph, version='auto',
                                          saved_model_file=source)
  assert path == str(tmp_path / 'base' / '1')
  assert (tmp_path / 'base' / '1' / 'saved_model.pb').read_bytes() == open(source, 'rb').read()
  assert os.listdir(tmp_path / 'base' / '1' / 'variables') == []  # as the TF1 Builder leaves it
  path, _ = saved_model.write_saved_model(str(tmp_path / 'base'), meta_graph, version=7)
  assert path == str(tmp_path / 'base' / '7')
  assert saved_model.read_meta_graph(path, ['serve']) == meta_graph


def test_saved_model_proto_is_deterministic(linear, tmp_path):
  meta_graph = saved_model.read_meta_graph(linear, ['serve'])
  for name in ('a', 'b'):
    (tmp_path / name).mkdir()
    saved_model.write_saved_model_proto(meta_graph, str(tmp_path / name))
  first = (tmp_path / 'a' / 'saved_model.pb').read_bytes()
  assert first == (tmp_path / 'b' / 'saved_model.pb').read_bytes()
  proto = lean_tf.saved_model_pb2.SavedModel.FromString(first)
  assert proto.saved_model_schema_version == 1 and proto.meta_graphs[0] == meta_graph
  np.testing.assert_equal(len(proto.meta_graphs), 1)


def test_tf2_model_without_its_variables_is_one_user_error(tmp_path):
  module = tf.Module()
  module.v = tf.Variable(3.0)
  module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'tf2'), signatures=module.f)
  os.remove(tmp_path / 'tf2' / 'variables' / 'variables.index')
  # TensorFlow raises FileNotFoundError here, not an OpError.
  with pytest.raises(errors.UserError, match='cannot load SavedModel .*tf2: Unsuccessful '
                                             'TensorSliceReader constructor'):
    saved_model.load_objects(str(tmp_path / 'tf2'), ['serve'])
