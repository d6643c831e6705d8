"""Stage 2: a SavedModel becomes one frozen GraphDef whose tables keep their contents.

`graph_from_saved_model` is the one entry point: it reads and checks the SavedModel once,
then picks the freezer in one place:
- `streaming`: TF1 graphs that read their variables the plain way: each variable's stored
  bytes are copied from variables/ straight into its Const record (a model of any size in
  bounded memory); the only one that keeps variables (`--keep_as_variables`, `keep`);
- `tf2`: TF2 object-based SavedModels, values from tf.saved_model.load;
- `in_memory`: every other TF1 graph, loaded in a session.
"""

import dataclasses
from typing import List

from absl import logging

from freezerlib.analysis import stateful
from freezerlib.analysis import unsafe_ops
from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import units
from freezerlib.formats import frozen_graph
from freezerlib.formats import saved_model
from freezerlib.freeze import in_memory
from freezerlib.freeze import keep as keep_lib
from freezerlib.freeze import streaming
from freezerlib.transforms import example_front
from freezerlib.transforms import prune
from freezerlib.transforms import tables


@dataclasses.dataclass
class FreezeResult:
  """What freezing wrote.

  Attributes:
    path: the frozen graph file.
    bytes: its size.
    model: the written graph's structure (signatures, tags, table init op, saver of kept
      variables); the Consts of frozen variables carry no values, whichever freezer ran.
    variables: names of the variables frozen into constants.
    tables: the tables kept (transforms.tables.TableContents: the streaming freezer's give
      counts and sizes, not the arrays, which it never holds all at once).
    kept: names of the variables and tables kept stateful (--keep_as_variables).
    freezer: 'streaming', 'in_memory' or 'tf2'.
  """
  path: str
  bytes: int
  model: frozen_graph.FrozenModel
  variables: List[str]
  tables: list
  kept: List[str]
  freezer: str


def read_checked(saved_model_dir, tags, signature_names, allow_ops, inputs=(), outputs=()):
  """Reads a SavedModel's MetaGraph and refuses what must not be converted, once.

  Checks: the graph is not corrupt, the MetaGraph and signatures exist (or the tensors
  `inputs` and `outputs` name, which replace them), every signature tensor is in the graph,
  no signature opens an asset file when it runs (a frozen graph carries none), loading and
  the signatures run no file, Python or network op the user did not allow, no asset escapes
  assets/, and no signature writes a variable or table.

  Returns:
    (MetaGraphDef, signatures chosen).

  Raises:
    errors.UserError: naming what is wrong and how to choose otherwise.
  """
  meta_graph = saved_model.read_meta_graph(saved_model_dir, tags)
  if (inputs or outputs) and saved_model.is_object_based(meta_graph):
    raise errors.UserError(
        '--inputs and --outputs apply to TF1 SavedModels; %s was written by '
        'tf.saved_model.save, whose signatures are its functions: choose among them with '
        '--signature_def' % saved_model_dir)
  signatures = saved_model.signatures_to_serve(meta_graph, signature_names, inputs, outputs,
                                               saved_model_dir)
  saved_model.check_tensors_exist(meta_graph.graph_def, signatures, saved_model_dir)
  unsafe_ops.check_asset_names(meta_graph, saved_model_dir)
  reads = unsafe_ops.asset_reads(meta_graph, signatures)
  if reads:
    r = reads[0]
    raise errors.UserError(
        'signature %r of %s opens the asset file %r each time it runs (op %s at %s); a frozen '
        'graph carries no asset files, so freezing it is not supported: serve the SavedModel '
        'as it is, or with optimize_from_ckpt.py, which keeps its assets'
        % (r.signature, saved_model_dir, r.filename, r.op, r.location))
  outside = unsafe_ops.check_meta_graph(meta_graph, signatures, set(allow_ops), saved_model_dir)
  # Never run here; the reader among them is left out of the frozen graph.
  unsafe_ops.log_findings(outside, 'not run by the signatures')
  stateful.check_read_only(meta_graph, signatures, saved_model_dir)
  return meta_graph, signatures


def _with_front(meta_graph, signatures, serving_input, allow_ops, where):
  """(MetaGraphDef, signatures) with example_front.serving_front applied, its ops checked."""
  graph_def, signatures = example_front.serving_front(meta_graph.graph_def, signatures,
                                                      serving_input, where)
  copy = type(meta_graph)()
  copy.CopyFrom(meta_graph)
  copy.graph_def.CopyFrom(graph_def)
  # The reader's parse function now runs at serving: what it holds is checked as the rest.
  unsafe_ops.check_meta_graph(copy, signatures, set(allow_ops), where)
  return copy, signatures


