"""transforms.rewrites: the one registry of serving rewrites drives --rewrites and runs each.

(What each rewrite does, exactly: test_one_gather.py, test_read_only_tables.py; the whole freeze
path with them: tests/test_serving_tables.py.)
"""

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.transforms import rewrites
import optimize_from_pb

from . import test_one_gather
from . import test_read_only_tables

tf1 = tf.compat.v1


def test_the_flag_is_the_registry():
  flag = flags.FLAGS['rewrites']
  assert flag.default == list(rewrites.DEFAULTS) == ['one_gather', 'read_only_tables']
  assert rewrites.NAMES == ('one_gather', 'read_only_tables', 'dense_tables', 'static_tables')
  positions = [flag.help.index('%s (%s)' % (r.name, r.help)) for r in rewrites.REGISTRY]
  assert positions == sorted(positions)  # every rewrite, in the registry's order
  assert 'At most one of read_only_tables, dense_tables, static_tables' in flag.help
  # The flag's choices: the registry's names, 'none', and no two alternatives.
  for good in (['none'], ['one_gather'], ['static_tables', 'one_gather'], []):
    assert optimize_from_pb._known_rewrites(good)
  for bad, message in ((['one_gathr'], 'unknown rewrite one_gathr; choose from: one_gather, '
                        'read_only_tables, dense_tables, static_tables'),
                       (['dense_tables', 'read_only_tables'], 'choose one of the rewrites')):
    with pytest.raises(flags.ValidationError, match=message):
      optimize_from_pb._known_rewrites(bad)


def test_a_new_entry_is_a_new_choice(monkeypatch):
  calls = []
  extra = rewrites.Rewrite('noop', lambda g, c: calls.append(len(g.node)) or ['x'], help='h')
  monkeypatch.setattr(rewrites, 'REGISTRY', rewrites.REGISTRY[:1] + (extra,))
  monkeypatch.setattr(rewrites, 'NAMES', ('one_gather', 'noop'))
  assert 'noop (h)' in rewrites.flag_help()
  graph_def = tf1.GraphDef()
  done = rewrites.run(graph_def, ['noop'], rewrites.Context(None, frozenset(), None))
  assert done == {'noop': ['x']} and calls == [0]


def test_names_are_checked_before_anything_runs():
  graph_def = test_one_gather._frozen_lookup(10, 3, 'mod')
  before = graph_def.SerializeToString()
  context = rewrites.Context(None, frozenset(['out', 'ids']), 0)
  with pytest.raises(errors.UserError, match='unknown rewrite nope; choose from: one_gather'):
    rewrites.run(graph_def, ['one_gather', 'nope'], context)
  with pytest.raises(errors.UserError, match='choose one of the rewrites read_only_tables, '):
    rewrites.run(graph_def, ['static_tables', 'dense_tables'], context)
  assert graph_def.SerializeToString() == before


def test_one_gather_runs_through_the_registry():
  frozen = test_one_gather._frozen_lookup(10, 3, 'mod')
  graph_def = tf1.GraphDef()
  graph_def.CopyFrom(frozen)
  context = rewrites.Context(None, frozenset(['out', 'ids']), 0)
  done = rewrites.run(graph_def, ['one_gather'], context)
  assert [(d.strategy, d.parts, d.rows) for d in done['one_gather']] == [('mod', 3, 10)]
  assert context.tables_from_variables == []
  ids = np.arange(10, dtype=np.int64)
  np.testing.assert_array_equal(test_one_gather._run(graph_def, ids),
                                test_one_gather._run(frozen, ids))


@pytest.mark.parametrize('name,forms', [('read_only_tables', {'dense', 'static'}),
                                        ('dense_tables', {'dense'}),
                                        ('static_tables', {'static'})])
def test_each_table_rewrite_runs_through_the_registry(name, forms):
  original = test_read_only_tables._graph()
  keep = frozenset(o.split(':')[0] for o in test_read_only_tables.OUTPUTS) | {'init', 'ids',
                                                                               'words'}
  graph_def = tf1.GraphDef()
  graph_def.CopyFrom(original)
  context = rewrites.Context('init', keep, 0)
  done = rewrites.run(graph_def, [name], context)
  assert list(done) == [name]
  assert {t.form for t in done[name]} == forms
  assert sorted(context.tables_from_variables) == sorted(t.table for t in done[name])
  assert len(done[name]) == 5  # every table of the graph is read-only
  ids, words = test_read_only_tables._feeds()
  for got, want in zip(test_read_only_tables._run(graph_def, ids, words),
                       test_read_only_tables._run(original, ids, words)):
    np.testing.assert_array_equal(got, want)
  # Without table_bytes (--constants_as_variables=off) the table rewrites leave every table.
  untouched = tf1.GraphDef()
  untouched.CopyFrom(original)
  assert rewrites.run(untouched, [name], rewrites.Context('init', keep, None)) == {name: []}
  assert untouched == original
