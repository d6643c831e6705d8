"""S3 (and S3-compatible stores: MinIO, Ceph RGW), GCS and HDFS through pyarrow.fs: the stores,
made from the environment, and the file operations on them (core/files dispatches here).

TensorFlow 2.21 has no `s3://` and no `hdfs://` file system, and its `gs://` one has its endpoint
compiled in, so these schemes go to pyarrow's file systems (C++: ranged reads run without the
interpreter lock). pyarrow is imported on the first remote path only: a local run never loads it.

Each store is configured from its ecosystem's usual environment variables, read when the store
is first used:
- S3: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (e.g. http://127.0.0.1:9000 for MinIO or a Ceph
  RGW; the scheme picks http or https), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (else the AWS
  SDK's own chain: ~/.aws, instance metadata), AWS_REGION or AWS_DEFAULT_REGION.
- GCS: STORAGE_EMULATOR_HOST (an emulator such as fake-gcs-server: anonymous access) or
  CLOUD_STORAGE_EMULATOR_ENDPOINT; otherwise Google's default credentials.
- HDFS: pyarrow's HadoopFileSystem, which needs a Java runtime (JAVA_HOME), libhdfs
  (ARROW_LIBHDFS_DIR or HADOOP_HOME) and CLASSPATH (`hadoop classpath --glob`).

Retries are bounded so that a store that cannot answer fails in seconds: S3 makes at most
FREEZER_STORAGE_ATTEMPTS attempts (default 3, AwsStandardS3RetryStrategy) with a 5 s connect
timeout; GCS retries transient errors for at most FREEZER_STORAGE_RETRY_SECONDS (default 3)

Errors become one line naming the path and the cause (`error`, `describe`).
"""

import collections
import os
import threading

from freezerlib.core import errors

SCHEMES = ('s3', 'gs', 'hdfs', 'viewfs')  # core/files.STORE_SCHEMES (it dispatches them here)
FileError = errors.FileError

_CACHE = {}
_LOCK = threading.Lock()


def handles(path):
  """Whether `path` goes to pyarrow (s3://, gs://, hdfs://, viewfs://)."""
  return path.split('://', 1)[0] in SCHEMES if '://' in path else False


def _endpoint(url):
  """(scheme, host[:port]) of an endpoint URL; 'https' when it names none."""
  url = url.strip().rstrip('/')
  if '://' in url:
    scheme, host = url.split('://', 1)
    return scheme, host
  return 'https', url


def _attempts():
  return max(1, int(os.environ.get('FREEZER_STORAGE_ATTEMPTS', '3')))


def _s3():
  from pyarrow import fs  # remote paths only
  kwargs = dict(connect_timeout=5,
                retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=_attempts()))
  endpoint = os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL')
  if endpoint:
    kwargs['scheme'], kwargs['endpoint_override'] = _endpoint(endpoint)
  key, secret = os.environ.get('AWS_ACCESS_KEY_ID'), os.environ.get('AWS_SECRET_ACCESS_KEY')
  if key and secret:
    kwargs['access_key'], kwargs['secret_key'] = key, secret
    if os.environ.get('AWS_SESSION_TOKEN'):
      kwargs['session_token'] = os.environ['AWS_SESSION_TOKEN']
  region = os.environ.get('AWS_REGION') or os.environ.get('AWS_DEFAULT_REGION')
  if region:
    kwargs['region'] = region
  elif endpoint:
    kwargs['region'] = 'us-east-1'  # S3-compatible stores: any region signs (no AWS lookup)
  return fs.S3FileSystem(**kwargs)


def _gcs():
  import datetime

  from pyarrow import fs  # remote paths only
  seconds = float(os.environ.get('FREEZER_STORAGE_RETRY_SECONDS', '3'))
  kwargs = dict(retry_time_limit=datetime.timedelta(seconds=seconds))
  emulator = (os.environ.get('STORAGE_EMULATOR_HOST') or
              os.environ.get('CLOUD_STORAGE_EMULATOR_ENDPOINT'))
  if emulator:
    kwargs['scheme'], kwargs['endpoint_override'] = _endpoint(
        emulator if '://' in emulator else 'http://' + emulator)
    kwargs['anonymous'] = True
  return fs.GcsFileSystem(**kwargs)


def _hdfs(scheme, netloc):
  from pyarrow import fs  # remote paths only
  host, _, port = netloc.partition(':')
  host = '%s://%s' % (scheme, host) if host else 'default'
  try:
    return fs.HadoopFileSystem(host, int(port) if port else (8020 if netloc else 0))
  except OSError as e:
    text = str(e)
    if 'libjvm' in text:
      missing = 'no Java runtime found (libjvm: set JAVA_HOME)'
    elif 'libhdfs' in text:
      missing = 'libhdfs not found (set ARROW_LIBHDFS_DIR or HADOOP_HOME)'
    else:
      missing = first_line(text)
    raise OSError('%s://%s needs a Hadoop client on this machine: %s; CLASSPATH must hold the '
                  "output of `hadoop classpath --glob`" % (scheme, netloc, missing)) from e


