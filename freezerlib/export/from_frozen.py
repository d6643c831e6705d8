"""Stage 3 of the freeze path: a frozen GraphDef becomes a lean serving SavedModel.

Each signature input that is a reader output (`IteratorGetNext:k`) or an intermediate tensor
becomes a Placeholder named after its signature key; everything the signatures' outputs and the
table fill do not need is removed; devices are cleared; Grappler's passes run. Big constants
become variables, and tables with big contents are restored by the saver, from variables/
(transforms.constants_as_variables); a graph frozen with `--keep_as_variables` keeps what its
saver restores, and the checkpoint beside it becomes variables/ (merged with the new tensors,
if any).
"""

import dataclasses

from absl import logging

from freezerlib.analysis import unsafe_ops
from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core import units
from freezerlib.formats import checkpoint_copy
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.transforms import constants_as_variables as constants_lib
from freezerlib.transforms import example_front
from freezerlib.transforms import grappler as grappler_lib
from freezerlib.transforms import prune
from freezerlib.transforms import rewrites as rewrites_lib
from freezerlib.transforms import tables


def frozen_from_file(path, inputs=(), outputs=(), init_op=None, tags=('serve',),
                     signature_names=()):
  """The FrozenModel in `path`: its own metadata, or the one --inputs/--outputs describe.

  Args:
    path: the GraphDef file.
    inputs, outputs: tensor names, for a graph without freezer's metadata (or to replace its
      signatures by one `serving_default`).
    init_op: with `inputs`/`outputs`, the op that fills the graph's tables.
    tags: the tags recorded with `inputs`/`outputs`.
    signature_names: keep only these of the graph's signatures (all when empty).

  Raises:
    errors.UserError: unreadable graph, unknown tensors or signatures.
  """
  op_defs = lean_tf.registered_op_defs()
  graph_def = frozen_graph.read_graph_def(path, op_defs)
  frozen = frozen_graph.frozen_from_graph_def(graph_def, path, in_place=True, op_defs=op_defs)
  if inputs or outputs or frozen is None:
    plain = frozen.graph_def if frozen is not None else graph_def
    if not inputs or not outputs:
      raise errors.UserError('%s was not written by freezer.py: give both --inputs and --outputs'
                             % path)
    signature = saved_model.signature_from_tensors(plain, inputs, outputs, path)
    if init_op and init_op not in {n.name for n in plain.node}:
      raise errors.UserError('--init_op names %s, which is not an op of %s' % (init_op, path))
    # A graph that keeps variables keeps its saver and checkpoint whatever the signature.
    frozen = dataclasses.replace(
        frozen or frozen_graph.FrozenModel(graph_def=plain, signatures={}, tags=[]),
        graph_def=plain, signatures={'serving_default': signature}, tags=list(tags),
        table_init_op=init_op)
  if signature_names:
    available = sorted(frozen.signatures)
    unknown = [n for n in signature_names if n not in frozen.signatures]
    if unknown:
      raise errors.UserError('%s has no signature %s; choose --signature_def from: %s' % (
          path, ', '.join(repr(n) for n in unknown), ', '.join(available)))
    frozen.signatures = {n: frozen.signatures[n] for n in signature_names}
  saved_model.check_tensors_exist(frozen.graph_def, frozen.signatures, path)
  return frozen


def write_tensorboard_graph(graph_def, log_dir):
  """Writes `graph_def` as a TensorBoard event file under `log_dir`."""
  tf = lean_tf.tensorflow
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
    writer = tf.compat.v1.summary.FileWriter(log_dir, graph=graph)
    writer.close()


def serving_graph(frozen, grappler=True):
  """The serving graph of a FrozenModel: placeholders in, only inference left, devices cleared.

  Args:
    frozen: frozen_graph.FrozenModel (not modified).
    grappler: also run Grappler's passes.

  Returns:
    (new FrozenModel, prune.GraphStats before, prune.GraphStats after).
  """
  before = prune.GraphStats.of(frozen.graph_def)
  extra_keep = [frozen.table_init_op]
  if frozen.saver_def is not None:
    # Kept variables: no output reaches the saver's restore and save ops, which loading runs.
    extra_keep += saved_model.saver_op_names(frozen.saver_def)
  graph_def, signatures, keep = prune.cut_to_signatures(frozen.graph_def, frozen.signatures,
                                                        extra_keep)
  if grappler:
    graph_def = prune.strip(grappler_lib.grappler_optimize(graph_def, keep), keep)
  result = dataclasses.replace(frozen, graph_def=graph_def, signatures=signatures)
  return result, before, prune.GraphStats.of(graph_def)


