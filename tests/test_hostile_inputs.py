"""Models built to exhaust memory or to make a reader trust a size: refused in one line.

Each runs a script as a subprocess under a 3 GiB address-space cap (resource.setrlimit), so a
regression that allocates what a file declares fails here (a MemoryError, an internal error
line, or a kill) instead of eating the machine: sizes declared in a file (shard counts,
dimensions, string lengths, block sizes) are checked against what the file can hold before
anything is allocated. Plus the hand-made cases the fuzzer first found (tests/test_fuzz.py),
in-process, each naming what is wrong.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import REPO
from conftest import assert_one_line_error
from conftest import run_main_as_process
from conftest import tree_digest
import freezer
from freezerlib.core import crc32c
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import saved_model_pb2
from freezerlib.formats import checkpoint_index
from freezerlib.formats import leveldb_table
import optimize_from_ckpt
import optimize_from_pb

CAP_BYTES = 3 << 30  # freezer.py on the tiny model runs in 2 GiB of address space
DT_FLOAT = lean_tf.types_pb2.DT_FLOAT
DT_STRING = lean_tf.types_pb2.DT_STRING

# Runs each script's main in one process under the cap (one TensorFlow start-up for every
# case): argv lists on stdin, one JSON line of [exit code, stderr] per case on stdout.
_DRIVER = r"""
import io, json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (%d, %d))
sys.path.insert(0, 'tests')
import conftest  # absl flags marked parsed, as in the suite
from absl import flags
import freezer, optimize_from_ckpt, optimize_from_pb
modules = {'freezer.py': freezer, 'optimize_from_ckpt.py': optimize_from_ckpt,
           'optimize_from_pb.py': optimize_from_pb}
results = []
for argv in json.loads(sys.stdin.read()):
  err, real = io.StringIO(), sys.stderr
  sys.stderr = err
  try:
    flags.FLAGS.unparse_flags()
    code = modules[argv[0]].main(flags.FLAGS(argv))
  except BaseException as e:  # a kill by the cap shows as a missing line instead
    code = repr(e)
  finally:
    sys.stderr = real
    flags.FLAGS.unparse_flags()
  results.append([code, err.getvalue()])
print(json.dumps(results))
""" % (CAP_BYTES, CAP_BYTES)


def run_capped(cases):
  """[(exit code, stderr)] of each argv of `cases`, run under the memory cap."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-c', _DRIVER], cwd=REPO, env=env,
                        input=json.dumps(cases), capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [subprocess.CompletedProcess(argv, code, '', err)
          for argv, (code, err) in zip(cases, json.loads(proc.stdout.splitlines()[-1]))]


def _index_items(prefix):
  with open(prefix + '.index', 'rb') as f:
    return list(leveldb_table.table_items(f.read()))


def _write_index(prefix, items):
  """Writes `items` (key, serialized value) as PREFIX.index, every block checksummed."""
  block = leveldb_table.encode_block(items)
  out = bytearray(block) + b'\x00' + struct.pack('<I', crc32c.masked(block + b'\x00'))
  varint = leveldb_table.encode_varint
  handles = []
  for contents in (leveldb_table.encode_block([]),
                   leveldb_table.encode_block(
                       [(items[-1][0], varint(0) + varint(len(block)))])):
    handles.append(varint(len(out)) + varint(len(contents)))
    out += contents + b'\x00' + struct.pack('<I', crc32c.masked(contents + b'\x00'))
  out += (handles[0] + handles[1]).ljust(40, b'\x00') + struct.pack('<Q', 0xdb4775248b80fb57)
  with open(prefix + '.index', 'wb') as f:
    f.write(bytes(out))


def _copy_checkpoint(prefix, directory):
  os.makedirs(directory)
  for name in os.listdir(os.path.dirname(prefix)):
    if name.startswith(os.path.basename(prefix) + '.'):
      shutil.copy(os.path.join(os.path.dirname(prefix), name), directory)
  return os.path.join(directory, os.path.basename(prefix))


def _edit_entry(prefix, edit):
  """Rewrites PREFIX.index with edit(key, BundleEntryProto or BundleHeaderProto) applied."""
  bundle = checkpoint_index.tensor_bundle_pb2
  items = []
  for key, value in _index_items(prefix):
    message = (bundle.BundleHeaderProto if not key else bundle.BundleEntryProto).FromString(value)
    edit(key, message)
    items.append((key, message.SerializeToString()))
  _write_index(prefix, items)


def _first_float(prefix):
  bundle = checkpoint_index.tensor_bundle_pb2
  for key, value in _index_items(prefix):
    if key and not key.startswith(b'\x00'):
      entry = bundle.BundleEntryProto.FromString(value)
      if entry.dtype == DT_FLOAT and entry.size and not entry.slices:
        return key
  raise AssertionError('no float tensor')


def _set_shape(message, dims):
  del message.shape.dim[:]
  for size in dims:
    message.shape.dim.add().size = size


