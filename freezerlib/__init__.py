"""freezer's library: a TensorFlow training model becomes a lean, correct serving model.

The scripts at the repository's root are its command line; everything else is here, by
pipeline stage:

  core        errors, files (local through the OS, remote through TensorFlow's file systems),
              atomic outputs, sizes and progress, GraphDef helpers, TensorFlow's protos
              without TensorFlow
  formats     SavedModel, frozen graph (and the checkpoint beside it), checkpoint index
  analysis    ops that touch files or run Python; signatures that write state
  transforms  placeholders, pruning, Grappler, tables, savers, constants as variables
  freeze      stage 2: SavedModel -> frozen GraphDef (streaming, in memory, TF2)
  export      stage 3: frozen GraphDef -> serving SavedModel; checkpoint -> serving SavedModel
  verify      loaders, inputs, comparison of two models
  demo        the recommendation model model_gen.py trains, and its parameter-server cluster

Rules of dependency, checked by tests/freezerlib/test_layers.py, which parses the imports:
- imports run one way: scripts -> stages (freeze, export, verify, demo) -> transforms and
  analysis -> formats -> core;
- no stage imports another stage, and transforms and analysis do not import each other;
- nothing here imports absl's flags or a script;
- core and formats never import TensorFlow when imported (the checkpoint path starts without
  it); elsewhere TensorFlow may be imported at module level;
- no import cycles.
"""

# First, before anything imports TensorFlow: keeps its start-up chatter off stderr, where the
# scripts promise one line per error (see core/lean_tf.py).
from freezerlib.core import lean_tf as _lean_tf  # noqa: F401  # imported for its side effect
