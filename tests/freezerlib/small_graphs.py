"""Small graphs and models for the unit tests of freezerlib: a handful of nodes each.

The unit tests live in packages named after freezerlib's sub-packages (tests/freezerlib/core,
...), so this directory is on sys.path while they run and they import this module as
`small_graphs`. (A second conftest.py here would shadow tests/conftest.py, which the end-to-end
tests import by name.)
"""

from google.protobuf import text_format

from freezerlib.core import lean_tf


def graph_def(text):
  """A GraphDef from its text format: `graph_def('node { name: "a" op: "NoOp" }')`."""
  return text_format.Parse(text, lean_tf.graph_pb2.GraphDef())


def node(name, op, inputs=(), **attrs):
  """A NodeDef; attrs are DataType enums (ints), strings (bytes) or TensorProtos."""
  out = lean_tf.NodeDef(name=name, op=op, input=list(inputs))
  for key, value in attrs.items():
    if isinstance(value, int):
      out.attr[key].type = value
    elif isinstance(value, bytes):
      out.attr[key].s = value
    else:
      out.attr[key].tensor.CopyFrom(value)
  return out


def signature(inputs, outputs, method='tensorflow/serving/predict'):
  """A SignatureDef over tensor names: {key: 'node:0'} for inputs and outputs."""
  sig = lean_tf.meta_graph_pb2.SignatureDef(method_name=method)
  for infos, names in ((sig.inputs, inputs), (sig.outputs, outputs)):
    for key, name in names.items():
      infos[key].name = name
  return sig


def save_tf1(export_dir, build, main_op=None, saver=None):
  """Writes a TF1 SavedModel (tag serve) of the graph `build()` makes; returns its path.

  Args:
    export_dir: the directory to write.
    build: called inside a fresh graph; returns (inputs, outputs, [session_setup]) where
      inputs and outputs are {key: tensor} of the `serving_default` predict signature and
      session_setup an optional op (or list) run after the variables are initialised.
    main_op: optional callable returning the main op (called in the graph).
    saver: optional callable returning the tf.compat.v1.train.Saver to save with.

  Files in the graph's ASSET_FILEPATHS collection (a TextFileInitializer's) become assets.
  """
  tf = lean_tf.tensorflow
  tf1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    built = build()
    inputs, outputs = built[0], built[1]
    init = main_op() if main_op else None
    the_saver = saver() if saver else None
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      if len(built) > 2 and built[2] is not None:
        session.run(built[2])
      builder = tf1.saved_model.Builder(str(export_dir))
      builder.add_meta_graph_and_variables(
          session, ['serve'], main_op=init, saver=the_saver,
          assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
          signature_def_map={
              'serving_default': tf1.saved_model.predict_signature_def(inputs, outputs)})
      builder.save()
  return str(export_dir)


def linear(w=2.0, b=1.0):
  """A `build` for save_tf1: y = x * w + b over x [None] float32, w and b resource variables."""
  def build():
    tf = lean_tf.tensorflow
    tf1 = tf.compat.v1
    x = tf1.placeholder(tf.float32, [None], name='x')
    weight = tf1.get_variable('w', initializer=tf.constant(w), use_resource=True)
    bias = tf1.get_variable('b', initializer=tf.constant(b), use_resource=True)
    return {'x': x}, {'y': tf.identity(x * weight + bias, name='y')}
  return build


def linear_model(export_dir, w=2.0, b=1.0):
  """The TF1 SavedModel of `linear`: serving_default maps x to x * w + b."""
  return save_tf1(export_dir, linear(w, b))


