"""Small models written the way users write them, for testing the scripts on real shapes.

Not shaped to make the toolkit pass: each builder follows the tutorial or framework code its kind
of model came from (a census wide & deep on `tf.compat.v1.feature_column` trained from TFRecords
and exported by hand and as Estimator did; a Keras 3 model with preprocessing layers; a
sequence model whose reader yields a RaggedTensor). Each builds in a fresh graph in a few
seconds and returns a dict of the paths and facts a test needs. No flags, no pytest.
"""

import os

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
fc = tf1.feature_column

# ---------------------------------------------------------------------------------------------
# Census-style wide & deep (tf.compat.v1.feature_column, DNNLinearCombinedClassifier's recipe)

LABEL = 'income_bracket'
EDUCATION = ['Bachelors', 'HS-grad', '11th', 'Masters', '9th', 'Some-college', 'Assoc-acdm',
             'Assoc-voc', '7th-8th', 'Doctorate', 'Prof-school', '5th-6th', '10th', '1st-4th',
             'Preschool', '12th']
# countries.txt: the vocabulary file both country columns read. Data also holds countries the
# file lacks, as real data does.
COUNTRIES = ['United-States', 'Mexico', 'Philippines', 'Germany', 'Canada', 'India', 'England',
             'Cuba', 'China', 'South', 'Jamaica', 'Italy']
OTHER_COUNTRIES = ['Japan', 'Poland', 'Vietnam', 'Columbia']
OCCUPATIONS = ['Tech-support', 'Craft-repair', 'Other-service', 'Sales', 'Exec-managerial',
               'Prof-specialty', 'Handlers-cleaners', 'Machine-op-inspct', 'Adm-clerical',
               'Farming-fishing', 'Transport-moving', 'Priv-house-serv', 'Protective-serv',
               'Armed-Forces']
CATEGORICAL = ('education', 'occupation', 'native_country', 'residence_country')
NUMERIC = ('age', 'hours_per_week', 'capital_gain')


def census_feature_spec():
  """The training reader's parse spec: VarLen strings, FixedLen floats, a required label."""
  spec = {k: tf.io.VarLenFeature(tf.string) for k in CATEGORICAL}
  spec['age'] = tf.io.FixedLenFeature([1], tf.float32)
  spec['hours_per_week'] = tf.io.FixedLenFeature([1], tf.float32, default_value=[40.0])
  spec['capital_gain'] = tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])
  spec[LABEL] = tf.io.FixedLenFeature([1], tf.float32)
  return spec


def census_rows(n, seed, unseen=False):
  """`n` census rows as dicts of lists (a missing feature is absent from its dict).

  With `unseen`, about a third of the values are ones training never saw: occupations that
  hash to new buckets, education and countries missing from the vocabularies, empty and
  multi-valued categorical features, and rows without the label.
  """
  rng = np.random.RandomState(seed)
  rows = []
  for i in range(n):
    novel = unseen and rng.rand() < 0.35
    edu = EDUCATION[min(rng.zipf(1.5) - 1, len(EDUCATION) - 1)]
    occ = OCCUPATIONS[rng.randint(len(OCCUPATIONS))]
    native = (COUNTRIES + OTHER_COUNTRIES)[min(rng.zipf(1.4) - 1, 15)]
    residence = (COUNTRIES + OTHER_COUNTRIES)[min(rng.zipf(1.6) - 1, 15)]
    if novel:
      edu = rng.choice([edu, 'Unknown-degree', 'bachelors'])
      occ = rng.choice([occ, 'Astronaut-%d' % rng.randint(1000), 'never seen %d' % i])
      native = rng.choice([native, 'Atlantis', 'Narnia-%d' % rng.randint(50)])
    row = {'education': [edu], 'occupation': [occ], 'native_country': [native],
           'residence_country': [residence],
           'age': [float(rng.randint(17, 91))],
           'hours_per_week': [float(rng.randint(1, 100))],
           'capital_gain': [float(rng.choice([0, 0, 0, rng.randint(1, 20000)]))]}
    if rng.rand() < 0.1:
      row['occupation'].append(OCCUPATIONS[rng.randint(len(OCCUPATIONS))])
    if rng.rand() < 0.08:
      del row['occupation']  # the census data has '?' occupations; here they are missing
    if novel and rng.rand() < 0.3:
      row['residence_country'] = []
    if novel and rng.rand() < 0.3:
      del row['hours_per_week']  # the spec's default fills it
    score = (0.04 * (row['age'][0] - 40) + (1.2 if edu in ('Masters', 'Doctorate',
                                                          'Prof-school', 'Bachelors') else -0.3)
             + (0.8 if occ in ('Exec-managerial', 'Prof-specialty') else 0.0)
             + 0.02 * (row.get('hours_per_week', [40.0])[0] - 40)
             + (1.0 if row['capital_gain'][0] > 5000 else 0.0))
    if not (unseen and rng.rand() < 0.2):
      row[LABEL] = [float(rng.rand() < 1 / (1 + np.exp(-score)))]
    rows.append(row)
  return rows


