"""The checkpoint path: structure graph + training checkpoint -> serving SavedModel.

For models too large to freeze, or to export from the training cluster. The structure's own
variable values are never read: its signature inputs become placeholders, what the outputs do
not need goes, devices are cleared, and a new saver restores exactly the variables and tables
left. Every tensor that saver reads is checked against the checkpoint's index before anything
is written; then variables/ gets only those tensors, their stored bytes copied as they are.
With a structure whose inputs are placeholders, TensorFlow itself is never imported.

No serving rewrite (transforms.rewrites) runs here, nor in from_tf2_checkpoint: each rewrites
values it reads as Consts of a frozen graph, and here the values are never in the graph, only
in the checkpoint's stored bytes, copied as they are (docs/rewrites.md).
"""

import dataclasses
import time
from typing import List, Optional

from absl import logging
from google.protobuf import message as pb_message

from freezerlib.analysis import unsafe_ops
from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import units
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.export import ExportReport
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import checkpoint_index
from freezerlib.formats import graph_check
from freezerlib.formats import saved_model
from freezerlib.transforms import placeholders
from freezerlib.transforms import prune
from freezerlib.transforms import saver
from freezerlib.transforms import tables


@dataclasses.dataclass
class Structure:
  """A structure graph, as every structure format's loader returns it (values never read).

  Attributes:
    meta_graph: its MetaGraphDef.
    where: its path, for messages.
    assets_dir: the directory of the asset files it reads, or None (a .meta file has none).
    saved_model_dir: the SavedModel it is, or None.
    object_based: a TF2 structure (tf.saved_model.save, Keras 3 model.export): its
      saved_model.pb is served whole, with its values from a tf.train.Checkpoint
      (from_tf2_checkpoint).
  """
  meta_graph: object
  where: str
  assets_dir: Optional[str] = None
  saved_model_dir: Optional[str] = None
  object_based: bool = False


def structure_from_saved_model(saved_model_dir, tags=('serve',)):
  """The Structure of the SavedModel `saved_model_dir`: its MetaGraph tagged `tags`, TF1 or
  TF2.

  Raises:
    errors.UserError: unreadable or corrupt SavedModel, or no MetaGraph with those tags.
  """
  meta_graph = saved_model.read_meta_graph(saved_model_dir, tags)
  return Structure(meta_graph, saved_model_dir, files.join(saved_model_dir, 'assets'),
                   saved_model_dir, saved_model.is_object_based(meta_graph))


def structure_from_meta_graph(meta_graph_path):
  """The Structure of a MetaGraphDef file (model.ckpt-N.meta, as a TF1 Saver writes it).

  Raises:
    errors.UserError: missing, unreadable or corrupt file.
  """
  if not files.exists(meta_graph_path):
    raise errors.UserError('meta graph %s does not exist' % meta_graph_path)
  meta_graph = meta_graph_pb2.MetaGraphDef()
  try:
    meta_graph.ParseFromString(files.read(meta_graph_path))
  except pb_message.DecodeError as e:
    raise errors.UserError('%s is not a MetaGraphDef (truncated or corrupt: %s)'
                          % (meta_graph_path, e)) from e
  if not meta_graph.graph_def.node:
    raise errors.UserError('%s is not a MetaGraphDef: it holds no graph' % meta_graph_path)
  graph_check.check_meta_graph(meta_graph, meta_graph_path)
  saved_model.check_meta_graph_fields(meta_graph, meta_graph_path)
  return Structure(meta_graph, meta_graph_path)


@dataclasses.dataclass
class ServingGraph:
  """What optimize_from_ckpt.py writes: graph, signatures, saver, init op (or None), and the
  restores its saver performs."""
  graph_def: object
  signatures: dict
  saver_def: object
  main_op: str
  restores: List[saver.Restore]


