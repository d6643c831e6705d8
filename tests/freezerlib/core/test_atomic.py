"""core/atomic: outputs appear whole or not at all; TF Serving's version layout."""

import os
import pathlib
import uuid

import pytest

from freezerlib.core import atomic
from freezerlib.core import errors
from freezerlib.core import files

DEAD_PID = 99999999  # above any pid_max: os.kill says no such process


def _write_model(directory, marker=b'x'):
  os.makedirs(os.path.join(directory, 'variables'))
  pathlib.Path(directory, 'variables', 'variables.index').write_bytes(b'index')
  pathlib.Path(directory, 'saved_model.pb').write_bytes(marker)


def test_check_output_free(tmp_path):
  (tmp_path / 'out.pb').write_bytes(b'x')
  with pytest.raises(errors.UserError, match='out.pb already exists; pass --overwrite'):
    atomic.check_output_free(str(tmp_path / 'out.pb'), overwrite=False)
  atomic.check_output_free(str(tmp_path / 'out.pb'), overwrite=True)
  atomic.check_output_free(str(tmp_path / 'new.pb'), overwrite=False)
  with pytest.raises(errors.UserError, match='out.pb is not a directory'):
    atomic.check_output_free(str(tmp_path / 'out.pb' / 'model'), overwrite=True)
  (tmp_path / 'base' / '7').mkdir(parents=True)
  with pytest.raises(errors.UserError, match='base/7 already exists'):
    atomic.check_output_free(str(tmp_path / 'base'), False, version=7)
  atomic.check_output_free(str(tmp_path / 'base'), False, version=8)
  atomic.check_output_free(str(tmp_path / 'base'), False, version='auto')
  with pytest.raises(errors.UserError, match='it is a file, not a model base directory'):
    atomic.check_output_free(str(tmp_path / 'out.pb'), True, version='auto')


def test_atomic_output_appears_whole(tmp_path):
  target = tmp_path / 'sub' / 'model'
  with atomic.atomic_output(str(target)) as tmp:
    assert not target.exists() and tmp != str(target)
    assert os.path.basename(tmp).startswith('.model.tmp-')  # hidden, beside the target
    _write_model(tmp)
  assert (target / 'saved_model.pb').read_bytes() == b'x'
  assert os.listdir(tmp_path / 'sub') == ['model']  # nothing else left beside it
  assert str(target) in atomic.completed_outputs()


def test_failure_leaves_the_target_as_it_was(tmp_path):
  target = tmp_path / 'model'
  with pytest.raises(ZeroDivisionError):
    with atomic.atomic_output(str(target)) as tmp:
      _write_model(tmp)
      raise ZeroDivisionError
  assert os.listdir(tmp_path) == []
  _write_model(str(target), b'old')
  with pytest.raises(ZeroDivisionError):
    with atomic.atomic_output(str(target), overwrite=True) as tmp:
      _write_model(tmp, b'new')
      raise ZeroDivisionError
  assert (target / 'saved_model.pb').read_bytes() == b'old'
  assert os.listdir(tmp_path) == ['model']


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path):
  target = tmp_path / 'model'
  _write_model(str(target), b'old')
  (target / 'stale.txt').write_bytes(b'only in the old model')
  with pytest.raises(errors.UserError, match='already exists; pass --overwrite'):
    with atomic.atomic_output(str(target)):
      raise AssertionError('not reached: refused before the block runs')
  with atomic.atomic_output(str(target), overwrite=True) as tmp:
    _write_model(tmp, b'new')
  assert (target / 'saved_model.pb').read_bytes() == b'new'
  assert not (target / 'stale.txt').exists()
  assert os.listdir(tmp_path) == ['model']
  (tmp_path / 'f.pb').write_bytes(b'old')  # a file is replaced by a rename
  with atomic.atomic_output(str(tmp_path / 'f.pb'), overwrite=True) as tmp:
    pathlib.Path(tmp).write_bytes(b'new')
  assert (tmp_path / 'f.pb').read_bytes() == b'new'