def to_example(row):
  """A tf.train.Example from a row of census_rows."""
  feature = {}
  for key, values in row.items():
    if key in CATEGORICAL:
      feature[key] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
    else:
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def serialized_examples(rows):
  """The rows as a numpy object array of serialized tf.Example, what TF Serving receives."""
  return np.array([to_example(r).SerializeToString() for r in rows], dtype=object)


def census_columns(vocabulary_file):
  """(wide columns, deep columns), as the census wide & deep tutorial declared them."""
  education = fc.categorical_column_with_vocabulary_list('education', EDUCATION)
  occupation = fc.categorical_column_with_hash_bucket('occupation', hash_bucket_size=100)
  # One vocabulary file, two columns: TF records the asset twice under one file name.
  native_country = fc.categorical_column_with_vocabulary_file(
      'native_country', vocabulary_file, num_oov_buckets=2)
  residence_country = fc.categorical_column_with_vocabulary_file(
      'residence_country', vocabulary_file)
  age = fc.numeric_column('age')
  age_buckets = fc.bucketized_column(age, boundaries=[18, 25, 30, 35, 40, 45, 50, 55, 60, 65])
  wide = [education, occupation, native_country, age_buckets,
          fc.crossed_column(['education', 'occupation'], hash_bucket_size=200),
          fc.crossed_column([age_buckets, 'education'], hash_bucket_size=100)]
  deep = [age, fc.numeric_column('hours_per_week'), fc.numeric_column('capital_gain'),
          fc.indicator_column(education), fc.indicator_column(residence_country),
          fc.embedding_column(occupation, dimension=4),
          fc.embedding_column(native_country, dimension=3)]
  return wide, deep


def _dense(inputs, units, name):
  """tf.compat.v1.layers.dense's variables and math (that API is gone under Keras 3)."""
  with tf1.variable_scope(name):
    kernel = tf1.get_variable('kernel', [inputs.shape[-1], units],
                              initializer=tf1.glorot_uniform_initializer())
    bias = tf1.get_variable('bias', [units], initializer=tf1.zeros_initializer())
  return tf.nn.bias_add(tf.matmul(inputs, kernel), bias)


def census_logits(features, vocabulary_file):
  """DNNLinearCombined's model: linear logits + DNN logits, each under its own scope."""
  wide, deep = census_columns(vocabulary_file)
  # DNNLinearCombined partitioned the DNN's input layer over the PS tasks and the linear model
  # by min_max_variable_partitioner (one partition below 64 MiB, still named part_0).
  with tf1.variable_scope('dnn'):
    with tf1.variable_scope('input_from_feature_columns',
                            partitioner=tf1.fixed_size_partitioner(3)):
      net = fc.input_layer(features, deep)
    for i, units in enumerate((16, 8)):
      net = tf.nn.relu(_dense(net, units, 'hiddenlayer_%d' % i))
    dnn_logits = _dense(net, 1, 'logits')
  with tf1.variable_scope(
      'linear', partitioner=tf1.min_max_variable_partitioner(max_partitions=2,
                                                             min_slice_size=64 << 20)):
    linear_logits = fc.linear_model(features, wide, units=1, sparse_combiner='sum')
  return tf.add(dnn_logits, linear_logits, name='add_logits')


