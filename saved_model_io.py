"""Reading SavedModels and frozen graphs, with errors that name the path at fault.

A frozen graph written by freezer.py is a plain GraphDef that any TensorFlow tool loads. What
the next step needs (signatures, tags, the op that fills the tables) travels inside it, in one
string Const node named `freezer_metadata` that holds a serialized MetaGraphDef carrying only
that information. The node has no inputs or consumers, so it is inert for other tools and is
dropped by optimize_from_pb.py.
"""

import dataclasses
import time
from typing import Dict, List, Optional

from absl import logging

from google.protobuf import message as pb_message
from google.protobuf import text_format

import fileio
import lean_tf
from lean_tf import graph_pb2
from lean_tf import meta_graph_pb2
from lean_tf import saved_model_pb2
from lean_tf import tensorflow as tf  # imported on first use: reading needs only protos
from lean_tf import types_pb2
import utils

tf1 = lean_tf.tf1

METADATA_NODE = 'freezer_metadata'
INIT_OP_SIGNATURE_KEY = '__saved_model_init_op'
TABLE_INIT_COLLECTION = 'freezer_table_init_op'
# With freezer.py --keep_as_variables: [checkpoint prefix relative to the graph's directory,
# sha256 of its index] (the saver itself travels in the metadata's saver_def).
VARIABLES_COLLECTION = 'freezer_variables'
PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf refuses to serialize or parse a bigger message


@dataclasses.dataclass
class FrozenModel:
  """A frozen graph and what serving it needs.

  Attributes:
    graph_def: GraphDef with no variables; tables are filled by `table_init_op`.
    signatures: signature key -> SignatureDef, tensor names as in `graph_def`.
    tags: the tags of the MetaGraph it came from.
    table_init_op: name of the NoOp that fills the tables, or None when there are none.
    saver_def: with kept variables (freezer.py --keep_as_variables), the saver that restores
      them and the kept tables; else None.
    variables_prefix: the prefix of their checkpoint, relative to the graph file's directory.
    variables_digest: sha256 of that checkpoint's index, to tell it from another one.
  """
  graph_def: graph_pb2.GraphDef
  signatures: Dict[str, meta_graph_pb2.SignatureDef]
  tags: List[str]
  table_init_op: Optional[str] = None
  saver_def: Optional[object] = None  # a SaverDef
  variables_prefix: Optional[str] = None
  variables_digest: Optional[str] = None


def node_name(tensor_name):
  """'a/b:1' -> 'a/b'; '^a' -> 'a'."""
  return tensor_name.lstrip('^').split(':')[0]


def base_dtype(dtype_enum):
  """DT_FLOAT_REF -> DT_FLOAT; other dtypes unchanged."""
  return dtype_enum - 100 if dtype_enum > 100 else dtype_enum


def _is_session_bundle(export_dir):
  return (fileio.exists(utils.join(export_dir, 'export.meta')) or
          fileio.exists(utils.join(export_dir, 'export')))


def read_saved_model_proto(export_dir):
  """Parses DIR/saved_model.pb (or .pbtxt).

  Raises:
    utils.UserError: the directory is missing, empty, a session-bundle export, or its
      saved_model.pb is truncated or not a SavedModel.
  """
  if not fileio.exists(export_dir):
    raise utils.UserError('SavedModel directory %s does not exist' % export_dir)
  if not fileio.isdir(export_dir):
    raise utils.UserError('%s is a file, not a SavedModel directory' % export_dir)
  pb_path = utils.join(export_dir, 'saved_model.pb')
  txt_path = utils.join(export_dir, 'saved_model.pbtxt')
  saved_model = saved_model_pb2.SavedModel()
  if fileio.exists(pb_path):
    data = fileio.read(pb_path)
    try:
      saved_model.ParseFromString(data)
    except pb_message.DecodeError as e:
      raise utils.UserError('%s is not a valid SavedModel (truncated or corrupt: %s)'
                            % (pb_path, e)) from e
    path = pb_path
  elif fileio.exists(txt_path):
    try:
      text_format.Parse(fileio.read(txt_path).decode('utf-8'), saved_model)
    except text_format.ParseError as e:
      raise utils.UserError('%s is not a valid SavedModel: %s' % (txt_path, e)) from e
    path = txt_path
  elif _is_session_bundle(export_dir):
    raise utils.UserError(
        '%s is an old session-bundle export (export.meta), not a SavedModel; re-export it '
        'with tf.compat.v1.saved_model.Builder' % export_dir)
  elif not fileio.listdir(export_dir):
    raise utils.UserError('SavedModel directory %s is empty' % export_dir)
  else:
    raise utils.UserError('%s holds no saved_model.pb: not a SavedModel directory' % export_dir)
  if not saved_model.meta_graphs:
    raise utils.UserError('%s holds no MetaGraph (empty or truncated file)' % path)
  return saved_model


