"""analysis/unsafe_ops: ops that touch files, run Python or reach the network, found in the
graph and inside its functions; asset-fed table initialisers exempt.

(That freezing and exporting stop on them, and a main op is never run: tests/test_op_safety.py.)
"""

import re

import pytest
import tensorflow as tf

from conftest import meta_graph_of
from freezerlib.analysis import unsafe_ops
from freezerlib.core import errors
from freezerlib.core import lean_tf
from freezerlib.formats import saved_model
import small_graphs

tf1 = tf.compat.v1
Finding = unsafe_ops.Finding


def _ops(findings):
  return sorted((f.location, f.op, f.root) for f in findings)


def test_in_the_graph_and_the_exempt_saver():
  graph = small_graphs.graph_def('''
      node { name: "path" op: "Const" }
      node { name: "read" op: "ReadFile" input: "path" }
      node { name: "save" op: "SaveV2" input: "path" }
      node { name: "tap" op: "PyFunc" }
      node { name: "fine" op: "Identity" input: "read" }''')
  findings = unsafe_ops.find_unsafe(graph, exempt={'save'})
  assert _ops(findings) == [('read', 'ReadFile', 'read'), ('tap', 'PyFunc', 'tap')]
  assert [str(f) for f in findings] == ['read (ReadFile)', 'tap (PyFunc)']
  assert len(unsafe_ops.find_unsafe(graph)) == 3


def test_inside_functions_at_any_depth():
  graph = small_graphs.graph_def('''
      node { name: "call" op: "PartitionedCall" attr { key: "f" value { func { name: "outer" } } } }
      node { name: "branch" op: "If" attr { key: "then_branch" value { func { name: "tap" } } } }
      node { name: "plain" op: "Identity" }
      library {
        function { signature { name: "outer" }
                   node_def { name: "n" op: "inner" }
                   node_def { name: "again" op: "outer" } }
        function { signature { name: "inner" } node_def { name: "w" op: "WriteFile" } }
        function { signature { name: "tap" }
                   node_def { name: "p" op: "EagerPyFunc" }
                   node_def { name: "b" op: "Identity"
                              attr { key: "x" value { list { func { name: "inner" } } } } } }
        function { signature { name: "unused" } node_def { name: "r" op: "ReadFile" } }
      }''')
  assert _ops(unsafe_ops.find_unsafe(graph)) == [
      ('inner/w', 'WriteFile', 'branch'), ('inner/w', 'WriteFile', 'call'),
      ('tap/p', 'EagerPyFunc', 'branch')]


# A vocabulary table fed the path of an asset file, as loaders feed `asset:0`, directly, by an
# Identity, through a variable (TF2 keeps the path in one), or by a call of an init function.
ASSET_GRAPH = '''
node { name: "asset" op: "Placeholder" }
node { name: "t" op: "HashTableV2" }
node { name: "direct" op: "InitializeTableFromTextFileV2" input: "t" input: "asset" }
node { name: "copy" op: "Identity" input: "asset" }
node { name: "via_identity" op: "InitializeTableFromTextFileV2" input: "t" input: "copy:0" }
node { name: "var" op: "VarHandleOp" }
node { name: "assign" op: "AssignVariableOp" input: "var" input: "copy" }
node { name: "read" op: "ReadVariableOp" input: "var" }
node { name: "via_variable" op: "InitializeTableFromTextFileV2" input: "t" input: "read" }
node { name: "call" op: "init_fn" input: "t" input: "read" }
node { name: "joined" op: "StringJoin" input: "asset" }
node { name: "changed" op: "InitializeTableFromTextFileV2" input: "t" input: "joined" }
node { name: "elsewhere" op: "Placeholder" }
node { name: "other_call" op: "init_fn" input: "t" input: "elsewhere" }
library { function { signature { name: "init_fn" }
  node_def { name: "init" op: "InitializeTableFromTextFile" } } }
'''


def test_asset_fed_initialisers_are_exempt():
  graph = small_graphs.graph_def(ASSET_GRAPH)
  # A string op makes a new path: not the asset any more; nor is another placeholder.
  assert _ops(unsafe_ops.find_unsafe(graph, asset_tensors={'asset:0'})) == [
      ('changed', 'InitializeTableFromTextFileV2', 'changed'),
      ('init_fn/init', 'InitializeTableFromTextFile', 'other_call')]
  without = _ops(unsafe_ops.find_unsafe(graph))
  assert [f[0] for f in without] == ['changed', 'direct', 'init_fn/init', 'init_fn/init',
                                     'via_identity', 'via_variable']


