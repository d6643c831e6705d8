"""The unit tests mirror the package: freezerlib/<sub>/<module>.py is tested by
tests/freezerlib/<sub>/test_<module>.py (a sub-package's own __init__ by test_init.py)."""

import pathlib

import pytest

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = HERE.parents[1] / 'freezerlib'
# Tested end to end only: they start processes and clusters (tests/test_model_gen_*.py).
END_TO_END_ONLY = {'demo/cluster.py', 'demo/tf2_cluster.py'}


def _modules():
  for path in sorted(PACKAGE.glob('*/*.py')):
    name = str(path.relative_to(PACKAGE))
    if path.name == '__init__.py' and not path.read_text().count('\ndef '):
      continue  # a docstring only
    if name not in END_TO_END_ONLY:
      yield name


@pytest.mark.parametrize('module', list(_modules()))
def test_every_module_has_its_unit_test_file(module):
  sub, name = module.split('/')
  test = HERE / sub / ('test_%s' % ('init.py' if name == '__init__.py' else name))
  assert test.is_file(), '%s has no unit tests at %s' % (module, test.relative_to(HERE.parent))
  assert 'def test_' in test.read_text()


def test_the_exceptions_still_exist():
  assert all((PACKAGE / m).is_file() for m in END_TO_END_ONLY)
  assert len(list(_modules())) >= 30