def select_meta_graph(saved_model, tags, export_dir):
  """The MetaGraph whose tag set equals `tags`.

  Raises:
    utils.UserError: no such MetaGraph; the message lists the tag sets there are.
  """
  wanted = set(tags)
  for meta_graph in saved_model.meta_graphs:
    if set(meta_graph.meta_info_def.tags) == wanted:
      return meta_graph
  available = ['%s' % ','.join(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]
  raise utils.UserError('%s has no MetaGraph tagged %s; choose --tags from: %s'
                        % (export_dir, ','.join(sorted(wanted)), '; '.join(available)))


def select_signatures(meta_graph, names, where):
  """signature key -> SignatureDef for `names` (all when empty), in a stable order.

  Raises:
    utils.UserError: an unknown name (the message lists the choices) or no signature at all.
  """
  # TF2's tf.saved_model.save stores its init op among the signatures; it is not one to serve.
  available = sorted(k for k in meta_graph.signature_def if k != INIT_OP_SIGNATURE_KEY)
  if not available:
    raise utils.UserError('%s has no signatures: nothing says what to keep' % where)
  names = list(names) if names else available
  unknown = [n for n in names if n not in available]
  if unknown:
    raise utils.UserError('%s has no signature %s; choose from: %s'
                          % (where, ', '.join(repr(n) for n in unknown), ', '.join(available)))
  return {n: meta_graph.signature_def[n] for n in names}


def signature_output_nodes(signatures):
  """Names of the nodes that produce the signatures' outputs, in a stable order."""
  names = []
  for sig in signatures.values():
    for key in sorted(sig.outputs):
      name = node_name(sig.outputs[key].name)
      if name not in names:
        names.append(name)
  return names


def check_tensors_exist(graph_def, signatures, where):
  """Every signature tensor names a node of `graph_def`.

  Raises:
    utils.UserError: naming the signature, key and missing tensor.
  """
  nodes = {n.name for n in graph_def.node}
  for sig_key, sig in signatures.items():
    for kind, infos in (('input', sig.inputs), ('output', sig.outputs)):
      for key, info in infos.items():
        if not info.name:
          raise utils.UserError('signature %r %s %r of %s is not a dense tensor (sparse and '
                                'composite signature tensors are not supported)'
                                % (sig_key, kind, key, where))
        if node_name(info.name) not in nodes:
          raise utils.UserError('signature %r %s %r names %s, which is not in %s'
                                % (sig_key, kind, key, info.name, where))


def _metadata_node(frozen):
  meta = meta_graph_pb2.MetaGraphDef()
  meta.meta_info_def.tags.extend(frozen.tags)
  for key, sig in frozen.signatures.items():
    meta.signature_def[key].CopyFrom(sig)
  if frozen.table_init_op:
    meta.collection_def[TABLE_INIT_COLLECTION].node_list.value.append(frozen.table_init_op)
  if frozen.saver_def is not None:
    meta.saver_def.CopyFrom(frozen.saver_def)
    meta.collection_def[VARIABLES_COLLECTION].bytes_list.value.extend(
        [frozen.variables_prefix.encode('utf-8'), (frozen.variables_digest or '').encode()])
  node = tf1.NodeDef(name=METADATA_NODE, op='Const')
  node.attr['dtype'].type = types_pb2.DT_STRING
  node.attr['value'].tensor.CopyFrom(
      tf.make_tensor_proto(meta.SerializeToString(), dtype=tf.string))
  return node


def frozen_to_graph_def(frozen):
  """The GraphDef to write: `frozen.graph_def` plus its metadata node."""
  graph_def = graph_pb2.GraphDef()
  graph_def.CopyFrom(frozen.graph_def)
  graph_def.node.append(_metadata_node(frozen))
  return graph_def


def write_graph_def(graph_def, path, overwrite=False):
  """Writes a binary GraphDef atomically; returns its size in bytes.

  Raises:
    utils.UserError: the graph is past protobuf's 2 GB limit, or `path` cannot be written.
  """
  size = graph_def.ByteSize()
  if size > PROTOBUF_LIMIT:
    raise utils.UserError(
        'the graph for %s would be %s, past protobuf\'s 2 GB limit for one GraphDef; use '
        'optimize_from_ckpt.py, which keeps the values in a checkpoint' % (path, utils.human_bytes(size)))
  start = time.perf_counter()
  with utils.atomic_output(path, overwrite) as tmp:
    with tf.io.gfile.GFile(tmp, 'wb') as f:
      f.write(graph_def.SerializeToString())
  seconds = time.perf_counter() - start
  logging.info('wrote %s: %s in %.1f s (%s/s)', path, utils.human_bytes(size), seconds,
               utils.human_bytes(size / max(seconds, 1e-9)))
  return size


def read_graph_def(path):
  """Parses a binary (or, for .pbtxt, text) GraphDef.

  Raises:
    utils.UserError: missing, empty, or not a GraphDef.
  """
  if not fileio.exists(path):
    raise utils.UserError('graph file %s does not exist' % path)
  if fileio.isdir(path):
    raise utils.UserError('%s is a directory, not a GraphDef file' % path)
  data = fileio.read(path)
  if not data:
    raise utils.UserError('graph file %s is empty' % path)
  graph_def = graph_pb2.GraphDef()
  try:
    if path.endswith('.pbtxt'):
      text_format.Parse(data.decode('utf-8'), graph_def)
    else:
      graph_def.ParseFromString(data)
  except (pb_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
    raise utils.UserError('%s is not a GraphDef (truncated or corrupt: %s)' % (path, e)) from e
  if not graph_def.node:
    raise utils.UserError('%s is not a GraphDef: it parses but holds no nodes' % path)
  return graph_def


def frozen_from_graph_def(graph_def, where, in_place=False):
  """Splits a GraphDef written by freezer.py into a FrozenModel; None when it has no metadata.

  With `in_place`, `graph_def` itself loses its metadata node and becomes the model's graph
  (no copy of what may be 2 GB of nodes).
  """
  meta_nodes = [n for n in graph_def.node if n.name == METADATA_NODE]
  if not meta_nodes:
    return None
  meta = meta_graph_pb2.MetaGraphDef()
  try:
    meta.ParseFromString(tf.make_ndarray(meta_nodes[0].attr['value'].tensor).item())
  except (pb_message.DecodeError, ValueError) as e:
    raise utils.UserError('%s: its %s node is corrupt (%s)' % (where, METADATA_NODE, e)) from e
  if in_place:
    plain = graph_def
    for i in reversed([i for i, n in enumerate(graph_def.node) if n.name == METADATA_NODE]):
      del plain.node[i]
  else:
    plain = graph_pb2.GraphDef()  # one copy of the nodes, not two: graphs reach 2 GB
    plain.versions.CopyFrom(graph_def.versions)
    plain.library.CopyFrom(graph_def.library)
    plain.node.extend(n for n in graph_def.node if n.name != METADATA_NODE)
  init = meta.collection_def[TABLE_INIT_COLLECTION].node_list.value
  frozen = FrozenModel(graph_def=plain, signatures=dict(meta.signature_def),
                       tags=list(meta.meta_info_def.tags), table_init_op=init[0] if init else None)
  if meta.HasField('saver_def'):
    variables = [v.decode('utf-8') for v in
                 meta.collection_def[VARIABLES_COLLECTION].bytes_list.value] + ['', '']
    if not variables[0]:
      raise utils.UserError('%s: its %s node has a saver but no checkpoint location'
                            % (where, METADATA_NODE))
    frozen.saver_def, frozen.variables_prefix = meta.saver_def, variables[0]
    frozen.variables_digest = variables[1] or None
  return frozen


def write_saved_model(frozen, export_dir, overwrite=False):
  """Writes a serving SavedModel from a FrozenModel (no variables), atomically.

  The table fill op becomes the SavedModel's main op (collection `saved_model_main_op`), the
  one init op that TF Serving, the C++ loader and both Python loaders run after loading.

  Returns:
    Total bytes written.

  Raises:
    utils.UserError: `export_dir` exists (without `overwrite`) or cannot be written.
  """
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(frozen.graph_def, name='')
  with utils.atomic_output(export_dir, overwrite) as tmp:
    with tf1.Session(graph=graph) as session:
      builder = tf1.saved_model.Builder(tmp)
      main_op = (graph.get_operation_by_name(frozen.table_init_op)
                 if frozen.table_init_op else None)
      builder.add_meta_graph_and_variables(
          session, frozen.tags or [tf1.saved_model.tag_constants.SERVING],
          signature_def_map=frozen.signatures, main_op=main_op, strip_default_attrs=True)
      builder.save()
    size = directory_size(tmp)
  return size


def directory_size(path):
  """Bytes of every file under `path` (or of the file `path`)."""
  if not fileio.isdir(path):
    return fileio.size(path)
  total = 0
  for root, _, files in fileio.walk(path):
    for name in files:
      total += fileio.size(utils.join(root, name))
  return total


def _tensor_name(name):
  return name if ':' in name else name + ':0'


def signature_from_tensors(graph_def, inputs, outputs, where):
  """A predict SignatureDef over named tensors of `graph_def`; keys are the node names.

  Raises:
    utils.UserError: a tensor that is not in the graph.
  """
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(graph_def, name='')
    except (ValueError, tf.errors.OpError) as e:
      raise utils.UserError('cannot import %s: %s' % (where, utils.tf_error_message(e))) from e
  signature = meta_graph_pb2.SignatureDef(
      method_name=tf1.saved_model.signature_constants.PREDICT_METHOD_NAME)
  for names, infos, flag in ((inputs, signature.inputs, '--inputs'),
                             (outputs, signature.outputs, '--outputs')):
    for name in names:
      try:
        tensor = graph.get_tensor_by_name(_tensor_name(name))
      except (KeyError, ValueError) as e:
        raise utils.UserError('%s names %s, which is not a tensor of %s'
                              % (flag, name, where)) from e
      key = node_name(name) if _tensor_name(name).endswith(':0') else name.replace(':', '_')
      infos[key].name = tensor.name
      infos[key].dtype = tensor.dtype.as_datatype_enum
      infos[key].tensor_shape.CopyFrom(tensor.shape.as_proto())
  return signature


def saver_op_names(saver_def):
  """Names of the saver's restore op, save op and filename nodes: what loading and saving run,
  which no signature output reaches."""
  return [node_name(n) for n in (saver_def.restore_op_name, saver_def.save_tensor_name,
                                 saver_def.filename_tensor_name) if n]


def write_saved_model_proto(meta_graph, export_dir):
  """Writes EXPORT_DIR/saved_model.pb holding `meta_graph`, serialized deterministically (the
  same model, the same bytes). Write it last: it marks the model complete."""
  proto = saved_model_pb2.SavedModel(saved_model_schema_version=1)
  proto.meta_graphs.add().CopyFrom(meta_graph)
  with fileio.open_file(utils.join(export_dir, 'saved_model.pb'), 'wb') as f:
    f.write(proto.SerializeToString(deterministic=True))


def asset_defs(meta_graph):
  """The MetaGraph's AssetFileDefs: its own field (TF2) and the TF1 `saved_model_assets`
  collection."""
  defs = list(meta_graph.asset_file_def)
  for value in meta_graph.collection_def['saved_model_assets'].any_list.value:
    asset = meta_graph_pb2.AssetFileDef()
    value.Unpack(asset)
    defs.append(asset)
  return defs