def _checkpoint_edits(name):
  """case -> (edit of an index entry, what the line says)."""

  def shards(key, m):
    if not key:
      m.num_shards = 10**8

  def overflow(key, m):
    if key == name:
      _set_shape(m, [2**31, 2**31, 2**31])

  def past_the_file(key, m):  # an entry consistent with itself: 2^36 floats, 256 GiB
    if key == name:
      _set_shape(m, [2**36])
      m.size = 2**38

  def string_lengths(key, m):  # 10^9 string lengths to read from a few bytes
    if key == name:
      m.dtype = DT_STRING
      _set_shape(m, [10**9])

  return {
      # 10^8 shards: 10^8 paths were built before the first was looked for (13 GB).
      'shards_1e8': (shards, 'it declares 100000000 data shards, but'),
      'dimension_2e93': (overflow, 'has a shape whose size overflows'),
      'size_past_the_file': (past_the_file, 'the index needs 274877906944'),
      'string_lengths': (string_lengths, 'bytes for 1000000000 elements'),
  }


def _graph_with_big_const(source, path):
  """A frozen graph whose float Const is shape [2^32] filled from one value: 16 GiB."""
  graph_def = graph_pb2.GraphDef()
  with open(source, 'rb') as f:
    graph_def.ParseFromString(f.read())
  const = next(n for n in graph_def.node if n.op == 'Const' and
               n.attr['value'].tensor.dtype == DT_FLOAT and n.attr['value'].tensor.tensor_content)
  tensor = const.attr['value'].tensor
  del tensor.tensor_shape.dim[:]
  tensor.tensor_shape.dim.add().size = 2**32
  tensor.ClearField('tensor_content')
  tensor.float_val.append(1.0)
  with open(path, 'wb') as f:
    f.write(graph_def.SerializeToString())
  return const.name


def _saved_model_with_huge_dimension(source, model):
  shutil.copytree(source, model)
  path = os.path.join(model, 'saved_model.pb')
  proto = saved_model_pb2.SavedModel()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  const = next(n for n in proto.meta_graphs[0].graph_def.node
               if n.op == 'Const' and n.attr['value'].tensor.dtype == DT_FLOAT)
  dim = const.attr['value'].tensor.tensor_shape.dim
  del dim[:]
  dim.add().size = 2**62
  dim.add().size = 4
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  return path, const.name


def test_models_built_to_exhaust_memory_are_refused_in_one_line_under_a_memory_cap(
    tiny_model, tiny_frozen, tmp_path):
  """Each refused with the line naming what is wrong, in a process capped at 3 GiB."""
  cases, checks = [], []
  prefix = str(tmp_path / 'ckpt' / os.path.basename(tiny_model['checkpoint']))
  name = None
  for case, (edit, fragment) in sorted(_checkpoint_edits(None).items()):
    prefix = _copy_checkpoint(tiny_model['checkpoint'], str(tmp_path / case))
    name = name or _first_float(prefix)
    edit = _checkpoint_edits(name)[case][0]
    _edit_entry(prefix, edit)
    out = tmp_path / (case + '_out')
    cases.append(['optimize_from_ckpt.py', '--saved_model_dir=' + tiny_model['saved_model'],
                  '--checkpoint=' + prefix, '--output_saved_model_dir=%s' % out])
    checks.append(('optimize_from_ckpt.py', out, [prefix, fragment],
                   (os.path.dirname(prefix), tree_digest(os.path.dirname(prefix)))))
  graph = str(tmp_path / 'big_const.pb')
  const = _graph_with_big_const(tiny_frozen, graph)
  out = tmp_path / 'big_const_out'
  cases.append(['optimize_from_pb.py', '--input_graph=' + graph,
                '--output_saved_model_dir=%s' % out])
  checks.append(('optimize_from_pb.py', out, [
      graph + ' is corrupt', repr(const), 'has shape [4294967296] of float',
      ', 17179869184 bytes: past the 2147483647 a graph can hold'], (graph, tree_digest(graph))))
  path, const = _saved_model_with_huge_dimension(tiny_model['saved_model'],
                                                 str(tmp_path / 'huge_dim'))
  out = tmp_path / 'huge_dim.pb'
  cases.append(['freezer.py', '--saved_model_dir=' + os.path.dirname(path),
                '--output_graph=%s' % out])
  checks.append(('freezer.py', out, [path + ' is corrupt', repr(const),
                                     'has a shape whose size overflows ([4611686018427387904,4])'],
                 (path, tree_digest(path))))
  for proc, (script, out, fragments, (source, digest)) in zip(run_capped(cases), checks):
    assert_one_line_error(proc, script, *fragments)
    assert not out.exists() and tree_digest(source) == digest


# ---------------------------------------------------------------------------------------------
# The cases, in-process: each refused with a line naming the file and what is wrong


def _saved_model_case(tiny_model, tmp_path, edit):
  model = shutil.copytree(tiny_model['saved_model'], str(tmp_path / 'model'))
  path = os.path.join(model, 'saved_model.pb')
  proto = saved_model_pb2.SavedModel()
  with open(path, 'rb') as f:
    proto.ParseFromString(f.read())
  edit(proto.meta_graphs[0])
  with open(path, 'wb') as f:
    f.write(proto.SerializeToString())
  return model, path


