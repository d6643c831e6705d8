"""The checkpoint path: structure graph + training checkpoint -> serving SavedModel."""

import dataclasses
import os
import time

from absl import logging

from google.protobuf import message as pb_message

import checkpoint_graph
import checkpoints
import fileio
from lean_tf import meta_graph_pb2
import op_safety
import saved_model_io
import tf2_checkpoint
import utils

_MAIN_OP_COLLECTION = 'saved_model_main_op'


@dataclasses.dataclass
class ExportReport:
  tensors_exported: int
  tensors_in_checkpoint: int
  bytes_exported: int
  bytes_in_checkpoint: int
  seconds: float


def load_structure(saved_model_dir=None, meta_graph_path=None, tags=('serve',),
                   signature_names=None, inputs=(), outputs=()):
  """(MetaGraphDef, signatures, assets dir or None, name) of the structure; no values read.

  Raises:
    utils.UserError: unreadable structure, unknown tags or signatures or tensors.
  """
  if saved_model_dir:
    proto = saved_model_io.read_saved_model_proto(saved_model_dir)
    meta_graph = saved_model_io.select_meta_graph(proto, tags, saved_model_dir)
    where, assets = saved_model_dir, utils.join(saved_model_dir, 'assets')
  else:
    where, assets = meta_graph_path, None
    if not fileio.exists(meta_graph_path):
      raise utils.UserError('meta graph %s does not exist' % meta_graph_path)
    meta_graph = meta_graph_pb2.MetaGraphDef()
    try:
      meta_graph.ParseFromString(fileio.read(meta_graph_path))
    except pb_message.DecodeError as e:
      raise utils.UserError('%s is not a MetaGraphDef (truncated or corrupt: %s)'
                            % (meta_graph_path, e)) from e
    if not meta_graph.graph_def.node:
      raise utils.UserError('%s is not a MetaGraphDef: it holds no graph' % meta_graph_path)
  if inputs or outputs:
    if not inputs or not outputs:
      raise utils.UserError('give both --inputs and --outputs')
    signatures = {'serving_default': saved_model_io.signature_from_tensors(
        meta_graph.graph_def, inputs, outputs, where)}
  else:
    signatures = saved_model_io.select_signatures(meta_graph, signature_names, where)
  saved_model_io.check_tensors_exist(meta_graph.graph_def, signatures, where)
  return meta_graph, signatures, assets, where


def serving_meta_graph(structure, serving, tags):
  """The MetaGraphDef to write: the cut graph, its saver, signatures, main op and assets."""
  meta_graph = meta_graph_pb2.MetaGraphDef()
  meta_graph.meta_info_def.CopyFrom(structure.meta_info_def)
  meta_graph.meta_info_def.ClearField('stripped_op_list')
  del meta_graph.meta_info_def.tags[:]
  meta_graph.meta_info_def.tags.extend(tags)
  meta_graph.graph_def.CopyFrom(serving.graph_def)
  meta_graph.saver_def.CopyFrom(serving.saver_def)
  for key, sig in serving.signatures.items():
    meta_graph.signature_def[key].CopyFrom(sig)
  if serving.main_op:
    meta_graph.collection_def[_MAIN_OP_COLLECTION].node_list.value.append(serving.main_op)
  kept = {n.name for n in serving.graph_def.node}
  for asset in saved_model_io.asset_defs(structure):
    if saved_model_io.node_name(asset.tensor_info.name) in kept:
      meta_graph.asset_file_def.add().CopyFrom(asset)
  return meta_graph


def _link_or_copy(src, dst):
  # A hard link costs nothing and keeps the checkpoint untouched (neither file is written
  # again); it needs both paths on one local filesystem, else the bytes are copied.
  if not fileio.is_remote(src) and not fileio.is_remote(dst):
    try:
      os.link(src, dst)
      return
    except OSError:
      pass
  fileio.copy(src, dst, overwrite=True)


def write_variables(checkpoint, wants, variables_dir, prune, chunk_bytes):
  """Writes `variables_dir/variables.*` from `checkpoint`; returns (tensors, bytes) written."""
  fileio.makedirs(variables_dir)
  prefix = utils.join(variables_dir, 'variables')
  if prune:
    done = checkpoints.copy_tensors(checkpoint, [w.name for w in wants], prefix, chunk_bytes,
                                    progress=utils.Progress('copying tensors'))
    return len(wants), done
  files = [(checkpoint.prefix + '.index', prefix + '.index')]
  files += [(src, '%s.data-%05d-of-%05d' % (prefix, k, checkpoint.num_shards))
            for k, src in enumerate(checkpoint.data_files())]
  sizes = [fileio.size(src) for src, _ in files]
  progress, done = utils.Progress('linking checkpoint files'), 0
  for (src, dst), size in zip(files, sizes):
    _link_or_copy(src, dst)
    done += size
    progress(done, sum(sizes))
  return len(checkpoint.entries), sum(checkpoint.nbytes(n) for n in checkpoint.entries)


