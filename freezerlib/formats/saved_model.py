"""SavedModels: read one with errors that name the path at fault, build and write a serving one.

Reading parses `saved_model.pb` (or `.pbtxt`) with TensorFlow's protos only, never importing
TensorFlow itself. Writing is one function for every serving SavedModel this toolkit makes:
the MetaGraph (`serving_meta_graph`), then whatever fills `variables/` and `assets/`, then
`saved_model.pb` last, all under a temporary name moved into place when complete.
"""

from absl import logging
from google.protobuf import message as pb_message
from google.protobuf import symbol_database
from google.protobuf import text_format

from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import saved_model_pb2
from freezerlib.formats import graph_check

INIT_OP_SIGNATURE_KEY = '__saved_model_init_op'
# The collection of the one op TF Serving, the C++ loader and both Python loaders run after
# restoring variables/ (the TF1 Builder's `main_op`).
MAIN_OP_COLLECTION = 'saved_model_main_op'


def _is_session_bundle(export_dir):
  return (files.exists(files.join(export_dir, 'export.meta')) or
          files.exists(files.join(export_dir, 'export')))


def read_saved_model_proto(export_dir):
  """Parses DIR/saved_model.pb (or .pbtxt).

  Raises:
    errors.UserError: the directory is missing, empty, a session-bundle export, or its
      saved_model.pb is truncated or not a SavedModel.
  """
  return _read_saved_model_proto(export_dir)[0]


def read_meta_graph(export_dir, tags):
  """The MetaGraph tagged `tags` of the SavedModel `export_dir`, its graph checked.

  The one way every script reads a SavedModel's graph: parsed, selected, and refused with one
  line naming saved_model.pb and the node when TensorFlow would not load it
  (formats.graph_check).

  Raises:
    errors.UserError: as read_saved_model_proto and select_meta_graph;
      graph_check.CorruptGraphError: a corrupt graph.
  """
  proto, path = _read_saved_model_proto(export_dir)
  meta_graph = select_meta_graph(proto, tags, export_dir)
  graph_check.check_meta_graph(meta_graph, path)
  check_meta_graph_fields(meta_graph, path)
  return meta_graph


def check_meta_graph_fields(meta_graph, where):
  """What a loader trusts besides the graph: every signature names outputs its nodes have (a
  signature tensor `score:9` of a node with one output, or `^prob:0`, is refused), the init
  ops and the saver's ops are nodes of the graph, the collections' `Any` values decode, a TF2
  object graph refers only to objects and functions it holds, and the TensorFlow version
  recorded is one a loader parses.

  Raises:
    graph_check.CorruptGraphError: naming `where` and what is wrong.
  """
  graph_def = meta_graph.graph_def
  op_defs = graph_check.op_defs_of(meta_graph.meta_info_def.stripped_op_list) or None
  # The init op's signature (TF2) names an op, not a tensor: checked with the init ops.
  graph_check.check_signature_tensors(graph_def, {
      k: v for k, v in meta_graph.signature_def.items() if k != INIT_OP_SIGNATURE_KEY},
                                      where, op_defs)
  graph_check.check_node_names(graph_def, init_ops_of(meta_graph), where, 'the init op')
  if meta_graph.HasField('saver_def'):
    saver_def = meta_graph.saver_def
    if saver_def.restore_op_name:  # run by name: an op
      graph_check.check_node_names(graph_def, [saver_def.restore_op_name], where,
                                   'the saver\'s restore op')
    graph_check.check_tensor_names(graph_def, [n for n in (
        saver_def.save_tensor_name, saver_def.filename_tensor_name) if n], where,
                                   'the saver\'s tensor', op_defs)
  for key in sorted(meta_graph.collection_def):
    collection = meta_graph.collection_def[key]
    if collection.WhichOneof('kind') == 'any_list':
      for value in collection.any_list.value:
        problem = _any_problem(value)
        if problem:
          raise graph_check.CorruptGraphError('%s is corrupt: collection %r holds %s'
                                              % (where, key, problem))
  # Loaders feed the assets' paths to the init op (after the Any check: asset_defs decodes).
  graph_check.check_runs_unfed(graph_def, init_ops_of(meta_graph), where, 'the init op',
                               [a.tensor_info.name for a in asset_defs(meta_graph)])
  problem = _object_graph_problem(meta_graph)
  if problem:
    raise graph_check.CorruptGraphError('%s is corrupt: its object graph %s' % (where, problem))
  version = meta_graph.meta_info_def.tensorflow_version
  if version and not _version_parses(version):
    raise graph_check.CorruptGraphError('%s is corrupt: its TensorFlow version %r is not a '
                                        'version' % (where, version))


