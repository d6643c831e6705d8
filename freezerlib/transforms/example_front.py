"""--serving_input=examples: the training reader becomes one input of serialized tf.Example.

What Estimator's parsing serving input receiver gave TF Serving users, made from the training
graph itself: the signatures' inputs that come from the tf.data reader (`IteratorGetNext:k`,
and what is computed from them, such as a sparse feature's `DeserializeSparse_k`) are replaced
by one string input `examples` (shape [-1]), parsed by the reader's own parse op.

The parse op lives in the reader's `dataset.map` function in the graph's function library.
The dataset is found from the iterator (a OneShotIterator's `dataset_factory` function, or the
dataset a MakeIterator starts it on), and walked from the iterator towards the files: datasets
that pass elements on unchanged (prefetch, repeat, shuffle, take, ...) are skipped, maps are
collected until one holds a ParseExample(V2) on a batch of strings. Those map functions,
turned into graphs (function_def_to_graph), are copied into the graph on the new input, and
the consumers of the iterator's outputs read theirs instead: dense features directly, sparse
ones through the same SerializeSparse and DeserializeSparse the reader used.

The copied parse op keeps only the features the signatures' outputs use: a label the training
spec required is no longer asked for. Every signature fed at the reader takes `examples`; one
whose outputs allow it also gets a Classify signature (its `classes` and/or `scores` outputs)
and a Regress one (its one float output of one value per example), under the input key
`inputs`, as TF Serving's Classify and Regress APIs require: `classification` and
`regression` for serving_default, KEY_classification and KEY_regression for the others.
"""

import dataclasses
from typing import Dict, List

from absl import logging

from freezerlib.core import errors
from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import graph_pb2
from freezerlib.core.lean_tf import meta_graph_pb2
from freezerlib.core.lean_tf import types_pb2
from freezerlib.transforms import example_parse
from freezerlib.transforms import placeholders

INPUT_KEY = 'examples'
CLASSIFY_INPUT_KEY = 'inputs'  # TF Serving's Classify and Regress look for this key
CLASSIFY_METHOD = 'tensorflow/serving/classify'
REGRESS_METHOD = 'tensorflow/serving/regress'
PREDICT_METHOD = 'tensorflow/serving/predict'

GET_NEXT_OPS = frozenset({'IteratorGetNext', 'IteratorGetNextSync'})
PARSE_OPS = example_parse.PARSE_OPS
_MAP_DATASETS = frozenset({'MapDataset', 'ParallelMapDataset', 'ParallelMapDatasetV2'})
# Datasets whose elements are their input's, unchanged (or some of them, in another order).
_PASSING_DATASETS = frozenset({
    'PrefetchDataset', 'RepeatDataset', 'ShuffleDataset', 'ShuffleDatasetV2',
    'ShuffleDatasetV3', 'ShuffleAndRepeatDataset', 'ShuffleAndRepeatDatasetV2', 'TakeDataset',
    'SkipDataset', 'CacheDataset', 'CacheDatasetV2', 'ShardDataset', 'FilterDataset',
    'ModelDataset', 'OptimizeDataset', 'OptimizeDatasetV2', 'MaxIntraOpParallelismDataset',
    'PrivateThreadPoolDataset', 'OptionsDataset', 'AssertCardinalityDataset',
    'AssertNextDataset', 'ExperimentalAssertNextDataset',
    'ExperimentalMaxIntraOpParallelismDataset',
    'ExperimentalPrivateThreadPoolDataset', 'IgnoreErrorsDataset', 'DatasetCardinality',
    'RebatchDataset', 'AutoShardDataset'})
_ITERATOR_OPS = frozenset({'IteratorV2', 'Iterator', 'AnonymousIterator', 'AnonymousIteratorV2',
                           'AnonymousIteratorV3'})


