"""A tf.Example parse op reading only some of its features.

ParseExample and ParseExampleV2 list their features by kind (sparse, dense, ragged), keys as
constants, and their outputs flat, kind by kind (sparse indices, values, shapes; dense values;
ragged values, row splits). Dropping a feature rewrites the keys, the type and shape
attributes and the dense defaults, and renumbers every consumer's output index.
"""

from freezerlib.core import graphs
from freezerlib.core import lean_tf
from freezerlib.core.lean_tf import types_pb2

PARSE_OPS = frozenset({'ParseExample', 'ParseExampleV2'})


def _const_strings(name, values, taken):
  node = lean_tf.NodeDef(name=graphs.unique_name(name, taken), op='Const')
  node.attr['dtype'].type = types_pb2.DT_STRING
  tensor = node.attr['value'].tensor
  tensor.dtype = types_pb2.DT_STRING
  tensor.tensor_shape.dim.add().size = len(values)
  tensor.string_val.extend(v.encode() for v in values)
  return node


def _strings_of(nodes, name):
  node = nodes.get(graphs.node_name(name))
  if node is None or node.op != 'Const':
    return None
  return [v.decode() for v in node.attr['value'].tensor.string_val]


def trim(graph_def, signatures, new_names, placeholder, taken):
  """Keeps in each copied parse op the features some signature output needs; removes the
  copied nodes nothing needs. In place.

  Args:
    graph_def: the graph with the copied reader functions (modified).
    signatures: key -> SignatureDef fed at the new input.
    new_names: names of the copied nodes (the only ones rewritten or removed).
    placeholder: the new input's node (kept though nothing computes it).
    taken: node names in use; new ones are added.

  Returns:
    (feature names parsed, names left out, names left out that the training spec required).
  """
  needed = set()
  for sig in signatures.values():
    needed |= graphs.computed_tensors(graph_def, sig)
    needed |= {(graphs.node_name(t), None) for t in graphs.signature_tensors(sig, 'outputs')}
  needed_nodes = {k[0] for k in needed}
  nodes = {n.name: n for n in graph_def.node}
  kept_features, dropped, required = [], [], []
  remaps = {}
  extra = []
  for name in sorted(new_names):
    node = nodes[name]
    if node.op not in PARSE_OPS or name not in needed_nodes:
      continue
    used = {k[1] for k in needed if k[0] == name and k[1] is not None}
    plan = _parse_layout(nodes, node)
    if plan is None:
      continue
    keep = {kind: [i for i, f in enumerate(feats) if any(o in used for o in f['outputs'])]
            for kind, feats in plan.items()}
    for kind, feats in plan.items():
      for i, f in enumerate(feats):
        if i in keep[kind]:
          kept_features.append(f['key'])
        else:
          dropped.append(f['key'])
          if f.get('required'):
            required.append(f['key'])
    remaps[name], new_consts = _rewrite_parse(node, plan, keep, taken)
    extra.extend(new_consts)
  graph_def.node.extend(extra)
  for node in graph_def.node:
    for i, graph_input in enumerate(node.input):
      key = graphs.input_key(graph_input)
      if key is not None and key[0] in remaps and key[1] in remaps[key[0]]:
        node.input[i] = '%s:%d' % (key[0], remaps[key[0]][key[1]])
  # Copied nodes nothing needs (the label's outputs, the reader's own bookkeeping) go now:
  # some read parse outputs that no longer exist.
  keep_names = needed_nodes | {n.name for n in extra} | {placeholder}
  survivors = [n for n in graph_def.node if n.name not in new_names or n.name in keep_names]
  del graph_def.node[:]
  graph_def.node.extend(survivors)
  return kept_features, dropped, required