def _write_tfrecords(rows, data_dir, num_files, convert=None):
  os.makedirs(data_dir, exist_ok=True)
  paths = [os.path.join(data_dir, 'adult-%05d-of-%05d.tfrecord' % (i, num_files))
           for i in range(num_files)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i, row in enumerate(rows):
    writers[i % num_files].write((convert or to_example)(row).SerializeToString())
  for w in writers:
    w.close()
  return paths


def _probability_outputs(logits):
  """The binary head's predictions, as Estimator's _BinaryLogisticHead named them."""
  logistic = tf.sigmoid(logits, name='logistic')
  probabilities = tf.concat([1 - logistic, logistic], axis=1, name='probabilities')
  class_ids = tf.cast(logistic > 0.5, tf.int64, name='class_ids')
  classes = tf.strings.as_string(class_ids, name='str_classes')
  batch = tf.shape(logits)[0]
  all_classes = tf.tile(tf.constant([[b'0', b'1']]), [batch, 1], name='all_classes')
  return {'logits': logits, 'logistic': logistic, 'probabilities': probabilities,
          'class_ids': class_ids, 'classes': classes, 'all_classes': all_classes}


def wide_and_deep(out_dir, num_examples=400, steps=40, batch_size=32, seed=1):
  """Trains the census wide & deep from TFRecords and writes it two ways.

  Writes under `out_dir`: `data/*.tfrecord`, `countries.txt` (the shared vocabulary),
  `ckpt/model.ckpt-STEPS`, and two SavedModels:
    `reader_fed`: the training graph, its `serving_default` fed at the reader's outputs (the
      iterator's get_next tensors; the categorical ones are SparseTensors, coo_sparse infos),
      tables initialised by the legacy init op, variables from the training session;
    `estimator_style`: what Estimator's build_parsing_serving_input_receiver_fn exported: the
      model rebuilt in a fresh graph on `tf.io.parse_example` of a string placeholder
      `input_example_tensor`, restored from the checkpoint, with `serving_default` (classify),
      `classification`, `regression` and `predict` signatures and a main op for the tables.

  Returns:
    dict: reader_fed, estimator_style, checkpoint (prefix), data (TFRecord paths),
      feature_spec (the training spec, label included), serving_spec (without the label),
      vocabulary_file, label, steps.
  """
  os.makedirs(out_dir, exist_ok=True)
  vocabulary_file = os.path.join(out_dir, 'countries.txt')
  with open(vocabulary_file, 'w') as f:
    f.write('\n'.join(COUNTRIES) + '\n')
  data = _write_tfrecords(census_rows(num_examples, seed), os.path.join(out_dir, 'data'), 2)
  spec = census_feature_spec()
  serving_spec = {k: v for k, v in spec.items() if k != LABEL}
  ckpt_dir = os.path.join(out_dir, 'ckpt')
  reader_fed = os.path.join(out_dir, 'reader_fed')

  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    dataset = (tf.data.TFRecordDataset(data).repeat().shuffle(256, seed=seed)
               .batch(batch_size).map(lambda s: tf.io.parse_example(s, spec)))
    features = tf1.data.make_one_shot_iterator(dataset).get_next()
    labels = features.pop(LABEL)
    global_step = tf1.train.get_or_create_global_step()
    logits = census_logits(features, vocabulary_file)
    loss = tf1.losses.sigmoid_cross_entropy(labels, logits)
    linear_vars = tf1.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES, scope='linear')
    dnn_vars = tf1.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES, scope='dnn')
    train_ops = [tf1.train.FtrlOptimizer(0.2).minimize(loss, var_list=linear_vars),
                 tf1.train.AdagradOptimizer(0.05).minimize(loss, var_list=dnn_vars)]
    with tf.control_dependencies(train_ops):
      train_op = tf1.assign_add(global_step, 1)
    predictions = _probability_outputs(logits)
    saver = tf1.train.Saver(max_to_keep=1)
    with tf1.Session() as sess:
      sess.run([tf1.global_variables_initializer(), tf1.local_variables_initializer(),
                tf1.tables_initializer()])
      for _ in range(steps):
        sess.run([train_op, loss])
      checkpoint = saver.save(sess, os.path.join(ckpt_dir, 'model.ckpt'),
                              global_step=global_step)
      info = tf1.saved_model.build_tensor_info
      inputs = {k: info(v) for k, v in features.items()}
      sigs = {
          'serving_default': tf1.saved_model.signature_def_utils.build_signature_def(
              inputs, {k: info(predictions[k]) for k in ('logistic', 'logits', 'probabilities',
                                                   'class_ids')},
              tf1.saved_model.PREDICT_METHOD_NAME),
      }
      builder = tf1.saved_model.Builder(reader_fed)
      builder.add_meta_graph_and_variables(
          sess, [tf1.saved_model.SERVING], signature_def_map=sigs,
          assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
          legacy_init_op=tf1.tables_initializer())
      builder.save()

  estimator_style = os.path.join(out_dir, 'estimator_style')
  export_estimator_style(estimator_style, checkpoint, vocabulary_file, serving_spec)
  return {'reader_fed': reader_fed, 'estimator_style': estimator_style,
          'checkpoint': checkpoint, 'data': data, 'feature_spec': spec,
          'serving_spec': serving_spec, 'vocabulary_file': vocabulary_file, 'label': LABEL,
          'steps': steps}


def export_estimator_style(export_dir, checkpoint, vocabulary_file, serving_spec):
  """Estimator.export_saved_model with build_parsing_serving_input_receiver_fn, by hand."""
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf1.placeholder(tf.string, [None], name='input_example_tensor')
    features = tf.io.parse_example(serialized, serving_spec)
    tf1.train.get_or_create_global_step()
    predictions = _probability_outputs(census_logits(features, vocabulary_file))
    info = tf1.saved_model.build_tensor_info
    classify = tf1.saved_model.classification_signature_def(
        serialized, predictions['all_classes'], predictions['probabilities'])
    sigs = {
        'serving_default': classify,
        'classification': classify,
        'regression': tf1.saved_model.regression_signature_def(serialized,
                                                               predictions['logistic']),
        'predict': tf1.saved_model.signature_def_utils.build_signature_def(
            {'examples': info(serialized)}, {k: info(v) for k, v in predictions.items()},
            tf1.saved_model.PREDICT_METHOD_NAME),
    }
    with tf1.Session() as sess:
      tf1.train.Saver(sharded=True).restore(sess, checkpoint)
      builder = tf1.saved_model.Builder(export_dir)
      builder.add_meta_graph_and_variables(
          sess, [tf1.saved_model.SERVING], signature_def_map=sigs,
          assets_collection=tf1.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
          main_op=tf.group(tf1.local_variables_initializer(), tf1.tables_initializer()),
          strip_default_attrs=True)
      builder.save()


# ---------------------------------------------------------------------------------------------
# A CTR model on feature columns: identity ids, shared embeddings, weighted tags, crosses