def test_write_errors_become_one_user_error(tmp_path):
  (tmp_path / 'file').write_bytes(b'x')
  with pytest.raises(errors.UserError, match='is not a directory'):
    with atomic.atomic_output(str(tmp_path / 'file' / 'model')):
      pass
  with pytest.raises(errors.UserError, match=r'cannot write .*out\.pb: .*No such file'):
    with atomic.atomic_output(str(tmp_path / 'out.pb')) as tmp:
      open(os.path.join(tmp, 'inside', 'a'), 'wb')


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
  target = str(tmp_path / 'model')
  host = atomic._HOST
  stale = tmp_path / ('.model.tmp-%s-%d-0000' % (host, DEAD_PID))
  running = tmp_path / ('.model.tmp-%s-%d-1111' % (host, os.getpid()))
  other_host = tmp_path / ('.model.tmp-elsewhere-%d-2222' % DEAD_PID)
  for path in (stale, running, other_host):
    path.mkdir()
  stale_file = tmp_path / ('.model.tmp-%s-%d-3333' % (host, DEAD_PID))
  stale_file.write_bytes(b'half a graph')
  assert sorted(atomic.remove_stale_temps(target)) == sorted([str(stale), str(stale_file)])
  assert sorted(os.listdir(tmp_path)) == sorted([running.name, other_host.name])


def test_remote_directory_is_copied_with_the_marker_files_last(monkeypatch):
  base = 'ram://atomic_%s' % uuid.uuid4().hex[:8]
  target = base + '/model'
  copied = []
  real_copy = files.copy

  def recording_copy(src, dst, overwrite=False):
    copied.append(dst[len(target):] if dst.startswith(target) else None)
    real_copy(src, dst, overwrite)

  monkeypatch.setattr(files, 'copy', recording_copy)
  try:
    for marker in (b'old', b'new'):
      with atomic.atomic_output(target, overwrite=True) as tmp:
        files.makedirs(tmp + '/variables')
        for name in ('saved_model.pb', 'variables/variables.index', 'a.txt'):
          with files.open_file(tmp + '/' + name, 'wb') as f:
            f.write(marker)
    # ram:// renames no directory: each output was copied file by file, saved_model.pb last.
    assert copied[-3:] == ['/a.txt', '/variables/variables.index', '/saved_model.pb']
    assert files.read(target + '/saved_model.pb') == b'new'
    assert sorted(files.listdir(base)) == ['model']
  finally:
    files.rmtree(base)


def test_versioned_output_is_never_visible_under_a_number_while_written(tmp_path):
  base = tmp_path / 'model'
  with atomic.versioned_output(str(base), 'auto') as out:
    os.makedirs(out.tmp)
    (pathlib.Path(out.tmp) / 'saved_model.pb').write_bytes(b'x')
    assert atomic.numeric_versions(str(base)) == []  # TF Serving's poller sees nothing
    assert os.path.basename(out.tmp).startswith('.')
  assert out.path == str(base / '1') and atomic.numeric_versions(str(base)) == [1]
  with pytest.raises(ZeroDivisionError):
    with atomic.versioned_output(str(base), 'auto') as out:
      os.makedirs(out.tmp)
      raise ZeroDivisionError
  assert sorted(os.listdir(base)) == ['1']


def test_auto_version_takes_the_next_number_free_when_it_moves_in(tmp_path, monkeypatch):
  base = tmp_path / 'model'
  for version in ('1', '4'):
    _write_model(str(base / version))
  (base / 'notes').mkdir()
  assert atomic.numeric_versions(str(base)) == [1, 4]
  # Another run took 5 after this one looked: it gets 6.
  seen = []
  real = atomic.numeric_versions

  def racing(path):
    versions = real(path)
    if not seen:
      _write_model(str(base / '5'))
    seen.append(versions)
    return versions

  monkeypatch.setattr(atomic, 'numeric_versions', racing)
  with atomic.versioned_output(str(base), 'auto') as out:
    _write_model(out.tmp)
  assert out.path == str(base / '6')
  assert sorted(os.listdir(base)) == ['1', '4', '5', '6', 'notes']


def test_numbered_version_and_its_refusals(tmp_path):
  base = tmp_path / 'model'
  with atomic.versioned_output(str(base), 3) as out:
    _write_model(out.tmp)
  assert out.path == str(base / '3') and (base / '3' / 'saved_model.pb').exists()
  with pytest.raises(errors.UserError, match='model/3 already exists'):
    with atomic.versioned_output(str(base), 3):
      pass
  (tmp_path / 'file').write_bytes(b'x')
  with pytest.raises(errors.UserError, match='not a model base directory'):
    with atomic.versioned_output(str(tmp_path / 'file'), 'auto'):
      pass
  assert atomic.numeric_versions(str(tmp_path / 'missing')) == []


@pytest.mark.parametrize('text,expected', [('auto', 'auto'), ('7', 7), (None, None)])
def test_parse_version(text, expected):
  assert atomic.parse_version(text) == expected


@pytest.mark.parametrize('text', ['0', '-1', 'latest', '1.5'])
def test_parse_version_refuses(text):
  with pytest.raises(errors.UserError, match='--version=%s' % text):
    atomic.parse_version(text)