def test_asset_in_a_tf1_saved_model_table_is_exempt(tmp_path):
  vocabulary = tmp_path / 'vocab.txt'
  vocabulary.write_text('a\nb\n')

  def build():
    asset = tf.constant(str(vocabulary), name='asset_path')
    table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
        tf.lookup.TextFileIndex.LINE_NUMBER), -1)
    words = tf1.placeholder(tf.string, [None], name='words')
    return {'words': words}, {'ids': table.lookup(words)}

  export_dir = small_graphs.save_tf1(tmp_path / 'm', build, main_op=tf1.tables_initializer)
  meta_graph = meta_graph_of(export_dir)
  assert unsafe_ops.asset_tensors(meta_graph) == {'asset_path:0'}
  signatures = saved_model.select_signatures(meta_graph, None, 'm')
  assert unsafe_ops.check_meta_graph(meta_graph, signatures, set(), 'm') == []
  # Without the asset declared, the initialiser would read a file the model names.
  with pytest.raises(errors.UserError, match='InitializeTableFromTextFileV2'):
    unsafe_ops.enforce(unsafe_ops.find_unsafe(meta_graph.graph_def),
                       unsafe_ops.needed_nodes(meta_graph.graph_def, signatures,
                                               saved_model.init_ops_of(meta_graph)), set(), 'm')


@pytest.mark.parametrize('name,escapes', [
    ('vocab.txt', False), ('sub/v.txt', False), ('a..b', False),
    ('../x', True), ('sub/../../x', True), ('/etc/passwd', True), ('gs://b/x', True),
    ('C:x', True), ('..\\x', True), ('', True)])
def test_asset_names_that_escape_assets(name, escapes):
  meta_graph = lean_tf.meta_graph_pb2.MetaGraphDef()
  meta_graph.asset_file_def.add(filename=name).tensor_info.name = 'a:0'
  if not escapes:
    unsafe_ops.check_asset_names(meta_graph, 'm')
    return
  message = 'm: asset file name %r escapes the assets directory' % name
  with pytest.raises(errors.UserError, match=re.escape(message)):
    unsafe_ops.check_asset_names(meta_graph, 'm')


def test_enforce_stops_on_what_runs_and_returns_the_rest():
  findings = [Finding('a', 'ReadFile', 'a'), Finding('f/w', 'WriteFile', 'call'),
              Finding('z', 'PyFunc', 'z')]
  with pytest.raises(errors.UserError) as caught:
    unsafe_ops.enforce(findings, {'a', 'call'}, set(), 'm')
  assert str(caught.value) == (
      'm runs ops that touch files, run Python or reach the network: a (ReadFile), f/w '
      '(WriteFile); if you trust this model, pass --allow_ops=ReadFile,WriteFile')
  assert unsafe_ops.enforce(findings, {'a', 'call'}, {'ReadFile', 'WriteFile'}, 'm') == [
      findings[2]]
  many = [Finding('n%d' % i, 'ReadFile', 'n%d' % i) for i in range(12)]
  with pytest.raises(errors.UserError, match=r'n9 \(ReadFile\) and 2 more; .*=ReadFile$'):
    unsafe_ops.enforce(many, {f.root for f in many}, set(), 'm')


def test_needed_nodes_are_the_signatures_and_the_init_ops():
  graph = small_graphs.graph_def('''
      node { name: "x" op: "Placeholder" }
      node { name: "reader" op: "TFRecordDataset" }
      node { name: "y" op: "Identity" input: "x" }
      node { name: "fill" op: "LookupTableImportV2" }
      node { name: "init" op: "NoOp" input: "^fill" }
      node { name: "unused" op: "NoOp" }''')
  sigs = {'s': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}
  assert unsafe_ops.needed_nodes(graph, sigs, ['init', 'missing']) == {'y', 'init', 'fill'}


