"""The serving graph rewrites: one ordered registry, the only list of them.

A serving rewrite turns part of a frozen graph into an equivalent that serves faster or in less
memory, exactly (each module says why its result answers as the original). It is one module
under transforms/ plus one `Rewrite` entry in `REGISTRY` below: `optimize_from_pb.py
--rewrites` takes its default, its choices and its help from the registry, and
`export.from_frozen` runs the chosen entries in the registry's order.

The rewrites run on frozen graphs only, before anything else changes the graph: each needs the
values it rewrites as Consts in the graph (the parts of an embedding, a table's keys and
values, imported by the init op). The checkpoint path (export.from_checkpoint,
export.from_tf2_checkpoint) has none: its variables and tables are restored from the
checkpoint's own bytes, copied as they are stored, and never become Consts (docs/rewrites.md).
"""

import dataclasses
from typing import Callable, List, Optional

from freezerlib.core import errors
from freezerlib.transforms import one_gather
from freezerlib.transforms import read_only_tables


@dataclasses.dataclass
class Context:
  """What a rewrite may read besides the graph, and what it reports back.

  Attributes:
    init_op: the op that fills the graph's tables (None: the graph has none).
    keep: names of nodes that must stay (signature inputs and outputs, init op, saver ops).
    table_bytes: tables whose keys and values take at least this many bytes are rewritten,
      as only those are restored from variables/, where the rewrite saves memory (None: no
      table is).
    tables_from_variables: filled by the rewrites: tables the saver must restore from
      variables/ whatever their size (transforms.constants_as_variables).
  """
  init_op: Optional[str]
  keep: frozenset
  table_bytes: Optional[int]
  tables_from_variables: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Rewrite:
  """One serving rewrite.

  Attributes:
    name: its name on the command line (--rewrites).
    run: callable(graph_def, Context) -> list of what it rewrote (one record per rewritten
      part, as its module defines it); modifies the frozen `graph_def` in place.
    help: what it does, in a few words, for --help.
    default: runs unless --rewrites says otherwise.
    group: rewrites of one group are alternatives: at most one of them runs.
  """
  name: str
  run: Callable
  help: str
  default: bool = False
  group: str = ''


def _one_gather(graph_def, context):
  return one_gather.merge_partitioned_lookups(graph_def, context.keep)


def _tables(form):
  def run(graph_def, context):
    if context.table_bytes is None:
      return []
    done = read_only_tables.rewrite(graph_def, context.init_op, context.table_bytes,
                                    context.keep, form)
    context.tables_from_variables.extend(t.table for t in done)
    return done
  return run


_TABLE_HELP = ('; the table rewrites apply to tables from the --constants_as_variables size '
               'on, and to none with it off')

# The order they run in. Today's rewrites touch disjoint parts of a graph (one_gather:
# DynamicStitch over Const parts; the table rewrites: mutable hash tables, their import and
# their finds), so no order changes what they do; a fixed one keeps the names of the nodes
# they add the same from run to run. A new rewrite goes after every rewrite whose output it
# matches and before every one that matches its output. All of them run before
# constants_as_variables sets big Consts aside, since each reads Consts, and before the cut
# and Grappler, which remove what they leave unused.
REGISTRY = (
    Rewrite('one_gather', _one_gather, default=True,
            help="a partitioned embedding's lookup becomes one gather over one matrix"),
    Rewrite('read_only_tables', _tables('auto'), default=True, group='tables',
            help='mutable hash tables that serving only reads become tables of rows of one '
            'matrix, restored from variables/: static for string keys, dense for integer keys'
            + _TABLE_HELP),
    Rewrite('dense_tables', _tables('dense'), group='tables',
            help='as read_only_tables, dense tables for every key type'),
    Rewrite('static_tables', _tables('static'), group='tables',
            help='as read_only_tables, static tables for every key type'),
)
NAMES = tuple(r.name for r in REGISTRY)
DEFAULTS = tuple(r.name for r in REGISTRY if r.default)


def problem(names):
  """Why `names` (rewrite names) cannot run together, or None when they can."""
  unknown = sorted(set(names) - set(NAMES))
  if unknown:
    return 'unknown rewrite %s; choose from: %s' % (', '.join(unknown), ', '.join(NAMES))
  groups = {}
  for r in REGISTRY:
    if r.group:
      groups.setdefault(r.group, []).append(r.name)
  for members in groups.values():
    if len(set(names) & set(members)) > 1:
      return 'choose one of the rewrites %s' % ', '.join(members)
  return None


def flag_help():
  """--rewrites' help: every registered rewrite, in order, with what it does."""
  alternatives = {}
  for r in REGISTRY:
    if r.group:
      alternatives.setdefault(r.group, []).append(r.name)
  return ('Serving graph rewrites to run, each exact, in this order (none: run none): %s. At '
          'most one of %s.' % ('; '.join('%s (%s)' % (r.name, r.help) for r in REGISTRY),
                               ' and '.join(', '.join(m) for m in alternatives.values())))


def run(graph_def, names, context):
  """Runs the rewrites `names` on the frozen `graph_def` (in place), in the registry's order.

  Args:
    graph_def: a frozen GraphDef.
    names: names of registered rewrites.
    context: Context.

  Returns:
    dict: name -> the list the rewrite returned, for each rewrite run.

  Raises:
    errors.UserError: an unknown name, or two alternatives.
  """
  message = problem(names)
  if message:
    raise errors.UserError(message)
  return {r.name: r.run(graph_def, context) for r in REGISTRY if r.name in names}