@dataclasses.dataclass
class Reader:
  """A training reader: its get_next node and the map functions from the parsing one (first)
  to the iterator (last)."""
  get_next: str
  maps: List[object]  # FunctionDefs
  num_outputs: int


@dataclasses.dataclass
class Front:
  """What examples_front did: the new input's placeholder, the features parsed, those left
  out (with the ones the training spec required), the signatures added."""
  placeholder: str
  features: List[str]
  dropped: List[str]
  dropped_required: List[str]
  added_signatures: Dict[str, str]  # key -> method


def _no_reader(where, why):
  return errors.UserError(
      '--serving_input=examples: %s (%s); it needs the training reader in the graph: a '
      'tf.data map with a tf.io.parse_example op' % (where, why))


def find_reader(graph_def, signatures, where):
  """The reader the signatures' inputs come from.

  Raises:
    errors.UserError: no input comes from a reader, several readers, or no map with a parse op
      on a batch of strings (the message says which).
  """
  nodes = {n.name: n for n in graph_def.node}
  inputs = [graphs.node_name(t) for s in signatures.values()
            for t in graphs.signature_tensors(s, 'inputs')]
  found = sorted(n for n in graphs.walk(inputs, graphs.inputs_of(graph_def))
                 if nodes[n].op in GET_NEXT_OPS)
  if not found:
    raise _no_reader(where, 'no signature input comes from a tf.data iterator')
  if len(found) > 1:
    raise _no_reader(where, 'the signature inputs come from %d iterators: %s'
                     % (len(found), ', '.join(found)))
  get_next = nodes[found[0]]
  library = {f.signature.name: f for f in graph_def.library.function}
  dataset, scope = _dataset_of(graph_def, nodes, get_next, library, where)
  maps = []
  for _ in range(1000):
    if dataset is None:
      break
    if dataset.op in _MAP_DATASETS:
      function = library.get(dataset.attr['f'].func.name)
      if function is None:
        raise _no_reader(where, 'map function %s is not in the library'
                         % dataset.attr['f'].func.name)
      maps.append(function)
      captured = len(dataset.attr['Targuments'].list.type)
      if captured:
        raise _no_reader(where, 'its map function %s takes %d captured tensors, which are not '
                         'supported' % (function.signature.name, captured))
      if any(n.op in PARSE_OPS for n in function.node_def):
        if len(function.signature.input_arg) != 1 or (
            function.signature.input_arg[0].type != types_pb2.DT_STRING):
          raise _no_reader(where, 'the map function %s that parses does not take one string '
                           'tensor' % function.signature.name)
        source = scope.get(graphs.node_name(dataset.input[0]))
        shapes = source.attr['output_shapes'].list.shape if source is not None else []
        if shapes and not shapes[0].unknown_rank and len(shapes[0].dim) != 1:
          raise _no_reader(where, 'the reader parses %s of serialized examples (rank %d), not '
                           'a batch: parse_example must come after batch'
                           % ('one' if not shapes[0].dim else 'a tensor', len(shapes[0].dim)))
        maps.reverse()
        return Reader(get_next.name, maps,
                      len(get_next.attr['output_types'].list.type))
    elif dataset.op not in _PASSING_DATASETS:
      raise _no_reader(where, 'dataset op %s (%s) between the parse and the iterator changes '
                       'its elements' % (dataset.name, dataset.op))
    dataset = scope.get(graphs.node_name(dataset.input[0])) if dataset.input else None
  raise _no_reader(where, 'no dataset map with a ParseExample op feeds %s' % get_next.name)