def test_asset_reads_by_the_signatures():
  meta_graph = lean_tf.meta_graph_pb2.MetaGraphDef()
  meta_graph.graph_def.CopyFrom(small_graphs.graph_def('''
      node { name: "asset" op: "Const" }
      node { name: "held" op: "Identity" input: "asset" }
      node { name: "read" op: "ReadFile" input: "held" }
      node { name: "y" op: "StringLength" input: "read" }
      node { name: "call" op: "PartitionedCall" input: "asset"
             attr { key: "f" value { func { name: "f" } } } }
      node { name: "init" op: "InitializeTableFromTextFileV2" input: "asset" }
      library { function {
        signature { name: "f" input_arg { name: "path" } }
        node_def { name: "p" op: "Identity" input: "path" }
        node_def { name: "r" op: "ReadFile" input: "p:output:0" } } }'''))
  meta_graph.asset_file_def.add(filename='data.txt').tensor_info.name = 'asset:0'
  sigs = {'direct': small_graphs.signature({}, {'n': 'y:0'}),
          'called': small_graphs.signature({}, {'c': 'call:0'}),
          'init_only': small_graphs.signature({}, {'i': 'init:0'})}
  found = unsafe_ops.asset_reads(meta_graph, sigs)
  assert found == [unsafe_ops.AssetRead('called', 'data.txt', 'f/r', 'ReadFile'),
                   unsafe_ops.AssetRead('direct', 'data.txt', 'read', 'ReadFile'),
                   unsafe_ops.AssetRead('init_only', 'data.txt', 'init',
                                        'InitializeTableFromTextFileV2')]


def test_unsafe_in_a_graph_about_to_be_written():
  graph = small_graphs.graph_def(ASSET_GRAPH)
  with pytest.raises(errors.UserError) as caught:
    unsafe_ops.unsafe_in(graph, set(), 'm', exempt={'changed'}, asset_tensors={'asset:0'})
  assert str(caught.value) == (
      'the serving graph of m would keep ops that touch files, run Python or reach the network: '
      'init_fn/init (InitializeTableFromTextFile); if you trust this model, pass '
      '--allow_ops=InitializeTableFromTextFile')
  unsafe_ops.unsafe_in(graph, {'InitializeTableFromTextFile', 'InitializeTableFromTextFileV2'},
                       'm')


def test_log_findings_counts_by_op(monkeypatch):
  lines, details = [], []
  monkeypatch.setattr(unsafe_ops.logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  monkeypatch.setattr(unsafe_ops.logging, 'vlog', lambda level, fmt, *a: details.append(fmt % a))
  unsafe_ops.log_findings([Finding('a', 'ReadFile', 'a'), Finding('b', 'ReadFile', 'b'),
                           Finding('c', 'PyFunc', 'c')], 'removed')
  assert lines == ['removed: 1 PyFunc, 2 ReadFile']
  assert details == ['removed: a (ReadFile)', 'removed: b (ReadFile)', 'removed: c (PyFunc)']
  unsafe_ops.log_findings([], 'removed')
  assert len(lines) == 1


def test_check_meta_graph_exempts_the_saver_and_stops_on_the_main_op(tmp_path):
  linear = small_graphs.linear_model(tmp_path / 'linear')
  meta_graph = meta_graph_of(linear)
  signatures = saved_model.select_signatures(meta_graph, None, 'm')
  assert {'SaveV2', 'RestoreV2'} <= {n.op for n in meta_graph.graph_def.node}
  assert unsafe_ops.check_meta_graph(meta_graph, signatures, set(), 'm') == []
  target = tmp_path / 'pwned.txt'
  export_dir = small_graphs.save_tf1(tmp_path / 'm', small_graphs.linear(),
                                     main_op=lambda: tf.io.write_file(str(target), 'x'))
  meta_graph = meta_graph_of(export_dir)
  with pytest.raises(errors.UserError, match=r'm runs .*: WriteFile \(WriteFile\);'):
    unsafe_ops.check_meta_graph(meta_graph, signatures, set(), 'm')
  assert unsafe_ops.check_meta_graph(meta_graph, signatures, {'WriteFile'}, 'm') == []
  assert not target.exists()


def test_training_reader_is_reported_but_not_blocking(tiny_model, tmp_path):
  """model_gen's reader (TFRecordDataset) and training saver are outside what serving runs."""
  meta_graph = meta_graph_of(tiny_model['saved_model'])
  signatures = saved_model.select_signatures(meta_graph, None, 'x')
  outside = unsafe_ops.check_meta_graph(meta_graph, signatures, set(), 'x')
  assert {'TFRecordDataset', 'SaveV2', 'RestoreV2'} <= {f.op for f in outside}
  # The SavedModel's own saver (the one loaders run) is not reported.
  own = saved_model.saver_nodes(meta_graph.graph_def, meta_graph.saver_def)
  assert own and not {f.root for f in outside} & own