def _object_graph_problem(meta_graph):
  """What is wrong with a TF2 MetaGraph's object graph (None when nothing is): every reference
  to an object (children, dependencies, slot variables, a function's bound inputs) is one of
  its objects, and every concrete function an object names is in the object graph and in the
  graph's function library."""
  graph = meta_graph.object_graph_def
  count = len(graph.nodes)
  library = {f.signature.name for f in meta_graph.graph_def.library.function}

  def outside(node_id):
    return not 0 <= node_id < count

  for index, node in enumerate(graph.nodes):
    for reference in list(node.children) + list(getattr(node, 'dependencies', ())):
      if outside(reference.node_id):
        return 'object %d refers to object %d, of %d' % (index, reference.node_id, count)
    for slot in node.slot_variables:
      for node_id in (slot.original_variable_node_id, slot.slot_variable_node_id):
        if outside(node_id):
          return 'object %d has a slot variable naming object %d, of %d' % (index, node_id,
                                                                             count)
    kind = node.WhichOneof('kind')
    names = (list(node.function.concrete_functions) if kind == 'function' else
             [node.bare_concrete_function.concrete_function_name]
             if kind == 'bare_concrete_function' else [])
    for name in names:
      if name not in graph.concrete_functions:
        return 'object %d names concrete function %r, which it does not hold' % (index, name)
  if count and any(k != INIT_OP_SIGNATURE_KEY for k in meta_graph.signature_def) and not any(
      c.local_name == 'signatures' for c in graph.nodes[0].children):
    # tf.saved_model.load serves the signatures through the root object's `signatures`.
    return 'has no signatures under its root object, where its signatures are loaded from'
  for name in sorted(graph.concrete_functions):
    if name not in library:
      return 'holds concrete function %r, which is not in the graph\'s library' % name
    for node_id in graph.concrete_functions[name].bound_inputs:
      if outside(node_id):
        return 'binds concrete function %r to object %d, of %d' % (name, node_id, count)
  return None


def _version_parses(version):
  """Whether TensorFlow's loader parses `version` (packaging.version, a TensorFlow dependency)."""
  try:
    from packaging import version as packaging_version
  except ImportError:
    return True
  try:
    packaging_version.parse(version)
  except packaging_version.InvalidVersion:
    return False
  return True


def _any_problem(value):
  """What is wrong with an `Any` (None when nothing is, or its type is not one TensorFlow's
  protos define)."""
  name = value.type_url.rsplit('/', 1)[-1]
  try:
    cls = symbol_database.Default().GetSymbol(name)
  except KeyError:
    return None
  try:
    cls.FromString(value.value)
  except pb_message.DecodeError as e:
    return 'a %s that does not decode (%s)' % (name, e)
  return None


def _read_saved_model_proto(export_dir):
  """(SavedModel proto, the file it was parsed from); see read_saved_model_proto."""
  if not files.exists(export_dir):
    raise errors.UserError('SavedModel directory %s does not exist' % export_dir)
  if not files.isdir(export_dir):
    raise errors.UserError('%s is a file, not a SavedModel directory' % export_dir)
  pb_path = files.join(export_dir, 'saved_model.pb')
  txt_path = files.join(export_dir, 'saved_model.pbtxt')
  saved_model = saved_model_pb2.SavedModel()
  if files.exists(pb_path):
    data = files.read(pb_path)
    try:
      saved_model.ParseFromString(data)
    except pb_message.DecodeError as e:
      raise errors.UserError('%s is not a valid SavedModel (truncated or corrupt: %s)'
                            % (pb_path, e)) from e
    path = pb_path
  elif files.exists(txt_path):
    try:
      text_format.Parse(files.read(txt_path).decode('utf-8'), saved_model)
    except text_format.ParseError as e:
      raise errors.UserError('%s is not a valid SavedModel: %s' % (txt_path, e)) from e
    path = txt_path
  elif _is_session_bundle(export_dir):
    raise errors.UserError(
        '%s is an old session-bundle export (export.meta), not a SavedModel; re-export it '
        'with tf.compat.v1.saved_model.Builder' % export_dir)
  elif not files.listdir(export_dir):
    raise errors.UserError('SavedModel directory %s is empty' % export_dir)
  else:
    raise errors.UserError('%s holds no saved_model.pb: not a SavedModel directory' % export_dir)
  if not saved_model.meta_graphs:
    raise errors.UserError('%s holds no MetaGraph (empty or truncated file)' % path)
  return saved_model, path