def filesystem(path):
  """(pyarrow FileSystem, the path inside it) for an s3://, gs:// or hdfs:// path.

  Raises:
    OSError: the file system cannot be set up (no Hadoop client, bad configuration).
  """
  scheme, rest = path.split('://', 1)
  if scheme == 's3':
    key, make, inner = ('s3',), _s3, rest.strip('/')
  elif scheme == 'gs':
    key, make, inner = ('gs',), _gcs, rest.strip('/')
  else:
    netloc, _, inner = rest.partition('/')
    key, make, inner = (scheme, netloc), lambda: _hdfs(scheme, netloc), '/' + inner.strip('/')
  with _LOCK:
    store = _CACHE.get(key)
    if store is None:
      store = _CACHE[key] = make()
  return store, inner


def reset():
  """Forgets the stores made so far, so the next use reads the environment again (tests)."""
  with _LOCK:
    _CACHE.clear()


def first_line(text):
  lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
  return lines[0] if lines else ''


# pyarrow's messages: "... AWS Error CODE during OPERATION operation: MESSAGE (Request ID...)",
# "google::cloud::Status(CODE: ... last message of MESSAGE error_info=...)". Compiled on the
# first error: local runs import this module too.
_AWS = r'AWS Error (\w+) during (\w+) operation: ?(.*?)(?: \(Request ID.*)?$'
_GOOGLE = r'Status\((\w+): (?:.*?last message of )?(.*?)(?: error_info=.*)?\)?$'


def describe(e, path=''):
  """The cause of pyarrow's error `e` on `path`, in a few words (one line)."""
  import re  # errors only
  text = first_line(e)
  if isinstance(e, FileNotFoundError):
    return 'no such file or directory'
  if 'Could not connect' in text or 'Couldn\'t connect' in text or 'CURL error [7]' in text \
      or 'Could not resolve' in text or 'curlCode: 6' in text:
    return 'cannot reach the endpoint %s (connection refused or host unknown)' % _endpoint_of(path)
  if 'Timeout' in text or 'timed out' in text or 'curlCode: 28' in text:
    return 'the endpoint %s did not answer in time' % _endpoint_of(path)
  match = re.search(_AWS, text)
  if match:
    code, message = match.group(1), match.group(3).strip()
    if code == 'NO_SUCH_BUCKET' or 'bucket does not exist' in message:
      return 'the bucket does not exist'
    if code in ('ACCESS_DENIED', 'INVALID_ACCESS_KEY_ID', 'SIGNATURE_DOES_NOT_MATCH',
                'UNRECOGNIZED_CLIENT', 'INVALID_CLIENT_TOKEN_ID') or 'Forbidden' in message:
      return ('access denied (%s): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY'
              % code.lower())
    return '%s (%s)' % (message or code.lower(), code.lower())
  if 'Bucket' in text and 'not found' in text:
    return 'the bucket does not exist'
  match = re.search(_GOOGLE, text)
  if match:
    code, message = match.group(1), match.group(2).strip()
    if code in ('PERMISSION_DENIED', 'UNAUTHENTICATED'):
      return 'access denied (%s): check the Google credentials' % code.lower()
    return '%s (%s)' % (message, code.lower())
  return text


def _endpoint_of(path):
  names = (('STORAGE_EMULATOR_HOST', 'CLOUD_STORAGE_EMULATOR_ENDPOINT') if path.startswith('gs:')
           else ('AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL'))
  for name in names:
    if os.environ.get(name):
      return os.environ[name]
  return 'of the store'


# ---------------------------------------------------------------------------------------------
# File operations on a store (core/files dispatches here for the SCHEMES), their errors as
# one-line OSErrors: FileNotFoundError for a missing path or bucket, FileError for the rest.


def _scheme(path):
  return path.split('://', 1)[0]


def _bucket(path):
  return path.split('://', 1)[1].split('/', 1)[0]


def _file_type():
  from pyarrow import fs
  return fs.FileType


def _exceptions():
  import pyarrow  # loaded already: a store was made
  return (OSError, pyarrow.lib.ArrowException)


def error(path, e):
  """pyarrow's error `e` on `path` as FileNotFoundError (naming a missing bucket) or
  FileError, one line naming the path and the cause."""
  if isinstance(e, FileNotFoundError):
    if _scheme(path) in ('s3', 'gs'):
      try:
        store, _ = filesystem(path)
        missing = store.get_file_info(_bucket(path)).type == _file_type().NotFound
      except Exception:  # the first error is the one to report
        missing = False
      if missing:
        return FileNotFoundError('%s: the bucket %s does not exist' % (path, _bucket(path)))
    return FileNotFoundError('%s: no such file or directory' % path)
  return FileError('%s: %s' % (path, describe(e, path)))