def _output_key(meta_graph):
  sig = meta_graph.signature_def['serving_default']
  return sig, sorted(sig.outputs)[0]


def _signature_output(index_or_name):
  def edit(meta_graph):
    sig, key = _output_key(meta_graph)
    node = sig.outputs[key].name.split(':')[0]
    sig.outputs[key].name = index_or_name % node
  return edit


def _identity_without_input(meta_graph):
  node = next(n for n in meta_graph.graph_def.node if n.op == 'Identity')
  del node.input[:]


def _const_content(delta):
  def edit(meta_graph):
    const = next(n for n in meta_graph.graph_def.node
                 if n.op == 'Const' and n.attr['value'].tensor.tensor_content)
    tensor = const.attr['value'].tensor
    tensor.tensor_content = (tensor.tensor_content[:-4] if delta < 0 else
                             tensor.tensor_content + b'\0' * 4)
  return edit


def _dtype(meta_graph):
  const = next(n for n in meta_graph.graph_def.node if n.op == 'Const')
  const.attr['dtype'].type = -7


def _asset_any(meta_graph):
  value = meta_graph.collection_def['saved_model_assets'].any_list.value.add()
  value.type_url = 'type.googleapis.com/tensorflow.AssetFileDef'
  value.value = b'\x0a\xff\xff'


SAVED_MODEL_CASES = {
    'signature_output_index': (_signature_output('%s:9'), 'names %s:9, but node %r has 1 output'),
    'signature_control_mark': (_signature_output('^%s:0'),
                               "names '^%s:0', which is not a tensor name (node:index)"),
    'identity_without_input': (_identity_without_input, '(Identity) has 0 data inputs, its op '
                                                        'takes 1'),
    'const_content_short': (_const_content(-1), 'bytes of content, its shape'),
    'const_content_long': (_const_content(1), 'bytes of content, its shape'),
    'dtype_minus_7': (_dtype, "has attribute 'dtype' = dtype -7, which is not a TensorFlow "
                              'type'),
    'asset_any': (_asset_any, "collection 'saved_model_assets' holds a tensorflow.AssetFileDef "
                              'that does not decode'),
}


@pytest.mark.parametrize('case', sorted(SAVED_MODEL_CASES))
@pytest.mark.parametrize('script', ['freezer', 'optimize_from_ckpt'])
def test_corrupt_saved_model_is_refused_naming_what_is_wrong(script, case, tiny_model, tmp_path,
                                                             capsys):
  edit, fragment = SAVED_MODEL_CASES[case]
  model, path = _saved_model_case(tiny_model, tmp_path, edit)
  if '%s' in fragment or '%r' in fragment:
    proto = saved_model_pb2.SavedModel.FromString(open(path, 'rb').read())
    node = _output_key(proto.meta_graphs[0])[0].outputs[
        _output_key(proto.meta_graphs[0])[1]].name.lstrip('^').split(':')[0]
    fragment = fragment.replace('%r', repr(node)).replace('%s', node)
  out = tmp_path / 'out'
  if script == 'freezer':
    proc = run_main_as_process(freezer, ['--saved_model_dir=' + model,
                                         '--output_graph=%s.pb' % out], capsys)
  else:
    proc = run_main_as_process(optimize_from_ckpt, [
        '--saved_model_dir=' + model, '--checkpoint=' + tiny_model['checkpoint'],
        '--output_saved_model_dir=%s' % out], capsys)
  assert_one_line_error(proc, script + '.py', path + ' is corrupt', fragment)
  assert not os.path.exists(str(out) + '.pb') and not out.exists()


def test_a_metadata_init_op_naming_no_node_is_refused(tiny_frozen, tmp_path, capsys):
  from freezerlib.formats import frozen_graph
  graph = str(tmp_path / 'frozen.pb')
  graph_def = graph_pb2.GraphDef()
  with open(tiny_frozen, 'rb') as f:
    graph_def.ParseFromString(f.read())
  node = next(n for n in graph_def.node if n.name == frozen_graph.METADATA_NODE)
  meta = lean_tf.meta_graph_pb2.MetaGraphDef.FromString(node.attr['value'].tensor.string_val[0])
  meta.collection_def[frozen_graph.TABLE_INIT_COLLECTION].node_list.value[:] = ['no_such_op']
  node.attr['value'].tensor.string_val[0] = meta.SerializeToString()
  with open(graph, 'wb') as f:
    f.write(graph_def.SerializeToString())
  proc = run_main_as_process(optimize_from_pb, ['--input_graph=' + graph,
                                                '--output_saved_model_dir=%s' % (tmp_path / 'o')],
                             capsys)
  assert_one_line_error(proc, 'optimize_from_pb.py', graph + ' (its freezer_metadata node) is '
                        "corrupt: the table init op 'no_such_op' is not a node of the graph")