CTR_USERS, CTR_ITEMS, CTR_TAGS = 30, 60, ['sports', 'news', 'music', 'games', 'travel']
CTR_CATEGORIES = ['shoes', 'books', 'phones', 'toys']


def ctr_feature_spec():
  return {'user_id': tf.io.VarLenFeature(tf.int64), 'item_id': tf.io.VarLenFeature(tf.int64),
          'clicked_items': tf.io.VarLenFeature(tf.int64),
          'tag': tf.io.VarLenFeature(tf.string), 'tag_weight': tf.io.VarLenFeature(tf.float32),
          'category': tf.io.VarLenFeature(tf.string),
          'price': tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
          'clicked': tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])}


def ctr_rows(n, seed):
  """Impressions: ids inside their buckets (identity columns assert it), 0 to 3 clicked items
  and weighted tags per row (a tag's weight beside it)."""
  rng = np.random.RandomState(seed)
  rows = []
  for _ in range(n):
    tags = rng.randint(0, 4)
    row = {'user_id': [int(rng.randint(CTR_USERS))], 'item_id': [int(rng.randint(CTR_ITEMS))],
           'clicked_items': [int(i) for i in rng.randint(CTR_ITEMS, size=rng.randint(0, 4))],
           'tag': [CTR_TAGS[i] for i in rng.randint(len(CTR_TAGS), size=tags)],
           'tag_weight': [float(w) for w in rng.rand(tags)],
           'category': [CTR_CATEGORIES[rng.randint(len(CTR_CATEGORIES))]],
           'price': [float(rng.lognormal(2.0, 1.0))]}
    row['clicked'] = [float((row['item_id'][0] in row['clicked_items']) or rng.rand() < 0.2)]
    rows.append(row)
  return rows


def ctr_example(row):
  """A tf.train.Example from a row of ctr_rows (each list's type is its feature's)."""
  feature = {}
  for key, values in row.items():
    if key in ('tag', 'category'):
      feature[key] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))
    elif key in ('user_id', 'item_id', 'clicked_items'):
      feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    else:
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def ctr_logits(features):
  """Wide (FTRL) and deep (Adagrad) logits on feature columns, as a TF1 CTR model declares
  them: identity user and item ids, the item id's embedding shared with the clicked items',
  tags weighted per impression, a category x tag cross; the input layer partitioned in 2."""
  user = fc.categorical_column_with_identity('user_id', num_buckets=CTR_USERS)
  item = fc.categorical_column_with_identity('item_id', num_buckets=CTR_ITEMS)
  clicked = fc.categorical_column_with_identity('clicked_items', num_buckets=CTR_ITEMS)
  tags = fc.weighted_categorical_column(
      fc.categorical_column_with_vocabulary_list('tag', CTR_TAGS), 'tag_weight')
  category = fc.categorical_column_with_vocabulary_list('category', CTR_CATEGORIES)
  deep = [fc.embedding_column(user, 4), fc.embedding_column(tags, 3, combiner='sqrtn'),
          fc.indicator_column(category), fc.numeric_column('price')]
  deep += fc.shared_embedding_columns([item, clicked], dimension=4, combiner='mean')
  wide = [user, item, tags, fc.crossed_column([category, 'tag'], hash_bucket_size=40)]
  with tf1.variable_scope('dnn'):
    with tf1.variable_scope('input_from_feature_columns',
                            partitioner=tf1.fixed_size_partitioner(2)):
      net = fc.input_layer(features, deep)
    net = tf.nn.relu(_dense(net, 8, 'hiddenlayer_0'))
    dnn_logits = _dense(net, 1, 'logits')
  with tf1.variable_scope('linear', partitioner=tf1.fixed_size_partitioner(2)):
    linear_logits = fc.linear_model(features, wide, units=1)
  return tf.add(dnn_logits, linear_logits, name='add_logits')


def feature_column_ctr(out_dir, num_examples=300, steps=30, batch_size=32, seed=6):
  """Trains the CTR model from TFRecords and writes it as census `reader_fed` is written: the
  training graph, its `serving_default` fed at the reader's outputs (SparseTensors for the
  VarLen features), tables initialised by the legacy init op.

  Returns:
    dict: reader_fed, data (TFRecord paths), serving_spec.
  """
  os.makedirs(out_dir, exist_ok=True)
  data = _write_tfrecords(ctr_rows(num_examples, seed), os.path.join(out_dir, 'data'), 1,
                          ctr_example)
  spec = ctr_feature_spec()
  reader_fed = os.path.join(out_dir, 'reader_fed')
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    dataset = (tf.data.TFRecordDataset(data).repeat().shuffle(256, seed=seed)
               .batch(batch_size).map(lambda s: tf.io.parse_example(s, spec)))
    features = tf1.data.make_one_shot_iterator(dataset).get_next()
    labels = features.pop('clicked')
    logits = ctr_logits(features)
    loss = tf1.losses.sigmoid_cross_entropy(labels, logits)
    linear_vars = tf1.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES, scope='linear')
    dnn_vars = tf1.get_collection(tf1.GraphKeys.TRAINABLE_VARIABLES, scope='dnn')
    train_op = tf.group(
        tf1.train.FtrlOptimizer(0.1, l1_regularization_strength=0.01).minimize(
            loss, var_list=linear_vars),
        tf1.train.AdagradOptimizer(0.05).minimize(loss, var_list=dnn_vars))
    probability = tf.sigmoid(logits, name='probability')
    with tf1.Session() as sess:
      sess.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      for _ in range(steps):
        sess.run(train_op)
      info = tf1.saved_model.build_tensor_info
      sig = tf1.saved_model.signature_def_utils.build_signature_def(
          {k: info(v) for k, v in features.items()},
          {'probability': info(probability), 'logits': info(logits)},
          tf1.saved_model.PREDICT_METHOD_NAME)
      builder = tf1.saved_model.Builder(reader_fed)
      builder.add_meta_graph_and_variables(
          sess, [tf1.saved_model.SERVING], signature_def_map={'serving_default': sig},
          legacy_init_op=tf1.tables_initializer())
      builder.save()
  return {'reader_fed': reader_fed, 'data': data,
          'serving_spec': {k: v for k, v in spec.items() if k != 'clicked'}}