def _without_values(model, variables):
  """`model` with the values of the frozen variables' Consts dropped (structure only)."""
  frozen = set(variables)
  for node in model.graph_def.node:
    if node.name in frozen and node.op == 'Const' and 'value' in node.attr:
      del node.attr['value']
  return model


def graph_from_saved_model(saved_model_dir, output_graph, tags=('serve',), signature_names=None,
                           overwrite=False, allow_ops=(), streaming_allowed=True,
                           keep_as_variables=None, inputs=(), outputs=(),
                           serving_input='placeholders'):
  """Freezes `saved_model_dir` into the GraphDef file `output_graph`.

  Args:
    saved_model_dir: the SavedModel.
    output_graph: the GraphDef file to write.
    tags: tag set of the MetaGraph to freeze.
    signature_names: signatures to keep; all when empty.
    overwrite: replace an existing `output_graph`.
    allow_ops: op types that touch files, run Python or reach the network to accept.
    streaming_allowed: use the streaming freezer where it applies (tests turn it off).
    keep_as_variables: the --keep_as_variables spec (a size or names), or None.
    inputs, outputs: tensor names (--inputs, --outputs): one signature, serving_default, over
      them replaces the SavedModel's (for a TF1 SavedModel without signatures).
    serving_input: 'placeholders' (the signature inputs become placeholders) or 'examples'
      (the reader becomes one input of serialized tf.Example: transforms.example_front).

  Returns:
    FreezeResult.

  Raises:
    errors.UserError: bad input, unsafe ops not allowed, a stateful signature, a model past
      2 GB, or an output that exists (without `overwrite`). Nothing is written then.
  """
  keep = keep_lib.parse_spec(keep_as_variables)
  atomic.check_output_free(output_graph, overwrite)
  meta_graph, signatures = read_checked(saved_model_dir, tags, signature_names, allow_ops,
                                        inputs, outputs)
  object_based = saved_model.is_object_based(meta_graph)
  transform = None
  if serving_input != 'placeholders':
    if object_based:
      raise errors.UserError('--serving_input=%s needs a TF1 training graph with its reader; %s '
                             'was written by tf.saved_model.save' % (serving_input,
                                                                     saved_model_dir))
    original = signatures
    meta_graph, signatures = _with_front(meta_graph, signatures, serving_input, allow_ops,
                                         saved_model_dir)

    def transform(graph_def):
      """The same front on the graph the in-memory freezer loads."""
      return example_front.serving_front(graph_def, original, serving_input, saved_model_dir)
  if keep and object_based:
    raise errors.UserError('--keep_as_variables works on TF1 SavedModels; %s was written by '
                           'tf.saved_model.save' % saved_model_dir)
  kept = keep_lib.check_fits(saved_model_dir, meta_graph, signatures, keep)
  if kept and not streaming_allowed:
    raise errors.UserError('--keep_as_variables needs the streaming freezer')
  plan = None
  if streaming_allowed and not object_based:
    plan = streaming.plan(meta_graph, signatures, saved_model_dir, kept)
  if plan is not None:
    model, variables, contents, size = streaming.write(plan, tags, output_graph, overwrite)
    if not kept and overwrite:
      frozen_graph.remove_stale_checkpoint(output_graph)
    freezer = 'streaming'
  else:
    if object_based:
      from freezerlib.freeze import tf2  # loads TensorFlow
      model, variables, contents = tf2.freeze(saved_model_dir, meta_graph, signatures, tags)
      freezer = 'tf2'
    else:
      model, variables, contents = in_memory.freeze(saved_model_dir, signatures, tags,
                                                    transform)
      freezer = 'in_memory'
    # The reader (dataset and iterator ops, its embedded data) and anything else the signatures
    # do not run is left out: its inputs become placeholders.
    model.graph_def, model.signatures, _ = prune.cut_to_signatures(
        model.graph_def, model.signatures, [model.table_init_op])
    # Every table the signatures read is filled by freezer/init_tables (the streaming
    # freezer's plan refuses a table its saver does not restore).
    tables.check_tables_filled(model.graph_def, model.signatures, model.table_init_op,
                               where=saved_model_dir)
    size = frozen_graph.write_graph_def(frozen_graph.frozen_to_graph_def(model), output_graph,
                                        overwrite)
    if overwrite:
      frozen_graph.remove_stale_checkpoint(output_graph)
    _without_values(model, variables)
  logging.info('froze %d variables and %d tables (%s of table contents) with the %s freezer; '
               '%d nodes', len(variables), len(contents),
               units.human_bytes(sum(t.nbytes for t in contents)), freezer.replace('_', '-'),
               len(model.graph_def.node))
  return FreezeResult(path=output_graph, bytes=size, model=model, variables=variables,
                      tables=contents, kept=sorted(kept), freezer=freezer)
