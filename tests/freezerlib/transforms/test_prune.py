"""transforms/prune: only what the signatures need, devices cleared, what went counted."""

import collections

import tensorflow as tf

from freezerlib.transforms import prune
import small_graphs

GRAPH = '''
node { name: "x" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } }
       device: "/job:worker/task:0" }
node { name: "unused_input" op: "Placeholder" attr { key: "dtype" value { type: DT_FLOAT } } }
node { name: "y" op: "Identity" input: "x" device: "/job:ps/task:1"
       attr { key: "T" value { type: DT_FLOAT } }
       attr { key: "_f" value { func { name: "used" } } } }
node { name: "init" op: "NoOp" }
node { name: "train" op: "unused" input: "^x" }
library {
  function { signature { name: "used" } node_def { name: "n" op: "helper" } }
  function { signature { name: "helper" } }
  function { signature { name: "unused" } }
  function { signature { name: "used_grad" } }
  function { signature { name: "unused_grad" } }
  gradient { function_name: "used" gradient_func: "used_grad" }
  gradient { function_name: "unused" gradient_func: "unused_grad" }
}
versions { producer: 27 }
'''


def test_strip_keeps_what_is_needed_without_devices():
  graph_def = small_graphs.graph_def(GRAPH)
  out = prune.strip(graph_def, ['y', 'init'])
  assert [n.name for n in out.node] == ['x', 'y', 'init']
  assert not any(n.device for n in out.node)
  assert 'unused' not in {f.signature.name for f in out.library.function}
  assert [g.function_name for g in out.library.gradient] == ['used']
  assert out.versions.producer == 27
  assert graph_def == small_graphs.graph_def(GRAPH)  # not modified


def test_stats_and_the_log_of_the_cut(monkeypatch):
  graph_def = small_graphs.graph_def(GRAPH)
  assert prune.op_histogram(graph_def) == collections.Counter(
      {'Placeholder': 2, 'Identity': 1, 'NoOp': 1, 'unused': 1})
  before = prune.GraphStats.of(graph_def)
  after = prune.GraphStats.of(prune.strip(graph_def, ['y']))
  assert (before.nodes, before.functions, after.nodes) == (5, 5, 2)
  assert after.functions == len(prune.strip(graph_def, ['y']).library.function) < 5
  assert before.bytes == graph_def.ByteSize() and after.bytes < before.bytes
  lines = []
  monkeypatch.setattr(prune.logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  monkeypatch.setattr(prune.logging, 'vlog', lambda level, fmt, *a: lines.append(
      ('v%d ' % level) + fmt % a))
  prune.log_cut(before, after)
  assert lines[0] == 'nodes: 5 -> 2; library functions: 5 -> %d; size: %d B -> %d B' % (
      after.functions, before.bytes, after.bytes)
  assert [l.split() for l in lines[1:]] == [
      ['op', 'before', 'after'], ['v0', 'Placeholder', '2', '1'], ['v1', 'Identity', '1', '1'],
      ['v0', 'NoOp', '1', '0'], ['v0', 'unused', '1', '0']]


def test_cut_to_signatures_keeps_promised_inputs_and_extra_nodes():
  graph_def = small_graphs.graph_def(GRAPH)
  sig = small_graphs.signature({'x': 'x:0', 'unused_input': 'unused_input:0'}, {'y': 'y:0'})
  out, sigs, keep = prune.cut_to_signatures(graph_def, {'s': sig}, ['init', None, ''])
  assert keep[0] == 'y' and sorted(keep[1:3]) == ['unused_input', 'x'] and keep[3:] == ['init']
  assert sorted(n.name for n in out.node) == ['init', 'unused_input', 'x', 'y']
  assert {k: i.name for k, i in sigs['s'].inputs.items()} == {
      'x': 'x:0', 'unused_input': 'unused_input:0'}


def test_a_kept_functions_gradient_stays_with_it():
  """A GraphDef whose GradientDef names a function it lacks does not import: the gradient of a
  used function (TF1 Defun(grad_func=...)) stays."""
  graph_def = small_graphs.graph_def(GRAPH)
  with tf.Graph().as_default():
    tf.graph_util.import_graph_def(graph_def, name='')
  out = prune.strip(graph_def, ['y'])
  assert sorted(f.signature.name for f in out.library.function) == ['helper', 'used',
                                                                    'used_grad']
  with tf.Graph().as_default():
    tf.graph_util.import_graph_def(out, name='')