def export(checkpoint, output_dir, saved_model_dir=None, meta_graph_path=None, tags=('serve',),
           signature_names=None, inputs=(), outputs=(), prune=True, chunk_bytes=8 << 20,
           overwrite=False, allow_ops=(), checkpoint_object=None):
  """Writes a serving SavedModel at `output_dir` whose variables come from `checkpoint`.

  A TF2 structure (tf.saved_model.save, Keras 3 model.export) goes to tf2_checkpoint.export,
  with a tf.train.Checkpoint; `checkpoint_object` names the model's object in it.

  Returns:
    ExportReport (tf2_checkpoint.ExportReport for a TF2 structure).

  Raises:
    utils.UserError: bad structure or checkpoint, a mismatch between them (all listed), or an
      output that exists (without `overwrite`). Nothing is written then.
  """
  if saved_model_dir and tf2_checkpoint.is_object_based_saved_model(saved_model_dir, tags):
    unused = [flag for flag, value in (('--signature_def', signature_names), ('--inputs', inputs),
                                       ('--outputs', outputs), ('--noprune', not prune)) if value]
    if unused:
      raise utils.UserError('%s does not apply to the TF2 SavedModel %s, whose saved_model.pb '
                            'is served whole' % (', '.join(unused), saved_model_dir))
    return tf2_checkpoint.export(checkpoint, output_dir, saved_model_dir, tags=tags,
                                 checkpoint_object=checkpoint_object, chunk_bytes=chunk_bytes,
                                 overwrite=overwrite, allow_ops=allow_ops)
  if checkpoint_object is not None:
    raise utils.UserError('--checkpoint_object applies to TF2 structures (tf.saved_model.save); '
                          'the structure %s is a TF1 graph' % (saved_model_dir or meta_graph_path))
  start = time.perf_counter()
  utils.check_output_free(output_dir, overwrite)
  structure, signatures, assets_dir, where = load_structure(
      saved_model_dir, meta_graph_path, tags, signature_names, inputs, outputs)
  removed = op_safety.check_meta_graph(structure, signatures, set(allow_ops), where)
  op_safety.log_findings(removed, 'removed (not run by the signatures)')
  serving = checkpoint_graph.serving_graph(structure.graph_def, signatures,
                                           structure.saver_def, where,
                                           structure.meta_info_def.stripped_op_list)
  ours = op_safety.saver_nodes(serving.graph_def, serving.saver_def)
  op_safety.unsafe_in(serving.graph_def, set(allow_ops), where, exempt=ours)
  prefix = checkpoints.resolve_prefix(checkpoint)
  index = checkpoints.read_index(prefix)
  wants = checkpoint_graph.wants(serving.restores, serving.graph_def)
  checkpoints.check_restorable(index, wants, where)
  meta_graph = serving_meta_graph(structure, serving, tags)
  if meta_graph.asset_file_def and not assets_dir:
    raise utils.UserError('%s reads asset files, which a .meta file does not carry: use the '
                          'SavedModel as --saved_model_dir' % where)
  logging.info('serving graph: %d nodes restoring %d tensors (%d variables and tables); '
               'checkpoint %s: %d tensors in %d shards', len(serving.graph_def.node),
               len(wants), len(serving.restores), prefix, len(index.entries), index.num_shards)
  with utils.atomic_output(output_dir, overwrite) as tmp:
    fileio.makedirs(tmp)
    tensors, written = write_variables(index, wants, utils.join(tmp, 'variables'), prune,
                                       chunk_bytes)
    for asset in meta_graph.asset_file_def:
      fileio.makedirs(utils.join(tmp, 'assets'))
      src = utils.join(assets_dir, asset.filename)
      if not fileio.exists(src):
        raise utils.UserError('asset %s of %s is missing' % (src, where))
      fileio.copy(src, utils.join(tmp, 'assets', asset.filename))
    saved_model_io.write_saved_model_proto(meta_graph, tmp)
  return ExportReport(
      tensors_exported=tensors, tensors_in_checkpoint=len(index.entries), bytes_exported=written,
      bytes_in_checkpoint=sum(index.nbytes(n) for n in index.entries),
      seconds=time.perf_counter() - start)
