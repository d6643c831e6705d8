"""transforms/example_front: the training reader becomes one input of serialized tf.Example,
parsed by the reader's own parse op, on a reader of a few nodes.

(The census and demo models through every script and the C API: tests/test_example_front.py.)
"""

import numpy as np
import pytest
import tensorflow as tf

from freezerlib.core import errors
from freezerlib.transforms import example_front
from freezerlib.transforms import prune
import small_graphs

tf1 = tf.compat.v1
SPEC = {'x': tf.io.FixedLenFeature([2], tf.float32), 'label': tf.io.FixedLenFeature([], tf.float32),
        'tags': tf.io.VarLenFeature(tf.string)}


def _example(x, label=None):
  feature = {'x': tf.train.Feature(float_list=tf.train.FloatList(value=x))}
  if label is not None:
    feature['label'] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _reader_graph(batch='before_parse'):
  """A training graph: TFRecord-like strings -> batch -> parse -> y = 2 * sum(x); the loss
  reads the label. Signature serving_default is fed at the reader's x."""
  graph = tf.Graph()
  with graph.as_default():
    data = tf.data.Dataset.from_tensor_slices([_example([1.0, 2.0], 1.0)] * 4)
    parse = lambda s: tf.io.parse_example(s, SPEC)
    if batch == 'before_parse':
      data = data.batch(2).map(parse).prefetch(1)
    elif batch == 'after_parse':
      data = data.map(parse).batch(2)
    else:
      data = data.map(parse)
    features = tf1.data.make_one_shot_iterator(data).get_next()
    y = tf.identity(2.0 * tf.reduce_sum(features['x'], axis=-1), name='y')
    tf.reduce_mean(features['label'] - y, name='loss')
  sig = small_graphs.signature({'x': features['x'].name}, {'y': 'y:0'})
  sig.outputs['y'].dtype = tf.float32.as_datatype_enum
  sig.outputs['y'].tensor_shape.dim.add().size = -1
  return graph.as_graph_def(), {'serving_default': sig}


def test_find_reader():
  graph_def, sigs = _reader_graph()
  reader = example_front.find_reader(graph_def, sigs, 'g')
  assert reader.get_next == 'IteratorGetNext' and reader.num_outputs == 3  # tags: a variant
  assert len(reader.maps) == 1 and any(n.op == 'ParseExampleV2' for n in reader.maps[0].node_def)


def test_examples_front_parses_what_serving_reads():
  graph_def, sigs = _reader_graph()
  out, new_sigs, front = example_front.examples_front(graph_def, sigs, 'g')
  assert front.placeholder == 'examples' and front.features == ['x']
  assert sorted(front.dropped) == ['label', 'tags'] and front.dropped_required == ['label']
  assert front.added_signatures == {'regression': 'tensorflow/serving/regress'}
  assert sorted(new_sigs) == ['regression', 'serving_default']
  assert {k: i.name for k, i in new_sigs['serving_default'].inputs.items()} == {
      'examples': 'examples:0'}
  assert {k: i.name for k, i in new_sigs['regression'].inputs.items()} == {
      'inputs': 'examples:0'}
  assert dict(new_sigs['regression'].outputs) == {'outputs': sigs['serving_default'].outputs['y']}
  stripped = prune.strip(out, ['y', 'examples'])
  assert not {n.op for n in stripped.node} & {'IteratorGetNext', 'OneShotIterator'}
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(stripped, name='')
    with tf1.Session(graph=graph) as session:  # no label in the examples: not required now
      got = session.run('y:0', {'examples:0': [_example([1.0, 2.0]), _example([3.0, 0.5])]})
  np.testing.assert_array_equal(got, [6.0, 7.0])
  assert example_front.already_examples(stripped, new_sigs)
  assert not example_front.already_examples(graph_def, sigs)


def test_serving_front():
  graph_def, sigs = _reader_graph()
  assert example_front.serving_front(graph_def, sigs, 'placeholders', 'g') == (graph_def, sigs)
  out, new_sigs = example_front.serving_front(graph_def, sigs, 'examples', 'g')
  assert 'examples' in {n.name for n in out.node} and 'regression' in new_sigs
  again = example_front.serving_front(out, new_sigs, 'examples', 'g')  # done already
  assert again[0] is out and again[1] is new_sigs
  with pytest.raises(errors.UserError, match="--serving_input must be one of placeholders, "
                                             "examples, not 'tfrecords'"):
    example_front.serving_front(graph_def, sigs, 'tfrecords', 'g')


def test_readers_it_cannot_take():
  graph_def, sigs = _reader_graph(batch='after_parse')
  with pytest.raises(errors.UserError, match=r'--serving_input=examples: g \(dataset op '
                                             r'BatchDatasetV2 \(BatchDatasetV2\) between the '
                                             r'parse and the iterator changes its elements\)'):
    example_front.examples_front(graph_def, sigs, 'g')
  graph_def, sigs = _reader_graph(batch='none')
  with pytest.raises(errors.UserError, match=r'the reader parses one of serialized examples '
                                             r'\(rank 0\), not a batch'):
    example_front.examples_front(graph_def, sigs, 'g')
  graph = tf.Graph()
  with graph.as_default():
    x = tf1.placeholder(tf.float32, [None], name='x')
    tf.identity(x, name='y')
  with pytest.raises(errors.UserError, match='no signature input comes from a tf.data iterator'):
    example_front.examples_front(graph.as_graph_def(), {
        's': small_graphs.signature({'x': 'x:0'}, {'y': 'y:0'})}, 'g')


def test_classify_signature_for_scores_and_classes():
  sig = small_graphs.signature({'examples': 'examples:0'}, {'scores': 's:0', 'classes': 'c:0'})
  sig.outputs['scores'].dtype = tf.float32.as_datatype_enum
  sig.outputs['classes'].dtype = tf.string.as_datatype_enum
  sigs = {'rank': sig, 'rank_regression': small_graphs.signature({}, {})}
  added = example_front._classify_and_regress(sigs, 'examples')
  assert added == ['rank_classification']  # rank_regression: taken
  classify = sigs['rank_classification']
  assert classify.method_name == 'tensorflow/serving/classify'
  assert sorted(classify.outputs) == ['classes', 'scores'] and list(classify.inputs) == ['inputs']