def _dataset_of(graph_def, nodes, get_next, library, where):
  """(the dataset node the iterator yields, {name: node} of the scope it is in)."""
  iterator = nodes.get(graphs.node_name(get_next.input[0])) if get_next.input else None
  while iterator is not None and iterator.op in graphs.IDENTITY_OPS and iterator.input:
    iterator = nodes.get(graphs.node_name(iterator.input[0]))
  if iterator is None:
    raise _no_reader(where, 'the iterator of %s is not in the graph' % get_next.name)
  if iterator.op == 'OneShotIterator':
    factory = library.get(iterator.attr['dataset_factory'].func.name)
    if factory is None or len(factory.signature.output_arg) != 1:
      raise _no_reader(where, 'the dataset factory of %s is not in the library' % iterator.name)
    scope = {n.name: n for n in factory.node_def}
    ret = factory.ret[factory.signature.output_arg[0].name]
    return scope.get(graphs.node_name(ret)), scope
  if iterator.op in _ITERATOR_OPS:
    for node in graph_def.node:
      if node.op == 'MakeIterator' and len(node.input) > 1 and (
          graphs.node_name(node.input[1]) == iterator.name):
        return nodes.get(graphs.node_name(node.input[0])), nodes
    raise _no_reader(where, 'no MakeIterator starts %s' % iterator.name)
  raise _no_reader(where, 'iterator %s (%s) is not one whose dataset can be found'
                   % (iterator.name, iterator.op))


def already_examples(graph_def, signatures):
  """True when every signature takes one string placeholder that a parse op reads (a graph
  already given this front, e.g. by freezer.py --serving_input=examples)."""
  nodes = {n.name: n for n in graph_def.node}
  parsed = set()
  for node in graph_def.node:
    if node.op in PARSE_OPS and node.input:
      source = graphs.node_name(node.input[0])
      while source in nodes and nodes[source].op in graphs.IDENTITY_OPS:
        source = graphs.node_name(nodes[source].input[0])
      parsed.add(source)
  for sig in signatures.values():
    names = [graphs.node_name(t) for t in graphs.signature_tensors(sig, 'inputs')]
    if len(names) != 1 or names[0] not in parsed or nodes[names[0]].op != 'Placeholder':
      return False
  return bool(signatures)


def _copy_function(function, library, prefix, args, taken):
  """The nodes of `function` renamed under `prefix`, its arguments replaced by the tensors
  `args`; returns (nodes, output tensor names)."""
  graph_def, outputs = graphs.FunctionGraphs(library).convert(function)
  arg_names = [a.name for a in function.signature.input_arg]
  if len(arg_names) != len(args):
    raise ValueError('it takes %d tensors, the dataset gives %d' % (len(arg_names), len(args)))
  bound = dict(zip(arg_names, args))
  renamed = {}
  for node in graph_def.node:
    if node.name not in bound:
      renamed[node.name] = graphs.unique_name(prefix + node.name, taken)

  def rename(tensor):
    control = tensor.startswith('^')
    name, sep, index = tensor.lstrip('^').partition(':')
    if name in bound:
      target = bound[name]
      return '^' + graphs.node_name(target) if control else target
    return ('^' if control else '') + renamed[name] + sep + index

  nodes = []
  for node in graph_def.node:
    if node.name in bound:
      continue
    copy = lean_tf.NodeDef()
    copy.CopyFrom(node)
    copy.name = renamed[node.name]
    copy.device = ''
    del copy.input[:]
    copy.input.extend(rename(i) for i in node.input)
    for key in [k for k in copy.attr if k.startswith('_output_shapes')]:
      del copy.attr[key]
    if '_class' in copy.attr:
      values = [v for v in copy.attr['_class'].list.s]
      del copy.attr['_class'].list.s[:]
      copy.attr['_class'].list.s.extend(
          b'loc:@' + renamed.get(v[5:].decode(), v[5:].decode()).encode()
          if v.startswith(b'loc:@') else v for v in values)
    nodes.append(copy)
  return nodes, [rename(o) for o in outputs]