def select_meta_graph(saved_model, tags, export_dir):
  """The MetaGraph whose tag set equals `tags`.

  Raises:
    errors.UserError: no such MetaGraph; the message lists the tag sets there are.
  """
  wanted = set(tags)
  for meta_graph in saved_model.meta_graphs:
    if set(meta_graph.meta_info_def.tags) == wanted:
      return meta_graph
  available = ['%s' % ','.join(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]
  raise errors.UserError('%s has no MetaGraph tagged %s; choose --tags from: %s'
                        % (export_dir, ','.join(sorted(wanted)), '; '.join(available)))


def select_signatures(meta_graph, names, where):
  """signature key -> SignatureDef for `names` (all when empty), in a stable order.

  Raises:
    errors.UserError: an unknown name (the message lists the choices) or no signature at all.
  """
  # TF2's tf.saved_model.save stores its init op among the signatures; it is not one to serve.
  available = sorted(k for k in meta_graph.signature_def if k != INIT_OP_SIGNATURE_KEY)
  if not available:
    raise errors.UserError('%s has no signatures: nothing says what to keep; name the tensors to '
                           'serve with --inputs and --outputs' % where)
  names = list(names) if names else available
  unknown = [n for n in names if n not in available]
  if unknown:
    raise errors.UserError('%s has no signature %s; choose from: %s'
                          % (where, ', '.join(repr(n) for n in unknown), ', '.join(available)))
  return {n: meta_graph.signature_def[n] for n in names}


def signatures_to_serve(meta_graph, signature_names, inputs, outputs, where):
  """The signatures a script serves: those the MetaGraph has, or one made of named tensors.

  `--inputs`/`--outputs` mean the same in every script: one predict signature,
  `serving_default`, over those tensors (keys are their node names, see
  `signature_from_tensors`), in place of the MetaGraph's own signatures, which is how a model
  without signatures is served. They do not mix with `--signature_def`, which chooses among
  the MetaGraph's signatures, and they need TensorFlow (shape inference).

  Args:
    meta_graph: the MetaGraphDef.
    signature_names: signature keys to keep (all when empty).
    inputs, outputs: tensor names, or empty.
    where: the model's path, for messages.

  Returns:
    signature key -> SignatureDef.

  Raises:
    errors.UserError: only one of inputs and outputs, both with signature_names, an unknown
      tensor or signature, or no signature at all.
  """
  if not inputs and not outputs:
    return select_signatures(meta_graph, signature_names, where)
  if not inputs or not outputs:
    raise errors.UserError('give both --inputs and --outputs')
  if signature_names:
    raise errors.UserError('--signature_def chooses among the signatures of %s, --inputs and '
                           '--outputs replace them with one: give one or the other' % where)
  own = sorted(k for k in meta_graph.signature_def if k != INIT_OP_SIGNATURE_KEY)
  if own:
    logging.warning('--inputs and --outputs replace the signatures of %s (%s) with one, '
                    'serving_default', where, ', '.join(own))
  return {'serving_default': signature_from_tensors(meta_graph.graph_def, inputs, outputs,
                                                    where)}


def _signature_nodes(signatures, kind):
  names = []
  for sig in signatures.values():
    for tensor in graphs.signature_tensors(sig, kind):
      name = graphs.node_name(tensor)
      if name not in names:
        names.append(name)
  return names


def signature_output_nodes(signatures):
  """Names of the nodes that produce the signatures' outputs, in a stable order."""
  return _signature_nodes(signatures, 'outputs')


def signature_input_nodes(signatures):
  """Names of the nodes that feed the signatures' inputs (every component of a sparse or
  composite input), in a stable order."""
  return _signature_nodes(signatures, 'inputs')


def check_tensors_exist(graph_def, signatures, where):
  """Every signature tensor (each component of a sparse or composite one) names a node of
  `graph_def`.

  Raises:
    errors.UserError: naming the signature, key and missing tensor.
  """
  nodes = {n.name for n in graph_def.node}
  for sig_key, sig in signatures.items():
    for kind, infos in (('input', sig.inputs), ('output', sig.outputs)):
      for key, info in infos.items():
        tensors = graphs.info_tensors(info)
        encoding = info.WhichOneof('encoding')
        expected = {'name': 1, 'coo_sparse': 3}.get(encoding)
        if not tensors or (expected and len(tensors) != expected):
          raise errors.UserError('signature %r %s %r of %s names no tensor (or not all of a '
                                 'sparse tensor\'s three)' % (sig_key, kind, key, where))
        for tensor in tensors:
          if graphs.node_name(tensor) not in nodes:
            raise errors.UserError('signature %r %s %r names %s, which is not in %s'
                                   % (sig_key, kind, key, tensor, where))


def directory_size(path):
  """Bytes of every file under `path` (or of the file `path`)."""
  if not files.isdir(path):
    return files.size(path)
  total = 0
  for root, _, names in files.walk(path):
    for name in names:
      total += files.size(files.join(root, name))
  return total


def signature_from_tensors(graph_def, inputs, outputs, where):
  """A predict SignatureDef over named tensors of `graph_def`; keys are the node names.

  Raises:
    errors.UserError: a tensor that is not in the graph.
  """
  tf = lean_tf.tensorflow  # shapes need TensorFlow's shape inference
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.graph_util.import_graph_def(graph_def, name='')
    except (ValueError, TypeError, tf.errors.OpError) as e:
      raise errors.UserError('cannot import %s: %s' % (where, errors.tf_error_message(e))) from e
  signature = meta_graph_pb2.SignatureDef(
      method_name='tensorflow/serving/predict')
  for names, infos, flag in ((inputs, signature.inputs, '--inputs'),
                             (outputs, signature.outputs, '--outputs')):
    for name in names:
      try:
        tensor = graph.get_tensor_by_name(graphs.tensor_name(name))
      except (KeyError, ValueError) as e:
        raise errors.UserError('%s names %s, which is not a tensor of %s'
                               % (flag, name, where)) from e
      key = (graphs.node_name(name) if graphs.tensor_name(name).endswith(':0')
             else name.replace(':', '_'))
      infos[key].name = tensor.name
      infos[key].dtype = tensor.dtype.as_datatype_enum
      infos[key].tensor_shape.CopyFrom(tensor.shape.as_proto())
  return signature


def saver_op_names(saver_def):
  """Names of the saver's restore op, save op and filename nodes: what loading and saving run,
  which no signature output reaches."""
  return [graphs.node_name(n) for n in (saver_def.restore_op_name, saver_def.save_tensor_name,
                                        saver_def.filename_tensor_name) if n]


def saver_nodes(graph_def, saver_def):
  """The nodes of the graph's own saver (what its save and restore ops need)."""
  if saver_def is None:
    return set()
  names = {n.name for n in graph_def.node}
  roots = [r for r in saver_op_names(saver_def) if r in names]
  if not roots:
    return set()
  return graphs.reachable(graph_def, roots)


def is_object_based(meta_graph):
  """True for a MetaGraph written by tf.saved_model.save (TF2), False for a TF1 Builder's.

  The test tf.saved_model.load itself makes: only TF2's saver writes an object graph. The
  `__saved_model_init_op` signature is not a test (TF1 models can have one), nor is a missing
  saver (TF2 models have one too).
  """
  return (meta_graph.HasField('object_graph_def') and
          len(meta_graph.object_graph_def.nodes) > 0)


def load_objects(export_dir, tags):
  """tf.saved_model.load (TensorFlow imported here), with its failures as one-line errors."""
  tf = lean_tf.tensorflow
  try:
    with files.local_copy(export_dir) as local_dir:  # staged from an object store
      return tf.saved_model.load(local_dir, tags=list(tags))
  except Exception as e:  # the file is at fault, whatever TensorFlow raises
    # TensorFlow's loader on a file it cannot read raises what its parts raise: OpError,
    # OSError (a missing variables/), ValueError, KeyError, TypeError, and on a corrupt object
    # graph NotEncodableError (struct specs), AssertionError (checkpoint objects not matched),
    # IndexError. Whatever it is, the SavedModel does not load: the file is at fault.
    if isinstance(e, errors.UserError):  # the staging's own one-line error
      raise
    raise errors.UserError('cannot load SavedModel %s: %s%s'
                           % (export_dir, '' if isinstance(e, (tf.errors.OpError, OSError))
                              else type(e).__name__ + ': ', errors.tf_error_message(e))) from e


def init_ops_of(meta_graph):
  """The ops a SavedModel loader runs after restoring: main op, legacy init op, TF2 init op."""
  ops = []
  for key in (MAIN_OP_COLLECTION, 'legacy_init_op', 'table_initializer'):
    if key in meta_graph.collection_def:  # (reading a missing map key would add it)
      ops.extend(meta_graph.collection_def[key].node_list.value)
  init = meta_graph.signature_def.get(INIT_OP_SIGNATURE_KEY)
  if init is not None:
    ops.extend(o.name for o in init.outputs.values())
  return ops


def write_saved_model_proto(meta_graph, export_dir):
  """Writes EXPORT_DIR/saved_model.pb holding `meta_graph`, serialized deterministically (the
  same model, the same bytes). Write it last: it marks the model complete."""
  proto = saved_model_pb2.SavedModel(saved_model_schema_version=1)
  proto.meta_graphs.add().CopyFrom(meta_graph)
  with files.open_file(files.join(export_dir, 'saved_model.pb'), 'wb') as f:
    f.write(proto.SerializeToString(deterministic=True))


def asset_defs(meta_graph):
  """The MetaGraph's AssetFileDefs: its own field (TF2) and the TF1 `saved_model_assets`
  collection."""
  defs = list(meta_graph.asset_file_def)
  if 'saved_model_assets' not in meta_graph.collection_def:  # (reading it would add it)
    return defs
  for value in meta_graph.collection_def['saved_model_assets'].any_list.value:
    asset = meta_graph_pb2.AssetFileDef()
    try:
      ok = value.Unpack(asset)
    except pb_message.DecodeError as e:
      raise errors.UserError('the saved_model_assets collection holds an asset that does not '
                             'decode (%s)' % e) from e
    if not ok:
      raise errors.UserError('the saved_model_assets collection holds a %s, not an AssetFileDef'
                             % value.type_url)
    defs.append(asset)
  return defs


def serving_meta_graph(graph_def, signatures, tags, saver_def=None, main_op=None, assets=(),
                       meta_info_def=None, strip_default_attrs=False):
  """The one builder of a serving SavedModel's MetaGraphDef.

  Args:
    graph_def: the serving graph (copied).
    signatures: signature key -> SignatureDef.
    tags: the MetaGraph's tags.
    saver_def: the saver that restores variables/, or None for a graph without state.
    main_op: the op loaders run after restoring (it fills the tables), or None.
    assets: AssetFileDefs the graph reads.
    meta_info_def: a MetaInfoDef to start from (the structure's, on the checkpoint path);
      its op list is dropped. None: this TensorFlow's version.
    strip_default_attrs: strip attributes that hold their op's default value and record the
      ops used, as the TF1 Builder does (needs TensorFlow's op registry).

  Returns:
    MetaGraphDef.
  """
  meta_graph = meta_graph_pb2.MetaGraphDef()
  if strip_default_attrs:
    tf = lean_tf.tensorflow
    graph = tf.Graph()
    with graph.as_default():
      tf.graph_util.import_graph_def(graph_def, name='')
      if main_op:
        graph.add_to_collection(MAIN_OP_COLLECTION, graph.get_operation_by_name(main_op))
      meta_graph.CopyFrom(tf.compat.v1.train.export_meta_graph(
          graph=graph, strip_default_attrs=True, saver_def=saver_def))
    meta_graph.meta_info_def.tags.extend(tags)
  else:
    if meta_info_def is not None:
      meta_graph.meta_info_def.CopyFrom(meta_info_def)
      meta_graph.meta_info_def.ClearField('stripped_op_list')
      del meta_graph.meta_info_def.tags[:]
      meta_graph.meta_info_def.tags.extend(tags)
    else:
      tf = lean_tf.tensorflow
      meta_graph.meta_info_def.tags.extend(tags)
      meta_graph.meta_info_def.tensorflow_version = tf.version.VERSION
      meta_graph.meta_info_def.tensorflow_git_version = tf.version.GIT_VERSION
    meta_graph.graph_def.CopyFrom(graph_def)
    if saver_def is not None:
      meta_graph.saver_def.CopyFrom(saver_def)
    if main_op:
      meta_graph.collection_def[MAIN_OP_COLLECTION].node_list.value.append(main_op)
  for key, sig in signatures.items():
    meta_graph.signature_def[key].CopyFrom(sig)
  for asset in assets:
    meta_graph.asset_file_def.add().CopyFrom(asset)
  return meta_graph


def write_saved_model(export_dir, meta_graph, write_variables=None, assets_dir=None,
                      overwrite=False, version=None, finalize=None, saved_model_file=None,
                      assets_extra_dir=None):
  """The one SavedModel writer: variables/, assets/, then saved_model.pb, atomically.

  Args:
    export_dir: the SavedModel directory to write; with `version`, TF Serving's model base
      path, under which the SavedModel becomes EXPORT_DIR/<version>.
    meta_graph: its MetaGraphDef (from `serving_meta_graph`).
    write_variables: None for a model without state, else callable(variables_dir) that
      writes variables/variables.{index,data-*} there (the directory exists).
    assets_dir: where the asset files `meta_graph` names (its asset_file_def and its TF1
      assets collection) are read from; each file is copied once, however many entries name
      it.
    overwrite: replace an existing output.
    version: None, an int, or 'auto' (one more than the highest version there).
    finalize: callable(saved_model_dir) run once the SavedModel is complete but before it
      moves into place (e.g. writing assets.extra/ warmup requests, which needs it loaded).
    saved_model_file: a saved_model.pb (or .pbtxt) to copy byte for byte instead of writing
      `meta_graph` (the TF2 checkpoint path serves its structure's file as it is).
    assets_extra_dir: a directory copied as assets.extra/ (TF Serving's warmup requests).

  Returns:
    (the SavedModel's final path, total bytes written).

  Raises:
    errors.UserError: the output exists (without `overwrite`), an asset is missing, or a
      write fails. Nothing is left in place of the output then.
  """
  if version is None:
    output = atomic.atomic_output(export_dir, overwrite)
  else:
    output = atomic.versioned_output(export_dir, version, overwrite)
  with output as out:
    tmp = out if isinstance(out, str) else out.tmp
    files.makedirs(tmp)
    # variables/ exists even for a model without state, as the TF1 Builder leaves it.
    files.makedirs(files.join(tmp, 'variables'))
    if write_variables is not None:
      write_variables(files.join(tmp, 'variables'))
    for name in sorted({a.filename for a in asset_defs(meta_graph)}):
      src = files.join(assets_dir, name) if assets_dir else None
      if src is None or not files.exists(src):
        raise errors.UserError('asset %s is missing' % (src or name))
      dst = files.join(tmp, 'assets', name)
      files.makedirs(files.parent_dir(dst))
      files.copy(src, dst)
    if assets_extra_dir and files.isdir(assets_extra_dir):
      for root, _, names in files.walk(assets_extra_dir):
        for name in names:
          src = files.join(root, name)
          dst = files.join(tmp, 'assets.extra', src[len(assets_extra_dir.rstrip('/')):])
          files.makedirs(files.parent_dir(dst))
          files.copy(src, dst)
    if saved_model_file:
      files.copy(saved_model_file, files.join(tmp, files.basename(saved_model_file)))
    else:
      write_saved_model_proto(meta_graph, tmp)
    if finalize is not None:
      finalize(tmp)
    size = directory_size(tmp)
  return (export_dir if isinstance(out, str) else out.path), size
