"""The five scripts as console commands (pyproject.toml's [project.scripts], `pip install .`).

Each command runs its script as `python SCRIPT.py` does: as `__main__`, so its flags, --help and
exit codes are the script's own.
"""

import pathlib
import runpy


def _run(script):
  runpy.run_path(str(pathlib.Path(__file__).with_name(script)), run_name='__main__')


def model_gen():
  _run('model_gen.py')


def freezer():
  _run('freezer.py')


def optimize_from_pb():
  _run('optimize_from_pb.py')


def optimize_from_pb_test():
  _run('optimize_from_pb_test.py')


def optimize_from_ckpt():
  _run('optimize_from_ckpt.py')