# ---------------------------------------------------------------------------------------------
# Keras 3 with preprocessing layers

KERAS_USERS = ['u%03d' % i for i in range(40)]
KERAS_ITEMS = [1000 + 7 * i for i in range(30)]


def keras_inputs(n, seed, unseen=False):
  """{input name: array} for the Keras model; `unseen` mixes in users, items and values that
  were not in the adapted vocabularies (StringLookup / IntegerLookup OOV, any Hashing input)."""
  rng = np.random.RandomState(seed)
  users = np.array([KERAS_USERS[i] for i in rng.randint(len(KERAS_USERS), size=n)],
                   dtype=object)
  items = np.array([KERAS_ITEMS[i] for i in rng.randint(len(KERAS_ITEMS), size=n)],
                   dtype=np.int64)
  queries = np.array(['query %d' % i for i in rng.randint(500, size=n)], dtype=object)
  price = rng.lognormal(2.0, 1.0, size=(n, 1)).astype(np.float32)
  if unseen:
    novel = rng.rand(n) < 0.4
    users = np.where(novel, np.array(['new_user_%d' % i for i in range(n)], dtype=object), users)
    items = np.where(rng.rand(n) < 0.4, rng.randint(2**40, 2**41, size=n), items)
    price = np.where(rng.rand(n, 1) < 0.2, np.float32(1e4), price).astype(np.float32)
  return {'user': users.reshape(n, 1), 'item': items.reshape(n, 1),
          'query': queries.reshape(n, 1), 'price': price}


def keras3_preprocessing(out_dir, num_examples=300, epochs=2, seed=2):
  """A Keras 3 model with StringLookup, IntegerLookup, Hashing and Normalization, adapted on
  its data, trained briefly, written by `model.export` and by `tf.saved_model.save`.

  Returns:
    dict: exported (model.export: its signature is `serve` and `serving_default`), saved
      (tf.saved_model.save), input_names.
  """
  import keras  # Keras 3, TensorFlow backend
  keras.utils.set_random_seed(seed)
  data = keras_inputs(num_examples, seed)
  label = ((data['price'][:, 0] > 8) ^ (data['item'][:, 0] % 2 == 0)).astype(np.float32)

  user_lookup = keras.layers.StringLookup(name='user_lookup')
  user_lookup.adapt(data['user'])
  item_lookup = keras.layers.IntegerLookup(name='item_lookup')
  item_lookup.adapt(data['item'])
  normalize = keras.layers.Normalization(name='price_norm')
  normalize.adapt(np.log1p(data['price']))

  user = keras.Input(shape=(1,), dtype='string', name='user')
  item = keras.Input(shape=(1,), dtype='int64', name='item')
  query = keras.Input(shape=(1,), dtype='string', name='query')
  price = keras.Input(shape=(1,), dtype='float32', name='price')
  user_vec = keras.layers.Embedding(user_lookup.vocabulary_size(), 4)(user_lookup(user))
  item_vec = keras.layers.Embedding(item_lookup.vocabulary_size(), 4)(item_lookup(item))
  query_vec = keras.layers.Embedding(32, 3)(keras.layers.Hashing(num_bins=32)(query))
  price_vec = normalize(keras.ops.log1p(price))
  x = keras.layers.Concatenate()([keras.layers.Flatten()(user_vec),
                                  keras.layers.Flatten()(item_vec),
                                  keras.layers.Flatten()(query_vec), price_vec])
  x = keras.layers.Dense(8, activation='relu')(x)
  out = keras.layers.Dense(1, activation='sigmoid', name='score')(x)
  model = keras.Model({'user': user, 'item': item, 'query': query, 'price': price}, out)
  model.compile(optimizer='adam', loss='binary_crossentropy')
  train = tf.data.Dataset.from_tensor_slices((data, label)).shuffle(512, seed=seed).batch(32)
  model.fit(train, epochs=epochs, verbose=0)

  exported = os.path.join(out_dir, 'exported')
  saved = os.path.join(out_dir, 'saved')
  model.export(exported, verbose=False)
  tf.saved_model.save(model, saved)
  return {'exported': exported, 'saved': saved, 'input_names': sorted(data)}