def stateful_model(export_dir):
  """A TF1 SavedModel of every kind of state the freezers handle, on placeholders:

  `emb` [10, 2] in 3 resource partitions (rows 0-3, 4-6, 7-9, row r = [r, 2r]), read by an
  embedding lookup; `w` [1000] float (a ref variable, 4000 bytes); `b` a resource scalar (2.0);
  `table` a MutableHashTable int64 -> float {4: 40, 5: 50}; an optimizer-like `unused` [500]
  that no signature reads. serving_default: ids [None] int64 ->
    y = sum(emb[ids % 10], axis 1) + w[0] * b + table(ids)  (default -1), and
  `embeddings`: ids -> emb[ids % 10].
  """
  tf = lean_tf.tensorflow
  tf1 = tf.compat.v1
  np = lean_tf.numpy
  graph = tf.Graph()
  with graph.as_default():
    ids = tf1.placeholder(tf.int64, [None], name='ids')
    rows = np.stack([np.arange(10), 2 * np.arange(10)], axis=1).astype(np.float32)
    emb = tf1.get_variable('emb', [10, 2], use_resource=True,
                           partitioner=tf1.fixed_size_partitioner(3))
    offsets = [p._save_slice_info.var_offset[0] for p in emb]
    fill_emb = [p.assign(rows[o:o + p.shape[0]]) for p, o in zip(emb, offsets)]
    w = tf1.get_variable('w', initializer=tf.constant(np.full(1000, 0.5, np.float32)),
                         use_resource=False)
    b = tf1.get_variable('b', initializer=tf.constant(2.0), use_resource=True)
    tf1.get_variable('unused', initializer=tf.zeros([500]), use_resource=True)
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0, name='table')
    looked_up = tf1.nn.embedding_lookup(emb, tf.math.floormod(ids, 10), partition_strategy='div',
                                        name='lookup')
    y = tf.add(tf.reduce_sum(looked_up, axis=1) + w[0] * b, table.lookup(ids), name='y')
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      session.run(fill_emb)
      session.run(table.insert(tf.constant([4, 5], tf.int64), tf.constant([40.0, 50.0])))
      builder = tf1.saved_model.Builder(str(export_dir))
      predict = tf1.saved_model.predict_signature_def
      builder.add_meta_graph_and_variables(session, ['serve'], signature_def_map={
          'serving_default': predict({'ids': ids}, {'y': y}),
          'embeddings': predict({'ids': ids}, {'emb': tf.identity(looked_up, name='rows')})})
      builder.save()
  return str(export_dir)


def stateful_expected(ids):
  """What stateful_model's serving_default answers for `ids` (a list of ints)."""
  table = {4: 40.0, 5: 50.0}
  return [3.0 * (i % 10) + 0.5 * 2.0 + table.get(i, -1.0) for i in ids]


LOOKUP_KEYS = ([10, 20], [31])  # the keys of `lookups`' two table shards


def lookups():
  """A `build` for save_tf1 of inputs that go somewhere: ids -> Cast -> DynamicPartition -> two
  table shards, and ids index an embedding of 40 rows; words -> a static table; serialized ->
  a tf.Example parser; dense [None, 3] -> arithmetic."""
  tf = lean_tf.tensorflow
  tf1 = tf.compat.v1
  ids = tf1.placeholder(tf.int64, [None], name='ids')
  words = tf1.placeholder(tf.string, [None], name='words')
  serialized = tf1.placeholder(tf.string, [None], name='serialized')
  dense = tf1.placeholder(tf.float32, [None, 3], name='dense')
  shard_a = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0, name='shard_a')
  shard_b = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0, name='shard_b')
  vocab = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(['x', 'y']), tf.constant([1.0, 2.0])), 0.0, name='vocab')
  same = tf.cast(tf.identity(ids), tf.int64)
  parts = tf.dynamic_partition(same, tf.cast(same % 2, tf.int32), 2)
  found = tf.reduce_sum(shard_a.lookup(parts[0])) + tf.reduce_sum(shard_b.lookup(parts[1]))
  found += tf.reduce_sum(tf.gather(tf.ones([40, 2], name='embedding'), same))
  parsed = tf.io.parse_example(serialized, {'age': tf.io.FixedLenFeature([2], tf.float32),
                                            'tags': tf.io.VarLenFeature(tf.string)})
  y = (found + tf.reduce_sum(vocab.lookup(words)) + tf.reduce_sum(parsed['age']) +
       tf.reduce_sum(dense) + tf.cast(tf.size(parsed['tags'].values), tf.float32))
  fill = [shard_a.insert(tf.constant(LOOKUP_KEYS[0], tf.int64), tf.constant([1.0, 2.0])),
          shard_b.insert(tf.constant(LOOKUP_KEYS[1], tf.int64), tf.constant([3.0]))]
  return ({'ids': ids, 'words': words, 'serialized': serialized, 'dense': dense},
          {'y': tf.identity(y, name='y')}, fill)