def _parse_layout(nodes, node):
  """{'sparse'|'dense'|'ragged': [{'key', 'outputs', 'required'}]} of a parse node, outputs
  as flat indices; None when its keys are not constants."""
  attr = node.attr
  inputs = graphs.data_inputs(node)
  if node.op == 'ParseExample':
    ns, nd = attr['Nsparse'].i, attr['Ndense'].i
    keys = [_strings_of(nodes, i) for i in inputs[2:2 + ns + nd]]
    if any(k is None or len(k) != 1 for k in keys):
      return None
    sparse_keys, dense_keys, ragged_keys = [k[0] for k in keys[:ns]], [
        k[0] for k in keys[ns:]], []
    defaults = inputs[2 + ns + nd:]
  else:
    keys = [_strings_of(nodes, i) for i in inputs[2:5]]
    if any(k is None for k in keys):
      return None
    sparse_keys, dense_keys, ragged_keys = keys
    ns, nd = len(sparse_keys), len(dense_keys)
    defaults = inputs[5:]
  nr = len(ragged_keys)
  plan = {'sparse': [], 'dense': [], 'ragged': []}
  for i, key in enumerate(sparse_keys):
    plan['sparse'].append({'key': key, 'outputs': [i, ns + i, 2 * ns + i]})
  for j, key in enumerate(dense_keys):
    default = nodes.get(graphs.node_name(defaults[j])) if j < len(defaults) else None
    required = (default is not None and default.op == 'Const' and
                any(d.size == 0 for d in default.attr['value'].tensor.tensor_shape.dim))
    plan['dense'].append({'key': key, 'outputs': [3 * ns + j], 'required': required})
  for r, key in enumerate(ragged_keys):
    plan['ragged'].append({'key': key, 'outputs': [3 * ns + nd + r, 3 * ns + nd + nr + r]})
  return plan


def _rewrite_parse(node, plan, keep, taken):
  """Rewrites parse `node` to read only the kept features; returns ({old output: new output},
  new Const nodes)."""
  ks, kd, kr = keep['sparse'], keep['dense'], keep['ragged']
  ns, nd, nr = len(plan['sparse']), len(plan['dense']), len(plan['ragged'])
  remap = {}
  for new, old in enumerate(ks):
    for block in range(3):
      remap[block * ns + old] = block * len(ks) + new
  for new, old in enumerate(kd):
    remap[3 * ns + old] = 3 * len(ks) + new
  for new, old in enumerate(kr):
    remap[3 * ns + nd + old] = 3 * len(ks) + len(kd) + new
    remap[3 * ns + nd + nr + old] = 3 * len(ks) + len(kd) + len(kr) + new
  inputs = graphs.data_inputs(node)
  controls = [i for i in node.input if i.startswith('^')]
  attr = node.attr
  new_consts = []
  if node.op == 'ParseExample':
    defaults = inputs[2 + ns + nd:]
    new_inputs = (inputs[:2] + [inputs[2 + i] for i in ks] + [inputs[2 + ns + j] for j in kd] +
                  [defaults[j] for j in kd])
    attr['Nsparse'].i, attr['Ndense'].i = len(ks), len(kd)
  else:
    defaults = inputs[5:]
    consts = [_const_strings(node.name + '/' + kind + '_keys_served',
                             [plan[kind][i]['key'] for i in keep[kind]], taken)
              for kind in ('sparse', 'dense', 'ragged')]
    new_consts.extend(consts)
    new_inputs = inputs[:2] + [c.name for c in consts] + [defaults[j] for j in kd]
    attr['num_sparse'].i = len(ks)
    for name, kept in (('ragged_value_types', kr), ('ragged_split_types', kr)):
      values = list(attr[name].list.type)
      del attr[name].list.type[:]
      attr[name].list.type.extend(values[i] for i in kept)
  for name, kept in (('sparse_types', ks), ('Tdense', kd)):
    values = list(attr[name].list.type)
    del attr[name].list.type[:]
    attr[name].list.type.extend(values[i] for i in kept)
  shapes = [s for s in attr['dense_shapes'].list.shape]
  del attr['dense_shapes'].list.shape[:]
  for j in kd:
    attr['dense_shapes'].list.shape.add().CopyFrom(shapes[j])
  del node.input[:]
  node.input.extend(new_inputs + controls)
  return remap, new_consts
