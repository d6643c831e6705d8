"""The package's rules of dependency, read from the imports themselves (see freezerlib/__init__)."""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = REPO / 'freezerlib'
SCRIPTS = {p.stem for p in REPO.glob('*.py')}
# Lower number: lower layer. Stages share a number but may not import each other.
LAYER = {'core': 0, 'formats': 1, 'analysis': 2, 'transforms': 2, 'freeze': 3, 'export': 3,
         'verify': 3, 'demo': 3}


def _modules():
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(REPO).with_suffix('').parts
    if parts[-1] == '__init__':
      parts = parts[:-1]
    yield '.'.join(parts), path


def _imports(path):
  """Every module name `path` imports, at any depth of its code."""
  names = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.extend(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.append(node.module)
      names.extend('%s.%s' % (node.module, a.name) for a in node.names)
  return names


def _subpackage(module):
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else None


MODULES = dict(_modules())


def _package_imports(path):
  out = set()
  for name in _imports(path):
    while name and name not in MODULES:
      name = name.rpartition('.')[0]
    if name and name != 'freezerlib':
      out.add(name)
  return out


@pytest.mark.parametrize('module', sorted(MODULES))
def test_imports_run_one_way(module):
  here = _subpackage(module)
  if here is None:
    return  # freezerlib/__init__: the docstring and the first import of core.lean_tf
  for imported in _package_imports(MODULES[module]):
    there = _subpackage(imported)
    if there == here or there is None:
      continue
    assert LAYER[there] < LAYER[here], '%s (%s) imports %s (%s)' % (module, here, imported, there)


@pytest.mark.parametrize('module', sorted(MODULES))
def test_no_flags_and_no_scripts(module):
  for name in _imports(MODULES[module]):
    assert name not in ('absl.flags', 'absl.app') and not name.startswith('absl.flags'), (
        module, name)
    assert name.split('.')[0] not in SCRIPTS, '%s imports the script %s' % (module, name)


def test_no_import_cycles():
  graph = {m: _package_imports(p) - {m} for m, p in MODULES.items()}
  state = {}

  def visit(m, stack):
    state[m] = 'open'
    for n in graph[m]:
      if state.get(n) == 'open':
        raise AssertionError('import cycle: %s' % ' -> '.join(stack + [m, n]))
      if n not in state:
        visit(n, stack + [m])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [])


def test_core_and_formats_import_without_tensorflow():
  lower = sorted(m for m in MODULES if _subpackage(m) in ('core', 'formats'))
  code = ('import sys\nsys.path.insert(0, %r)\n' % str(REPO) +
          ''.join('import %s\n' % m for m in lower) +
          'loaded = [m for m in sys.modules if m == "numpy" or m.startswith("tensorflow.python")]\n'
          'print(sorted(loaded))\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        check=True, timeout=120)
  assert proc.stdout.strip() == '[]', proc.stdout
  assert len(lower) >= 9
