"""Errors, files, atomic outputs, sizes, GraphDef helpers and TensorFlow's protos: no TensorFlow."""
