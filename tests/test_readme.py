"""The documents' commands, as users copy them: every `python SCRIPT ...` line of the shell
blocks of README.md, docs/*.md and benchmarks/README.md names a script that exists and flags
that script defines, and nothing else (a stray `\\ ` in a continuation, a renamed flag, a
misspelt one: each would end a copied command in a usage error)."""

import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

DOCUMENTS = ['README.md', 'benchmarks/README.md'] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))


def _commands(document):
  """(script, arguments) of each python command in `document`'s shell blocks."""
  path = os.path.join(REPO, document)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    text = f.read()
  found = []
  for block in re.findall(r'```(?:sh|bash|shell)\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      words = shlex.split(line, comments=True)
      for k, word in enumerate(words):
        if word.endswith('.py') and k and words[k - 1].endswith('python'):
          found.append((word, words[k + 1:]))
          break
  return found


README_COMMANDS = _commands('README.md')
COMMANDS = [(d, s, a) for d in DOCUMENTS for s, a in _commands(d)]


@functools.lru_cache(maxsize=None)
def _flags(script):
  """The flags `script` defines, absl's own included (from its --helpfull)."""
  proc = subprocess.run([sys.executable, script, '--helpfull'], cwd=REPO, capture_output=True,
                        text=True, timeout=120, check=False)
  # The scripts exit 0 (utils.parse_flags); the benchmarks keep absl's own --helpfull, exit 1.
  assert proc.returncode == (1 if script.startswith('benchmarks/') else 0), proc.stderr[-2000:]
  flags = set()
  for boolean, name in re.findall(r'^\s+--(\[no\])?([\w.]+):', proc.stdout, re.M):
    flags.add(name)
    if boolean:
      flags.add('no' + name)
  return flags


def test_the_readme_has_a_command_for_each_script():
  assert {s for s, _ in README_COMMANDS} >= {'model_gen.py', 'freezer.py', 'optimize_from_pb.py',
                                      'optimize_from_pb_test.py', 'optimize_from_ckpt.py'}


@pytest.mark.parametrize('document,script,args', COMMANDS,
                         ids=['%s-%s-%d' % (c[0], c[1], k) for k, c in enumerate(COMMANDS)])
def test_documented_command_names_only_flags_its_script_defines(document, script, args):
  assert os.path.exists(os.path.join(REPO, script)), script
  stray = [a for a in args if not a.startswith('--')]
  assert not stray, '%s: arguments that are not flags: %s' % (document, stray)
  unknown = [a for a in args if a[2:].split('=', 1)[0] not in _flags(script)]
  assert not unknown, '%s: flags %s does not define: %s' % (document, script, unknown)
