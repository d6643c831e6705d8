"""The names of a TensorFlow V2 checkpoint's files."""


def data_path(prefix, shard, num_shards):
  """`PREFIX.data-0000K-of-0000N`: data file `shard` of `num_shards` of the checkpoint `prefix`,
  as TensorFlow's tensor bundle names it (DataFilename in tensor_bundle.cc)."""
  return '%s.data-%05d-of-%05d' % (prefix, shard, num_shards)