# ---------------------------------------------------------------------------------------------
# tf-keras (Keras 2): saved once, then checkpointed while training goes on

TF_KERAS_USERS = ['u%02d' % i for i in range(12)]


def tf_keras_inputs(n, seed, unseen=False):
  """{input name: array} for tf_keras_clicks; `unseen` mixes in users outside the vocabulary
  and items the click table never saw."""
  rng = np.random.RandomState(seed)
  users = np.array([TF_KERAS_USERS[i] for i in rng.randint(len(TF_KERAS_USERS), size=n)],
                   dtype=object)
  items = rng.randint(0, 40, size=n).astype(np.int64)
  if unseen:
    users = np.where(rng.rand(n) < 0.3, np.array(['stranger'] * n, dtype=object), users)
    items = np.where(rng.rand(n) < 0.3, rng.randint(10**6, 10**7, size=n), items)
  return {'user': users.reshape(n, 1), 'item': items.reshape(n, 1),
          'x': rng.randn(n, 3).astype(np.float32)}


def tf_keras_clicks(out_dir, num_examples=256, seed=3):
  """A tf-keras CTR model as Keras 2 users write it: StringLookup, an embedding, a custom layer
  counting each item's impressions in a MutableHashTable while training (read when serving),
  batch norm, compiled with metrics (accuracy, AUC: their accumulators are tracked only by the
  SavedModel), saved with `model.save(format='tf')` after one epoch, then trained on and
  checkpointed both ways: `tf.train.Checkpoint(model=, optimizer=).save` and `save_weights`.

  Returns:
    dict: structure, checkpoint (tf.train.Checkpoint prefix), weights (save_weights prefix),
      feeds (users and items unseen included), expected ({output name: array} of the trained
      model on feeds).
  """
  import tf_keras as keras  # only where used

  class ItemCounts(keras.layers.Layer):
    """Impressions per item: counted while training, looked up (0 if unseen) when serving."""

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      self.counts = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, 0.0)

    def call(self, items, training=None):
      items = tf.reshape(items, [-1])
      if training:
        self.counts.insert(items, self.counts.lookup(items) + 1.0)
      return tf.math.log1p(tf.reshape(self.counts.lookup(items), [-1, 1]))

  keras.utils.set_random_seed(seed)
  user = keras.Input((1,), dtype='string', name='user')
  item = keras.Input((1,), dtype='int64', name='item')
  x = keras.Input((3,), name='x')
  user_id = keras.layers.StringLookup(vocabulary=TF_KERAS_USERS, name='user_lookup')(user)
  user_vec = keras.layers.Flatten()(keras.layers.Embedding(len(TF_KERAS_USERS) + 1, 4,
                                                           name='user_emb')(user_id))
  hidden = keras.layers.Dense(8, activation='relu', name='hidden')(keras.layers.Concatenate()(
      [user_vec, ItemCounts(name='item_counts')(item), x]))
  hidden = keras.layers.BatchNormalization(name='bn')(hidden)
  out = keras.layers.Dense(1, activation='sigmoid', name='ctr')(hidden)
  model = keras.Model({'user': user, 'item': item, 'x': x}, out)
  optimizer = keras.optimizers.Adam(0.03)
  model.compile(optimizer=optimizer, loss='binary_crossentropy',
                metrics=['accuracy', keras.metrics.AUC(name='auc')])
  data = tf_keras_inputs(num_examples, seed)
  label = ((data['x'][:, 0] > 0) ^ (data['item'][:, 0] % 3 == 0)).astype(np.float32)
  model.fit(data, label, epochs=1, batch_size=32, verbose=0)
  structure = os.path.join(out_dir, 'structure')
  model.save(structure, save_format='tf')
  model.fit(data, label, epochs=2, batch_size=32, verbose=0)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
      os.path.join(out_dir, 'ckpt', 'ck'))
  weights = os.path.join(out_dir, 'weights', 'w')
  model.save_weights(weights)
  feeds = tf_keras_inputs(60, seed + 1, unseen=True)
  expected = model.predict(feeds, verbose=0)
  return {'structure': structure, 'checkpoint': checkpoint, 'weights': weights,
          'feeds': feeds, 'expected': expected}