def examples_front(graph_def, signatures, where, input_key=INPUT_KEY):
  """Replaces the reader by one input of serialized tf.Example (see the module doc).

  Args:
    graph_def: a graph holding the training reader (not modified).
    signatures: key -> SignatureDef fed at the reader's outputs (not modified).
    where: the graph's path, for messages.
    input_key: the new input's signature key.

  Returns:
    (new GraphDef, new signatures, Front). The reader's own nodes are still in the graph,
    without consumers: pruning removes them.

  Raises:
    errors.UserError: no reader whose parse op can be found (the message says why), or an
      input key that another input already has.
  """
  reader = find_reader(graph_def, signatures, where)
  taken = {n.name for n in graph_def.node}
  placeholder = lean_tf.NodeDef(name=graphs.unique_name(graphs.name_for_key(input_key), taken),
                                op='Placeholder')
  placeholder.attr['dtype'].type = types_pb2.DT_STRING
  placeholder.attr['shape'].shape.dim.add().size = -1
  scope = graphs.unique_scope('serving_input', taken)
  new_nodes, outputs = [placeholder], [placeholder.name + ':0']
  for i, function in enumerate(reader.maps):
    prefix = scope + ('/' if len(reader.maps) == 1 else '/map_%d/' % i)
    try:
      nodes, outputs = _copy_function(function, graph_def.library, prefix, outputs, taken)
    except ValueError as e:
      raise _no_reader(where, 'its map function %s cannot be read: %s'
                       % (function.signature.name, e)) from e
    new_nodes.extend(nodes)
  if len(outputs) != reader.num_outputs:
    raise _no_reader(where, 'the map functions give %d tensors, the iterator %d'
                     % (len(outputs), reader.num_outputs))
  from_reader = graphs.walk([reader.get_next], graphs.consumers_of(graph_def))
  # Only what serving runs reads the new input; the training graph's other readers of the
  # iterator (the loss on the label) keep reading it, and are pruned later.
  serving = graphs.reachable(graph_def, [graphs.node_name(t) for s in signatures.values()
                                         for t in graphs.signature_tensors(s, 'outputs')])
  reader_nodes = graphs.walk([reader.get_next], graphs.inputs_of(graph_def)) | {
      n.name for n in graph_def.node if 'Dataset' in n.op or n.op in _ITERATOR_OPS or
      n.op in ('OneShotIterator', 'MakeIterator')}
  out = graph_pb2.GraphDef()
  out.CopyFrom(graph_def)
  for node in out.node:
    if node.name not in serving:
      continue
    if '_class' in node.attr:
      # TensorFlow colocates what reads a dataset's variant (DeserializeSparse) with the
      # dataset: an edge that would keep the reader alive.
      values = list(node.attr['_class'].list.s)
      kept = [v for v in values if not (v.startswith(b'loc:@') and
                                        v[5:].decode() in reader_nodes)]
      if len(kept) != len(values):
        del node.attr['_class'].list.s[:]
        node.attr['_class'].list.s.extend(kept)
        if not kept:
          del node.attr['_class']
    for i, graph_input in enumerate(node.input):
      if graphs.node_name(graph_input) != reader.get_next:
        continue
      if graph_input.startswith('^'):
        node.input[i] = '^' + placeholder.name
      else:
        node.input[i] = outputs[graphs.tensor_key(graph_input)[1]]
  out.node.extend(new_nodes)

  info = meta_graph_pb2.TensorInfo(name=placeholder.name + ':0', dtype=types_pb2.DT_STRING)
  info.tensor_shape.dim.add().size = -1
  new_signatures = {}
  for key, sig in signatures.items():
    copy = placeholders.copy_signature(sig)
    fed = [k for k, v in sig.inputs.items()
           if any(graphs.node_name(t) in from_reader for t in graphs.info_tensors(v))]
    if fed:
      if input_key in sig.inputs and input_key not in fed:
        raise errors.UserError('--serving_input=examples: signature %r of %s already has an '
                               'input %r' % (key, where, input_key))
      for k in fed:
        del copy.inputs[k]
      copy.inputs[input_key].CopyFrom(info)
      logging.info('signature %r: inputs %s from the reader -> %r (serialized tf.Example)',
                   key, ', '.join(sorted(fed)), input_key)
    new_signatures[key] = copy
  features, dropped, required = example_parse.trim(out, new_signatures,
                                                   {n.name for n in new_nodes},
                                                   placeholder.name, taken)
  added = _classify_and_regress(new_signatures, placeholder.name)
  logging.info('--serving_input=examples: %s parses %s; left out: %s%s', placeholder.name,
               ', '.join(features) or 'nothing', ', '.join(dropped) or 'nothing',
               ' (%s required by the training spec, not at serving)' % ', '.join(required)
               if required else '')
  return out, new_signatures, Front(placeholder.name, features, dropped, required,
                                    {k: new_signatures[k].method_name for k in added})