def call(path, fn):
  """fn(store, path inside it) for a path on a store, its errors as one-line OSErrors."""
  try:
    store, inner = filesystem(path)
  except OSError as e:  # no Hadoop client: _hdfs's line says what is missing
    raise FileError(first_line(e)) from e
  try:
    return fn(store, inner)
  except _exceptions() as e:
    raise error(path, e) from e


def _info(path):
  return call(path, lambda store, inner: store.get_file_info(inner))


def exists(path):
  return _info(path).type != _file_type().NotFound


def isdir(path):
  return _info(path).type == _file_type().Directory


def _children(path, recursive):
  from pyarrow import fs
  return call(path, lambda store, inner: store.get_file_info(
      fs.FileSelector(inner, recursive=recursive)))


def listdir(path):
  return [info.base_name for info in _children(path, False)]


def size(path):
  info = _info(path)
  if info.type == _file_type().NotFound:
    raise error(path, FileNotFoundError(path))
  return info.size


def makedirs(path):
  """Creates `path` and its parents (never a bucket: GCS's create_dir would make one)."""
  if _scheme(path) in ('s3', 'gs'):
    if _info('%s://%s' % (_scheme(path), _bucket(path))).type == _file_type().NotFound:
      raise FileNotFoundError('%s: the bucket %s does not exist' % (path, _bucket(path)))
  call(path, lambda store, inner: store.create_dir(inner, recursive=True))


def remove(path):
  call(path, lambda store, inner: store.delete_file(inner))


def rmtree(path):
  call(path, lambda store, inner: store.delete_dir(inner))


def same_store(src, dst):
  """Whether both paths are on one store (a copy or move stays inside it)."""
  return handles(src) and handles(dst) and filesystem(src)[0] is filesystem(dst)[0]


def move(src, dst):
  """Moves a file inside one store (an object store copies, then deletes)."""
  call(src, lambda store, inner: store.move(inner, filesystem(dst)[1]))


def copy_file(src, dst):
  """Copies a file inside one store (server-side where the store can)."""
  call(src, lambda store, inner: store.copy_file(inner, filesystem(dst)[1]))


def walk(top):
  """(dirpath, subdirs, files) top-down, as tf.io.gfile.walk, from one recursive listing."""
  top = top.rstrip('/')
  _, root = filesystem(top)
  tree = collections.defaultdict(lambda: ([], []))
  tree[root]  # noqa: B018  # the top, even empty
  for info in _children(top, True):
    parent = info.path.rsplit('/', 1)[0]
    tree[parent][0 if info.type == _file_type().Directory else 1].append(info.base_name)
    if info.type == _file_type().Directory:
      tree[info.path]  # noqa: B018
  for inner in sorted(tree, key=lambda p: (p.count('/'), p)):
    subdirs, names = tree[inner]
    yield (top + inner[len(root):], sorted(subdirs), sorted(names))


def glob(pattern):
  """The paths matching `pattern`, wildcards in its last component only, sorted."""
  import fnmatch
  parent, name = pattern.rstrip('/').rsplit('/', 1)
  if any(c in parent for c in '*?['):
    raise FileError('%s: wildcards only in the last component on an object store' % pattern)
  try:
    names = listdir(parent)
  except FileNotFoundError:
    return []
  return sorted('%s/%s' % (parent, n) for n in names if fnmatch.fnmatchcase(n, name))


class StoreFile:
  """A pyarrow file (an input file with positional reads, or an output stream, which an object
  store makes visible whole when it is closed) whose errors are one-line OSErrors."""

  def __init__(self, path, mode):
    self.name, self._text = path, 'b' not in mode
    self._file = call(path, lambda store, inner: (
        store.open_input_file(inner) if 'r' in mode else store.open_output_stream(inner)))

  def _call(self, fn, *args):
    try:
      return fn(*args)
    except _exceptions() as e:
      raise error(self.name, e) from e

  def read(self, n=-1):
    data = self._call(self._file.read, None if n is None or n < 0 else n)
    return data.decode('utf-8') if self._text else data

  def pread(self, offset, length):
    """`length` bytes from `offset` (fewer at the end); safe from several threads at once."""
    return self._call(self._file.read_at, length, offset)

  def seek(self, offset, whence=0):
    return self._call(self._file.seek, offset, whence)

  def tell(self):
    return self._call(self._file.tell)

  def write(self, data):
    if isinstance(data, str):
      data = data.encode('utf-8')
    return self._call(self._file.write, data)

  def flush(self):
    if self._file.writable():
      self._call(self._file.flush)

  def close(self):
    self._call(self._file.close)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if exc[0] is not None and self._file.writable():
      # An upload that failed half way. pyarrow's S3 and GCS streams make the object visible
      # when closed, and expose no abort to Python (a stream dropped unclosed is closed by its
      # destructor): close, then delete what that published.
      try:
        self._file.close()
      except Exception:  # the block's own error is reported
        pass
      try:
        remove(self.name)
      except OSError:
        pass
      return
    self.close()