def serving_graph(graph_def, signatures, saver_def, where, op_defs=None):
  """Cuts the structure graph to serving and gives it a saver over what it keeps.

  Args:
    graph_def: the structure graph (not modified).
    signatures: signature key -> SignatureDef to serve.
    saver_def: the structure's SaverDef (how its variables map to checkpoint tensors).
    where: the structure's path, for messages.
    op_defs: the structure's OpList, for graph_edit.inputs_to_placeholders.

  Returns:
    ServingGraph.

  Raises:
    errors.UserError: a variable the outputs need that the saver does not restore.
  """
  restores = saver.restores_of_saver(graph_def, saver_def, where)
  cut, signatures, _ = placeholders.inputs_to_placeholders(graph_def, signatures, op_defs,
                                                           where)
  keep = saved_model.signature_output_nodes(signatures)
  keep += saved_model.signature_input_nodes(signatures)
  kept = graphs.reachable(cut, list(dict.fromkeys(keep)))
  # Static tables are not in checkpoints: their own initialisers (constants, asset files) go
  # into the main op.
  restore_ops = {r.op.name for r in restores}
  inits = saver.static_table_inits(cut, kept, restore_ops)
  keep += inits
  stripped = prune.strip(cut, list(dict.fromkeys(keep)))
  kept = {n.name for n in stripped.node}
  needed = [r for r in restores if r.target in kept]
  restored = {r.target for r in needed}
  unrestored = sorted(n.name for n in stripped.node if n.op in saver.VARIABLE_OPS and
                      n.name not in restored)
  if unrestored:
    raise errors.UserError('%s: the saver does not restore %s, which the signatures need'
                          % (where, ', '.join(unrestored)))
  mutable = sorted(n.name for n in stripped.node
                   if n.op in tables.MUTABLE_TABLE_OPS | tables.DENSE_TABLE_OPS
                   and n.name not in restored)
  if mutable:
    raise errors.UserError('%s: the saver does not restore table %s, which the signatures read '
                          '(it would serve empty)' % (where, ', '.join(mutable)))
  saver_def = saver.add_saver(stripped, needed)
  main_op = None
  if inits:
    main_op = graphs.unique_scope(tables.INIT_OP_NAME, {n.name for n in stripped.node})
    stripped.node.append(saver.node_def(main_op, 'NoOp', ['^' + i for i in inits]))
  return ServingGraph(stripped, signatures, saver_def, main_op, needed)