def tf_keras_top_k(out_dir, seed=4):
  """A retrieval model as TF Recommenders' BruteForce is written: a tf-keras Model subclass
  holding its candidates' embeddings and identifiers as non-trainable variables, answering the
  top 3 by dot product; saved with tf.saved_model.save. Its own variables/ is its checkpoint.

  Returns:
    dict: structure, feeds, expected ({output name: array}).
  """
  import tf_keras as keras

  class TopK(keras.Model):

    def __init__(self, k=3):
      super().__init__()
      self._k = k
      self.query_model = keras.layers.Embedding(10, 4, name='query_emb')

    def index(self, candidates, identifiers):
      self._candidates = tf.Variable(candidates, trainable=False, name='candidates')
      self._identifiers = tf.Variable(identifiers, trainable=False, name='identifiers')

    def call(self, queries):
      scores = tf.matmul(self.query_model(queries), self._candidates, transpose_b=True)
      values, indices = tf.math.top_k(scores, self._k)
      return {'scores': values, 'ids': tf.gather(self._identifiers, indices)}

  keras.utils.set_random_seed(seed)
  model = TopK()
  model.index(tf.random.stateless_normal([20, 4], seed=[seed, 1]),
              tf.constant(['cand_%02d' % i for i in range(20)]))
  feeds = {'queries': np.arange(10, dtype=np.int32)}
  expected = {k: v.numpy() for k, v in model(tf.constant(feeds['queries'])).items()}
  structure = os.path.join(out_dir, 'structure')
  tf.saved_model.save(model, structure, signatures=tf.function(
      lambda queries: model(queries),
      input_signature=[tf.TensorSpec([None], tf.int32, name='queries')]))
  return {'structure': structure, 'feeds': feeds, 'expected': expected}


# ---------------------------------------------------------------------------------------------
# A sequence feature read as a RaggedTensor

HISTORY_ITEMS = ['item_%02d' % i for i in range(25)]


def history_rows(n, seed, unseen=False):
  """Rows of {'history': [item names], 'user_age': [float], 'clicked': [float]}: histories of
  0 to 6 items; with `unseen`, item names outside the vocabulary and rows without a label."""
  rng = np.random.RandomState(seed)
  rows = []
  for i in range(n):
    history = [HISTORY_ITEMS[min(rng.zipf(1.4) - 1, len(HISTORY_ITEMS) - 1)]
               for _ in range(rng.randint(0, 7))]
    if unseen and rng.rand() < 0.4:
      history.append('new_item_%d' % i)
    row = {'history': history, 'user_age': [float(rng.randint(16, 80))]}
    if not (unseen and rng.rand() < 0.3):
      row['clicked'] = [float(('item_00' in history) ^ (row['user_age'][0] > 40))]
    rows.append(row)
  return rows


def history_example(row):
  feature = {'history': tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[v.encode() for v in row['history']]))}
  for key in ('user_age', 'clicked'):
    if key in row:
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=row[key]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def history_spec():
  return {'history': tf.io.RaggedFeature(tf.string),
          'user_age': tf.io.FixedLenFeature([1], tf.float32),
          'clicked': tf.io.FixedLenFeature([1], tf.float32)}


def _history_logit(history, user_age):
  """Mean of the history's item embeddings (a static vocabulary with OOV buckets, a
  partitioned embedding) and the user's age, through a small MLP."""
  table = tf.lookup.StaticVocabularyTable(
      tf.lookup.KeyValueTensorInitializer(HISTORY_ITEMS, np.arange(len(HISTORY_ITEMS),
                                                                   dtype=np.int64)),
      num_oov_buckets=3)
  embedding = tf1.get_variable('item_embedding', [len(HISTORY_ITEMS) + 3, 4],
                               partitioner=tf1.fixed_size_partitioner(2))
  ids = tf.ragged.map_flat_values(table.lookup, history)
  vectors = tf.ragged.map_flat_values(tf.nn.embedding_lookup, embedding, ids)
  lengths = tf.cast(tf.expand_dims(ids.row_lengths(), 1), tf.float32)
  mean = tf.math.divide_no_nan(tf.reduce_sum(vectors, axis=1), lengths)
  net = tf.concat([mean, user_age / 50.0], axis=1)
  net = tf.nn.relu(_dense(net, 8, 'hidden'))
  return _dense(net, 1, 'logit')


def ragged_history(out_dir, num_examples=300, steps=30, batch_size=32, seed=4):
  """A click model over a variable-length item history, read with tf.io.RaggedFeature.

  Writes `data/`, `ckpt/` and `reader_fed/`: the training graph's SavedModel, its signature fed
  at the reader's outputs (a RaggedTensor: a composite TensorInfo of values and row splits),
  tables initialised by the main op. Also `tf2_module/`: the same model as a tf.Module whose
  signature takes a tf.RaggedTensorSpec (TF2 flattens it into `history`, `history_1`).

  Returns:
    dict: reader_fed, tf2_module, checkpoint, data, feature_spec.
  """
  os.makedirs(out_dir, exist_ok=True)
  data_dir = os.path.join(out_dir, 'data')
  os.makedirs(data_dir, exist_ok=True)
  data = [os.path.join(data_dir, 'history.tfrecord')]
  with tf.io.TFRecordWriter(data[0]) as writer:
    for row in history_rows(num_examples, seed):
      writer.write(history_example(row).SerializeToString())
  spec = history_spec()
  reader_fed = os.path.join(out_dir, 'reader_fed')
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    dataset = (tf.data.TFRecordDataset(data).repeat().batch(batch_size)
               .map(lambda s: tf.io.parse_example(s, spec)))
    features = tf1.data.make_one_shot_iterator(dataset).get_next()
    logit = _history_logit(features['history'], features['user_age'])
    probability = tf.sigmoid(logit, name='probability')
    loss = tf1.losses.sigmoid_cross_entropy(features['clicked'], logit)
    global_step = tf1.train.get_or_create_global_step()
    train_op = tf1.train.AdamOptimizer(0.02).minimize(loss, global_step=global_step)
    with tf1.Session() as sess:
      sess.run([tf1.global_variables_initializer(), tf1.tables_initializer()])
      for _ in range(steps):
        sess.run(train_op)
      checkpoint = tf1.train.Saver().save(sess, os.path.join(out_dir, 'ckpt', 'model.ckpt'),
                                          global_step=global_step)
      info = tf1.saved_model.build_tensor_info
      builder = tf1.saved_model.Builder(reader_fed)
      builder.add_meta_graph_and_variables(
          sess, [tf1.saved_model.SERVING], signature_def_map={
              'serving_default': tf1.saved_model.signature_def_utils.build_signature_def(
                  {'history': info(features['history']),
                   'user_age': info(features['user_age'])},
                  {'probability': info(probability), 'logit': info(logit)},
                  tf1.saved_model.PREDICT_METHOD_NAME)},
          main_op=tf1.tables_initializer())
      builder.save()
      values = {v.op.name: sess.run(v) for v in tf1.trainable_variables()}

  tf2_module = os.path.join(out_dir, 'tf2_module')
  _save_history_module(tf2_module, values)
  return {'reader_fed': reader_fed, 'tf2_module': tf2_module, 'checkpoint': checkpoint,
          'data': data, 'feature_spec': spec}