SERVING_INPUTS = ('placeholders', 'examples')


def serving_front(graph_def, signatures, serving_input, where):
  """The graph and signatures a path serves, by --serving_input.

  'placeholders': unchanged (the inputs become placeholders later, as they are). 'examples':
  examples_front, unless every signature already takes serialized tf.Example (then logged).

  Returns:
    (GraphDef, signatures).

  Raises:
    errors.UserError: as examples_front; an unknown `serving_input`.
  """
  if serving_input not in SERVING_INPUTS:
    raise errors.UserError('--serving_input must be one of %s, not %r'
                           % (', '.join(SERVING_INPUTS), serving_input))
  if serving_input == 'placeholders':
    return graph_def, signatures
  if already_examples(graph_def, signatures):
    logging.info('--serving_input=examples: every signature of %s already takes serialized '
                 'tf.Example', where)
    return graph_def, signatures
  graph_def, signatures, _ = examples_front(graph_def, signatures, where)
  return graph_def, signatures


def _float_info(info):
  return info.WhichOneof('encoding') == 'name' and info.dtype in (
      types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)


def _one_per_example(info):
  shape = info.tensor_shape
  if shape.unknown_rank:
    return False
  dims = [d.size for d in shape.dim]
  return len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)


def _classify_and_regress(signatures, placeholder):
  """Adds Classify and Regress signatures for the examples-fed predict signatures whose
  outputs allow them (in place); returns the keys added."""
  added = {}
  for key in sorted(signatures):
    sig = signatures[key]
    names = [graphs.node_name(t) for t in graphs.signature_tensors(sig, 'inputs')]
    if sig.method_name != PREDICT_METHOD or names != [placeholder]:
      continue
    prefix = '' if key == 'serving_default' else key + '_'
    outputs = sig.outputs
    classify = {}
    if 'scores' in outputs and _float_info(outputs['scores']):
      classify['scores'] = outputs['scores']
    if 'classes' in outputs and outputs['classes'].dtype == types_pb2.DT_STRING and (
        outputs['classes'].WhichOneof('encoding') == 'name'):
      classify['classes'] = outputs['classes']
    floats = [k for k, v in outputs.items() if _float_info(v)]
    regress = {'outputs': outputs[floats[0]]} if (
        len(floats) == 1 and _one_per_example(outputs[floats[0]])) else {}
    for name, method, outs in ((prefix + 'classification', CLASSIFY_METHOD, classify),
                               (prefix + 'regression', REGRESS_METHOD, regress)):
      if not outs:
        continue
      if name in signatures or name in added:
        logging.info('--serving_input=examples: %r exists; no %s signature added for %r',
                     name, method.rsplit('/', 1)[1], key)
        continue
      new = meta_graph_pb2.SignatureDef(method_name=method)
      new.inputs[CLASSIFY_INPUT_KEY].CopyFrom(next(iter(sig.inputs.values())))
      for out_key, info in outs.items():
        new.outputs[out_key].CopyFrom(info)
      added[name] = new
      logging.info('--serving_input=examples: signature %r (%s) from %r', name,
                   method.rsplit('/', 1)[1], key)
  signatures.update(added)
  return sorted(added)