def saved_model_from_checkpoint(checkpoint, output_dir, saved_model_dir=None,
                                meta_graph_path=None, tags=('serve',), signature_names=None,
                                inputs=(), outputs=(), prune_tensors=True, chunk_bytes=1 << 20,
                                overwrite=False, allow_ops=(), checkpoint_object=None,
                                version=None, finalize=None, serving_input='placeholders',
                                verify_checksums=True, structure=None):
  """Writes a serving SavedModel at `output_dir` whose variables come from `checkpoint`.

  Args:
    checkpoint: a checkpoint prefix, or the directory holding its `checkpoint` state file.
    output_dir: the SavedModel directory to write.
    saved_model_dir: the structure, a SavedModel (its values are not read); or
    meta_graph_path: the structure, a MetaGraphDef file; or
    structure: the structure, as a loader returned it (structure_from_saved_model,
      structure_from_meta_graph): exactly one of the three.
    tags: the structure MetaGraph's tags, and the output's.
    signature_names: signatures to serve; all when empty.
    inputs, outputs: tensor names, for a structure without signatures.
    prune_tensors: copy only the tensors the serving graph restores (False: every
      checkpoint file as it is).
    chunk_bytes: bytes read and written at a time when copying through memory.
    overwrite: replace an existing `output_dir`.
    allow_ops: op types that touch files, run Python or reach the network to accept.
    checkpoint_object: for a TF2 structure, the object path of the model in the checkpoint
      (found by matching when None).
    version: None, or an int or 'auto': write OUTPUT_DIR/<version>, TF Serving's layout.
    finalize: callable(saved_model_dir) run on the complete SavedModel before it moves into
      place (warmup requests).
    serving_input: 'placeholders', or 'examples' for a structure that holds its training
      reader: one input of serialized tf.Example replaces it (transforms.example_front).
    verify_checksums: check each tensor written (with `prune_tensors` False: each tensor of the
      checkpoint) against the CRC32C its index entry records.

  A TF2 structure (tf.saved_model.save, Keras 3 model.export) with a tf.train.Checkpoint goes
  to from_tf2_checkpoint.

  Returns:
    ExportReport.

  Raises:
    errors.UserError: bad structure or checkpoint, a mismatch between them (all listed), a
      tensor that fails its checksum, or an output that exists (without `overwrite`). Nothing
      is written then.
  """
  if [structure, saved_model_dir, meta_graph_path].count(None) != 2:
    raise errors.UserError('give exactly one structure: a SavedModel or a meta graph')
  if saved_model_dir:
    structure = structure_from_saved_model(saved_model_dir, tags)
  if structure is not None and structure.object_based:
    # Imported here: a TF1 export, which should start fast, does not need it.
    from freezerlib.export import from_tf2_checkpoint
    unused = [flag for flag, value in (
        ('--signature_def', signature_names), ('--inputs', inputs), ('--outputs', outputs),
        ('--noprune', not prune_tensors),
        ('--serving_input=%s' % serving_input, serving_input != 'placeholders')) if value]
    if unused:
      raise errors.UserError('%s does not apply to the TF2 SavedModel %s, whose saved_model.pb '
                             'is served whole' % (', '.join(unused), structure.where))
    return from_tf2_checkpoint.export(checkpoint, output_dir, structure.saved_model_dir,
                                      tags=tags, checkpoint_object=checkpoint_object,
                                      chunk_bytes=chunk_bytes, overwrite=overwrite,
                                      allow_ops=allow_ops, version=version, finalize=finalize,
                                      verify_checksums=verify_checksums)
  if checkpoint_object is not None:
    raise errors.UserError('--checkpoint_object applies to TF2 structures (tf.saved_model.save); '
                           'the structure %s is a TF1 graph'
                           % (structure.where if structure else meta_graph_path))
  start = time.perf_counter()
  atomic.check_output_free(output_dir, overwrite, version)
  if structure is None:
    structure = structure_from_meta_graph(meta_graph_path)
  meta, where, assets_dir = structure.meta_graph, structure.where, structure.assets_dir
  signatures = saved_model.signatures_to_serve(meta, signature_names, inputs, outputs, where)
  saved_model.check_tensors_exist(meta.graph_def, signatures, where)
  if serving_input != 'placeholders':
    # Imported here: start-up that a structure fed by placeholders does not need.
    from freezerlib.transforms import example_front
    graph_def, signatures = example_front.serving_front(meta.graph_def, signatures,
                                                        serving_input, where)
    original, meta = meta, meta_graph_pb2.MetaGraphDef()  # the caller's Structure stays as is
    meta.CopyFrom(original)
    meta.graph_def.CopyFrom(graph_def)
  removed = unsafe_ops.check_meta_graph(meta, signatures, set(allow_ops), where)
  unsafe_ops.log_findings(removed, 'removed (not run by the signatures)')
  serving = serving_graph(meta.graph_def, signatures, meta.saver_def, where,
                          meta.meta_info_def.stripped_op_list)
  kept = {n.name for n in serving.graph_def.node}
  assets = [a for a in saved_model.asset_defs(meta)
            if graphs.node_name(a.tensor_info.name) in kept]
  if assets and not assets_dir:
    raise errors.UserError('%s reads asset files, which a .meta file does not carry: use the '
                           'SavedModel as --saved_model_dir' % where)
  # The same trust as check_meta_graph's: the main op's vocabulary tables read the assets the
  # written SavedModel carries.
  ours = saved_model.saver_nodes(serving.graph_def, serving.saver_def)
  unsafe_ops.unsafe_in(serving.graph_def, set(allow_ops), where, exempt=ours,
                       asset_tensors={a.tensor_info.name for a in assets})
  prefix = checkpoint_index.resolve_prefix(checkpoint)
  index = checkpoint_index.read_index(prefix)
  wants = saver.wants(serving.restores, serving.graph_def)
  checkpoint_index.check_restorable(index, wants, where)
  meta_graph = saved_model.serving_meta_graph(
      serving.graph_def, serving.signatures, tags, saver_def=serving.saver_def,
      main_op=serving.main_op, assets=assets, meta_info_def=meta.meta_info_def)
  logging.info('serving graph: %d nodes restoring %d tensors (%d variables and tables); '
               'checkpoint %s: %d tensors in %d shards', len(serving.graph_def.node),
               len(wants), len(serving.restores), prefix, len(index.entries), index.num_shards)
  copied = {}

  def write_variables(variables_dir):
    dst = files.join(variables_dir, 'variables')
    if prune_tensors:
      copied['bytes'] = checkpoint_copy.copy_tensors(
          index, [w.name for w in wants], dst, chunk_bytes,
          progress=units.Progress('copying tensors'), verify=verify_checksums)
      copied['tensors'] = len(wants)
    else:
      copied['tensors'], copied['bytes'] = checkpoint_copy.link_files(index, dst,
                                                                       verify_checksums)

  path, _ = saved_model.write_saved_model(output_dir, meta_graph, write_variables, assets_dir,
                                         overwrite, version=version, finalize=finalize)
  return ExportReport(
      path=path,
      tensors_exported=copied['tensors'], tensors_in_checkpoint=len(index.entries),
      bytes_exported=copied['bytes'],
      bytes_in_checkpoint=sum(index.nbytes(n) for n in index.entries),
      seconds=time.perf_counter() - start)