def _save_history_module(export_dir, values):
  """The trained history model as a tf.Module with a RaggedTensorSpec signature."""

  class HistoryModel(tf.Module):
    """Holds the trained variables and the vocabulary table; `serve` scores a batch."""

    def __init__(self):
      super().__init__()
      self.table = tf.lookup.StaticVocabularyTable(
          tf.lookup.KeyValueTensorInitializer(
              HISTORY_ITEMS, np.arange(len(HISTORY_ITEMS), dtype=np.int64)), num_oov_buckets=3)
      self.embedding = [tf.Variable(values['item_embedding/part_%d' % i])
                        for i in range(2)]
      self.weights = {k: tf.Variable(v) for k, v in values.items()
                      if not k.startswith('item_embedding')}

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, 1], tf.float32)])
    def serve(self, history, user_age):
      ids = tf.ragged.map_flat_values(self.table.lookup, history)
      vectors = tf.ragged.map_flat_values(tf.nn.embedding_lookup, self.embedding, ids)
      lengths = tf.cast(tf.expand_dims(ids.row_lengths(), 1), tf.float32)
      mean = tf.math.divide_no_nan(tf.reduce_sum(vectors, axis=1), lengths)
      net = tf.concat([mean, user_age / 50.0], axis=1)
      w = self.weights
      net = tf.nn.relu(tf.matmul(net, w['hidden/kernel']) + w['hidden/bias'])
      logit = tf.matmul(net, w['logit/kernel']) + w['logit/bias']
      return {'probability': tf.sigmoid(logit), 'logit': logit}

  module = HistoryModel()
  tf.saved_model.save(module, export_dir, signatures={'serving_default': module.serve})


# ---------------------------------------------------------------------------------------------
# A sparse placeholder in, a SparseTensor out (a fake inference graph as users build them)


def sparse_weights(out_dir, seed=5):
  """A model on `tf.compat.v1.sparse_placeholder` (a SparseTensor signature input whose
  components are placeholders): each word is hashed into 16 buckets of a weight variable.
  Outputs: `weights`, a SparseTensor of each word's weight (a coo_sparse output), and
  `total`, their sum per row.

  Writes `saved_model/` and `ckpt/model.ckpt-0` (the same values).

  Returns:
    dict: saved_model, checkpoint.
  """
  os.makedirs(os.path.join(out_dir, 'ckpt'), exist_ok=True)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(seed)
    words = tf1.sparse_placeholder(tf.string, [None, None], name='words')
    weight = tf1.get_variable('word_weight', [16], initializer=tf1.random_normal_initializer())
    buckets = tf.strings.to_hash_bucket_fast(words.values, 16)
    weights = tf.SparseTensor(words.indices, tf.gather(weight, buckets), words.dense_shape)
    total = tf.sparse.reduce_sum(weights, axis=1)
    info = tf1.saved_model.build_tensor_info
    with tf1.Session() as sess:
      sess.run(tf1.global_variables_initializer())
      checkpoint = tf1.train.Saver().save(sess, os.path.join(out_dir, 'ckpt', 'model.ckpt'),
                                          global_step=0)
      export_dir = os.path.join(out_dir, 'saved_model')
      builder = tf1.saved_model.Builder(export_dir)
      builder.add_meta_graph_and_variables(sess, ['serve'], signature_def_map={
          'serving_default': tf1.saved_model.signature_def_utils.build_signature_def(
              {'words': info(words)}, {'weights': info(weights), 'total': info(total)},
              tf1.saved_model.PREDICT_METHOD_NAME)})
      builder.save()
  return {'saved_model': export_dir, 'checkpoint': checkpoint}
