"""core/files: local paths through the OS, remote ones (ram:// here) through TensorFlow."""

import io
import os
import uuid

import pytest
import tensorflow as tf

from freezerlib.core import files


@pytest.fixture
def ram():
  """A fresh ram:// directory (TensorFlow's in-memory file system), removed afterwards."""
  root = 'ram://files_test_%s' % uuid.uuid4().hex[:8]
  files.makedirs(root)
  yield root
  files.rmtree(root)


@pytest.mark.parametrize('path,scheme,remote', [
    ('gs://bucket/x', 'gs', True), ('ram://a', 'ram', True), ('file:///tmp/a', 'file', True),
    ('/tmp/a', '', False), ('relative/a', '', False)])
def test_scheme_and_is_remote(path, scheme, remote):
  assert files.scheme(path) == scheme
  assert files.is_remote(path) is remote


def test_path_names_keep_the_scheme():
  assert files.join('gs://bucket/', '/models/', 'm1') == 'gs://bucket/models/m1'
  assert files.join('/tmp', 'a', 'b.pb') == '/tmp/a/b.pb'
  assert files.parent_dir('gs://bucket/models/m1/') == 'gs://bucket/models'
  assert files.parent_dir('/a') == '' and files.parent_dir('name') == ''
  assert files.parent_dir('dir/name') == 'dir'
  assert files.basename('hdfs://nn/a/b/') == 'b' and files.basename('x.pb') == 'x.pb'


def test_local_operations(tmp_path):
  root = str(tmp_path)
  files.makedirs(root + '/a/b')
  files.makedirs(root + '/a/b')  # exists already: fine
  with files.open_file(root + '/a/f', 'wb') as f:
    f.write(b'12345')
  assert files.read(root + '/a/f') == b'12345' and files.size(root + '/a/f') == 5
  assert files.isdir(root + '/a') and not files.isdir(root + '/a/f')
  assert sorted(files.listdir(root + '/a')) == ['b', 'f']
  assert [(d[len(root):], sorted(s), sorted(n)) for d, s, n in files.walk(root)] == [
      ('', ['a'], []), ('/a', ['b'], ['f']), ('/a/b', [], [])]
  files.copy(root + '/a/f', root + '/a/g')
  assert files.read(root + '/a/g') == b'12345'
  with pytest.raises(FileExistsError):
    files.copy(root + '/a/f', root + '/a/g')
  with files.open_file(root + '/a/h', 'wb') as f:
    f.write(b'new')
  files.copy(root + '/a/h', root + '/a/g', overwrite=True)
  assert files.read(root + '/a/g') == b'new'
  with pytest.raises(FileExistsError):
    files.rename(root + '/a/f', root + '/a/g')
  files.rename(root + '/a/f', root + '/a/g', overwrite=True)
  assert files.read(root + '/a/g') == b'12345' and not files.exists(root + '/a/f')
  files.rename(root + '/a/g', root + '/a/moved')
  assert sorted(files.listdir(root + '/a')) == ['b', 'h', 'moved']
  files.remove(root + '/a/h')
  files.rmtree(root + '/a')
  assert not files.exists(root + '/a')
  with pytest.raises(FileNotFoundError):
    files.size(root + '/missing')


def test_remote_operations_and_their_errors(ram):
  files.makedirs(ram + '/a/b')
  with files.open_file(ram + '/a/f', 'wb') as f:
    f.write(b'123')
  files.copy(ram + '/a/f', ram + '/a/g')
  assert tf.io.gfile.GFile(ram + '/a/g', 'rb').read() == b'123'
  assert sorted(files.listdir(ram + '/a')) == ['b', 'f', 'g']
  assert list(files.walk(ram)) == [(ram, ['a'], []), (ram + '/a', ['b'], ['f', 'g']),
                                   (ram + '/a/b', [], [])]
  # TensorFlow's errors become OSErrors: FileNotFoundError, or FileError with its message.
  with pytest.raises(files.FileError, match='already exists'):
    files.rename(ram + '/a/f', ram + '/a/g')
  with pytest.raises(files.FileError, match='already exists'):
    files.copy(ram + '/a/f', ram + '/a/g')
  with pytest.raises(FileNotFoundError):
    files.size(ram + '/missing')
  with pytest.raises(FileNotFoundError):
    files.remove(ram + '/missing')
  files.rename(ram + '/a/f', ram + '/a/g', overwrite=True)
  assert files.read(ram + '/a/g') == b'123' and not files.exists(ram + '/a/f')
  files.remove(ram + '/a/g')
  assert sorted(files.listdir(ram + '/a')) == ['b']


def test_is_error_knows_oserrors_and_tensorflows_op_errors():
  assert files.is_error(FileNotFoundError('x')) and files.is_error(files.FileError('x'))
  assert files.is_error(tf.errors.NotFoundError(None, None, 'x'))
  assert not files.is_error(ValueError('x')) and not files.is_error(KeyError('x'))


def test_copy_range_in_kernel_and_through_memory(tmp_path):
  src = tmp_path / 'src'
  data = os.urandom(3 << 20)
  src.write_bytes(data)
  with open(src, 'rb') as s, open(tmp_path / 'dst', 'wb') as d:
    d.write(b'head')
    files.copy_range(s, 5, d, 2 << 20)
    d.write(b'tail')
  assert (tmp_path / 'dst').read_bytes() == b'head' + data[5:5 + (2 << 20)] + b'tail'
  out, counted = io.BytesIO(), []  # no file descriptor: copied through memory
  with open(src, 'rb') as s:
    files.copy_range(s, 7, out, 1 << 20, chunk_bytes=100000, progress=counted.append)
    assert out.getvalue() == data[7:7 + (1 << 20)] and sum(counted) == 1 << 20
    with pytest.raises(EOFError):
      files.copy_range(s, len(data) - 10, io.BytesIO(), 20)