def _rewrite(frozen, rewrites, table_bytes):
  """Runs the serving graph rewrites `rewrites` (transforms.rewrites) on `frozen`'s graph, in
  place; tables are rewritten from `table_bytes` bytes of contents (None: none are).

  Returns:
    transforms.rewrites.Context, whose `tables_from_variables` the rewrites filled.
  """
  keep = set(saved_model.signature_output_nodes(frozen.signatures))
  keep |= {graphs.node_name(i.name) for s in frozen.signatures.values()
           for i in s.inputs.values()}
  keep |= {frozen.table_init_op} | set(saved_model.saver_op_names(frozen.saver_def)
                                      if frozen.saver_def else [])
  context = rewrites_lib.Context(frozen.table_init_op, frozenset(keep), table_bytes)
  rewrites_lib.run(frozen.graph_def, rewrites, context)
  return context


def saved_model_from_frozen_graph(input_graph, output_saved_model_dir=None, output_graph=None,
                                  inputs=(), outputs=(), init_op=None, tags=('serve',),
                                  grappler=True, log_dir=None, overwrite=False, allow_ops=(),
                                  constants_as_variables=1 << 20, signature_names=(),
                                  version=None, finalize=None, serving_input='placeholders',
                                  rewrites=rewrites_lib.DEFAULTS):
  """Cuts, strips and re-dumps `input_graph` as a serving SavedModel and/or GraphDef.

  Args:
    input_graph: a GraphDef written by freezer.py, or any frozen GraphDef with `inputs` and
      `outputs` (tensor names).
    output_saved_model_dir: the SavedModel to write, or None.
    output_graph: the optimized GraphDef to write, or None.
    inputs, outputs: tensor names of a GraphDef without freezer's metadata.
    init_op: with `inputs`/`outputs`, the op that fills the graph's tables.
    tags: the tags of the SavedModel written.
    grappler: run Grappler's passes.
    log_dir: write the graph before and after as TensorBoard event files there.
    overwrite: replace existing outputs.
    allow_ops: op types that touch files, run Python or reach the network to accept.
    constants_as_variables: in the SavedModel, Consts of at least this many bytes become
      variables, and tables whose keys and values take that much are restored by the saver,
      from its variables/ (None: none are).
    signature_names: serve only these signatures (all when empty).
    version: None, or an int or 'auto': write the SavedModel as OUTPUT_SAVED_MODEL_DIR/<version>,
      TF Serving's layout (see core.atomic.versioned_output).
    finalize: callable(saved_model_dir) run on the complete SavedModel before it moves into
      place (warmup requests).
    serving_input: 'placeholders', or 'examples' for a graph that still holds its training
      reader: one input of serialized tf.Example replaces it (transforms.example_front).
    rewrites: names of the serving graph rewrites to run before anything else (of
      transforms.rewrites.NAMES; they run in the registry's order).

  Returns:
    (optimized FrozenModel, prune.GraphStats before, prune.GraphStats after); the model's big
    constants are variables (its `saver_def` set) when `constants_as_variables` picked any.

  Raises:
    errors.UserError: bad input, or an output that exists (without `overwrite`).
  """
  if not output_saved_model_dir and not output_graph:
    raise errors.UserError('nothing to write: give --output_saved_model_dir and/or '
                           '--output_graph')
  if output_saved_model_dir:
    atomic.check_output_free(output_saved_model_dir, overwrite, version)
  if output_graph:
    atomic.check_output_free(output_graph, overwrite)
  frozen = frozen_from_file(input_graph, inputs, outputs, init_op, tags, signature_names)
  if serving_input != 'placeholders':
    graph_def, signatures = example_front.serving_front(frozen.graph_def, frozen.signatures,
                                                        serving_input, input_graph)
    frozen = dataclasses.replace(frozen, graph_def=graph_def, signatures=signatures)
  prefix, saver_nodes = None, set()
  if frozen.saver_def is not None:  # freezer.py --keep_as_variables: a checkpoint beside it
    prefix = frozen_graph.checkpoint_of(frozen, input_graph)
    saver_nodes = saved_model.saver_nodes(frozen.graph_def, frozen.saver_def)
  needed = unsafe_ops.needed_nodes(frozen.graph_def, frozen.signatures,
                                   [frozen.table_init_op] if frozen.table_init_op else [])
  removed = unsafe_ops.enforce(unsafe_ops.find_unsafe(frozen.graph_def, exempt=saver_nodes),
                               needed, set(allow_ops), input_graph)
  unsafe_ops.log_findings(removed, 'removed (not run by the signatures)')
  rewritten = _rewrite(frozen, rewrites, constants_as_variables)
  # Big constants are set aside as variables first: Grappler and the cut then work on a graph
  # without their bytes (Grappler's time grows with them), and the SavedModel restores them
  # from variables/ instead of parsing them from its graph.
  split = None
  if constants_as_variables is not None:
    split = constants_lib.split(frozen, constants_as_variables, input_graph,
                                rewritten.tables_from_variables)
  work = split.frozen if split else frozen
  tf = lean_tf.tensorflow
  try:
    result, before, after = serving_graph(work, grappler)
  except (ValueError, TypeError, tf.errors.OpError) as e:
    raise errors.UserError('cannot optimize %s: %s'
                           % (input_graph, errors.tf_error_message(e))) from e
  unsafe_ops.unsafe_in(result.graph_def, set(allow_ops), input_graph,
                       exempt=saved_model.saver_nodes(result.graph_def, result.saver_def))
  if split:
    logging.info('%d constants and %d tables of %s or more (%s) set aside, restored from '
                 'variables/', len(split.values), len(split.tables),
                 units.human_bytes(constants_as_variables), units.human_bytes(split.nbytes))
    split = dataclasses.replace(split, frozen=result)
  prune.log_cut(before, after)
  if log_dir:
    write_tensorboard_graph(frozen.graph_def, files.join(log_dir, 'before'))
    write_tensorboard_graph(result.graph_def, files.join(log_dir, 'after'))
    logging.info('wrote the graphs before and after as TensorBoard event files under %s',
                 log_dir)
  if output_graph and prefix:
    frozen_graph.write_graph(constants_lib.inline(split) if split else result, prefix,
                             output_graph, overwrite)
    logging.info('wrote %s and its checkpoint %s', output_graph,
                 frozen_graph.checkpoint_dir(output_graph))
  elif output_graph:
    plain = constants_lib.inline(split) if split else result
    # No C++ loader takes a GraphDef: the serving check's static part (as freezer.py's).
    tables.check_tables_filled(plain.graph_def, plain.signatures, plain.table_init_op,
                               where=input_graph)
    frozen_graph.write_graph_def(frozen_graph.frozen_to_graph_def(plain), output_graph,
                                 overwrite)
    logging.info('wrote %s', output_graph)
  if output_saved_model_dir:
    tags = result.tags or ['serve']
    if split:
      write_variables = constants_lib.variables_writer(split, prefix)
    elif prefix:
      write_variables = lambda d: checkpoint_copy.link_checkpoint(prefix, d + '/variables')
    else:
      write_variables = None
    meta_graph = saved_model.serving_meta_graph(
        result.graph_def, result.signatures, tags, saver_def=result.saver_def,
        main_op=result.table_init_op, strip_default_attrs=write_variables is None)
    path, size = saved_model.write_saved_model(
        output_saved_model_dir, meta_graph, write_variables, overwrite=overwrite,
        version=version, finalize=finalize)
    logging.info('wrote SavedModel %s (%s%s; signatures: %s)', path,
                 units.human_bytes(size), ', variables/ from %s' % prefix if prefix else '',
                 ', '.join(sorted(result.signatures)))
  return result, before, after