def test_remote_paths_go_through_tensorflows_file_systems():
  root = 'ram://fileio_test'
  files.makedirs(root + '/a')
  with files.open_file(root + '/a/f', 'wb') as f:
    f.write(b'12345')
  assert files.exists(root + '/a/f') and files.isdir(root + '/a')
  assert files.size(root + '/a/f') == 5
  assert tf.io.gfile.GFile(root + '/a/f', 'rb').read() == b'12345'
  with files.open_file(root + '/a/f', 'rb') as f:
    out = io.BytesIO()
    files.copy_range(f, 1, out, 3)
    assert out.getvalue() == b'234'
  with pytest.raises(FileNotFoundError):
    files.open_file(root + '/missing', 'rb')
  files.rmtree(root)
  assert not files.exists(root + '/a/f')


def test_copy_between_local_and_remote(tmp_path, ram):
  (tmp_path / 'local').write_bytes(b'abc' * 1000)
  files.copy(str(tmp_path / 'local'), ram + '/remote')
  assert files.read(ram + '/remote') == b'abc' * 1000
  files.copy(ram + '/remote', str(tmp_path / 'back'))
  assert (tmp_path / 'back').read_bytes() == b'abc' * 1000


@pytest.mark.parametrize('workers', [1, 2, 3])
@pytest.mark.parametrize('inspected', [False, True])
def test_copy_ranges_puts_each_range_in_its_place(tmp_path, workers, inspected):
  sources = [tmp_path / 'a', tmp_path / 'b']
  data = [os.urandom(3 << 20), os.urandom(100000)]
  for path, content in zip(sources, data):
    path.write_bytes(content)
  ranges = [(0, 5, 2 << 20), (1, 7, 5000), (0, (2 << 20) + 5, 1000), (1, 0, 0), (1, 99000, 1000)]
  # Ranges dealt round-robin to `workers` output files, each packed from offset 0.
  jobs = [[] for _ in range(workers)]
  offsets, expected, seen = [0] * workers, [b''] * workers, {}
  for k, (source, start, length) in enumerate(ranges):
    inspect = (lambda piece, k=k: seen.setdefault(k, bytearray()).extend(piece)) if inspected \
        else None
    w = k % workers
    jobs[w].append((str(sources[source]), start, length, offsets[w], inspect))
    expected[w] += data[source][start:start + length]
    offsets[w] += length
  counted = []
  outs = [open(tmp_path / ('out%d' % w), 'wb') for w in range(workers)]
  try:
    files.copy_ranges(list(zip(outs, jobs)), piece_bytes=65536, progress=counted.append)
    assert [out.tell() for out in outs] == [len(e) for e in expected]
  finally:
    for out in outs:
      out.close()
  assert [(tmp_path / ('out%d' % w)).read_bytes() for w in range(workers)] == expected
  assert sum(counted) == sum(len(e) for e in expected)
  if inspected:
    assert {k: bytes(v) for k, v in seen.items()} == {
        k: data[s][a:a + n] for k, (s, a, n) in enumerate(ranges) if n}
  with open(tmp_path / 'out', 'wb') as out, pytest.raises(EOFError, match='bytes short'):
    files.copy_ranges([(out, [(str(sources[1]), 99990, 20, 0, None)] + jobs[0])])


def test_copy_ranges_without_a_destination_reads_and_inspects_only(tmp_path):
  source = tmp_path / 'a'
  data = os.urandom(3 << 20)
  source.write_bytes(data)
  seen = [bytearray(), bytearray()]
  shares = [(None, [(str(source), 0, 2 << 20, 0, seen[0].extend)]),
            (None, [(str(source), 2 << 20, 1 << 20, 0, seen[1].extend)])]
  counted = []
  files.copy_ranges(shares, piece_bytes=65536, progress=counted.append)
  assert bytes(seen[0]) + bytes(seen[1]) == data and sum(counted) == len(data)
  assert os.listdir(tmp_path) == ['a']  # nothing written


def test_move_pieces_reads_ahead_in_a_pool_and_keeps_the_order():
  import concurrent.futures
  data = bytes(range(256)) * 40
  seen, out = [], bytearray(len(data))

  def read(source, offset, n):
    return source[offset:offset + n]

  def write(piece, at):
    out[at:at + len(piece)] = piece

  pieces = [(data, k, 100, k, seen.append) for k in range(0, len(data), 100)]
  pieces[-1] = (data, pieces[-1][1], len(data) - pieces[-1][1], pieces[-1][3], seen.append)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    files.move_pieces(pieces, read, write, pool=pool, depth=4)
  assert bytes(out) == data and b''.join(seen) == data


def test_move_pieces_raises_the_first_failure_in_order():
  import concurrent.futures

  def read(source, offset, n):
    if offset >= 300:
      raise EOFError('short at %d' % offset)
    return b'x' * n

  got = []
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    with pytest.raises(EOFError, match='short at 300'):
      files.move_pieces([(None, k, 100, k, None) for k in range(0, 1000, 100)], read,
                        lambda piece, at: got.append(at), pool=pool, depth=3)
  assert got == [0, 100, 200]


def test_glob_local(tmp_path):
  for name in ('a.tfrecord', 'b.tfrecord', 'c.txt'):
    (tmp_path / name).write_bytes(b'')
  assert files.glob(str(tmp_path / '*.tfrecord')) == [str(tmp_path / 'a.tfrecord'),
                                                      str(tmp_path / 'b.tfrecord')]
