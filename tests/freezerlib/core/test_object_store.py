"""core/object_store: which paths go to pyarrow, stores configured from the environment, and
pyarrow's errors as a few words (the servers themselves: tests/test_object_stores.py)."""

import pytest

from freezerlib.core import object_store


@pytest.fixture
def clean_env(monkeypatch):
  for name in ('AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_ACCESS_KEY_ID',
               'AWS_SECRET_ACCESS_KEY', 'AWS_REGION', 'AWS_DEFAULT_REGION',
               'STORAGE_EMULATOR_HOST', 'CLOUD_STORAGE_EMULATOR_ENDPOINT'):
    monkeypatch.delenv(name, raising=False)
  object_store.reset()
  yield monkeypatch
  object_store.reset()


@pytest.mark.parametrize('path,handled', [
    ('s3://b/k', True), ('gs://b/k', True), ('hdfs://nn:8020/x', True), ('viewfs://c/x', True),
    ('ram://x', False), ('file:///tmp/x', False), ('/tmp/s3://x', False), ('rel/x', False)])
def test_handles(path, handled):
  assert object_store.handles(path) is handled


def test_s3_from_the_environment(clean_env):
  clean_env.setenv('AWS_ENDPOINT_URL', 'http://10.0.0.1:9000')
  clean_env.setenv('AWS_ENDPOINT_URL_S3', 'http://127.0.0.1:9999/')  # wins: the S3-only one
  clean_env.setenv('AWS_ACCESS_KEY_ID', 'key')
  clean_env.setenv('AWS_SECRET_ACCESS_KEY', 'secret')
  clean_env.setenv('AWS_REGION', 'eu-west-3')
  store, inner = object_store.filesystem('s3://bucket/a/b/')
  assert inner == 'bucket/a/b'
  assert store.region == 'eu-west-3'
  options = store.__reduce__()[1][0]  # the options it was made with
  assert (options['endpoint_override'], options['scheme']) == ('127.0.0.1:9999', 'http')
  assert object_store.filesystem('s3://other/x')[0] is store  # made once


def test_gcs_emulator_from_the_environment(clean_env):
  clean_env.setenv('STORAGE_EMULATOR_HOST', '127.0.0.1:4443')  # no scheme: http
  store, inner = object_store.filesystem('gs://bucket/m')
  assert inner == 'bucket/m'
  assert object_store._endpoint('127.0.0.1:4443') == ('https', '127.0.0.1:4443')
  assert object_store._endpoint('http://h:1/') == ('http', 'h:1')
  assert store.type_name == 'gcs'


@pytest.mark.parametrize('message,path,expected', [
    ("When getting information for key 'a/y' in bucket 'bkt': AWS Error NETWORK_CONNECTION "
     "during HeadObject operation: curlCode: 7, Could not connect to server; Details: Failed "
     "to connect to 127.0.0.1:39009 after 0 ms: Could not connect to server", 's3://bkt/a/y',
     'cannot reach the endpoint http://127.0.0.1:1'),
    ("When initiating multiple part upload for key 'x' in bucket 'nob': AWS Error "
     "NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not "
     "exist (Request ID: Legs)", 's3://nob/x', 'the bucket does not exist'),
    ("Bucket 'nob' not found. To create buckets, enable the allow_bucket_creation option.",
     's3://nob/x', 'the bucket does not exist'),
    ("When getting information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED during "
     "HeadObject operation: No response body.", 's3://b/k', 'access denied (access_denied)'),
    ("google::cloud::Status(UNAVAILABLE: Retry policy exhausted, with a last message of "
     "PerformWork() - CURL error [7]=Could not connect to server error_info={reason=})",
     'gs://b/k', 'cannot reach the endpoint http://127.0.0.1:2'),
    ("google::cloud::Status(PERMISSION_DENIED: Permanent error, with a last message of "
     "Forbidden error_info={reason=Forbidden})", 'gs://b/k', 'access denied (permission_denied)'),
])
def test_describe_gives_the_cause_in_one_line(clean_env, message, path, expected):
  clean_env.setenv('AWS_ENDPOINT_URL', 'http://127.0.0.1:1')
  clean_env.setenv('STORAGE_EMULATOR_HOST', 'http://127.0.0.1:2')
  cause = object_store.describe(OSError(message), path)
  assert cause.startswith(expected), cause
  assert '\n' not in cause and 'Request ID' not in cause


def test_describe_a_missing_file():
  assert object_store.describe(FileNotFoundError('x'), 's3://b/x') == 'no such file or directory'


def test_hdfs_without_a_client_names_what_is_missing(clean_env):
  clean_env.delenv('JAVA_HOME', raising=False)
  with pytest.raises(OSError, match=r'^hdfs://nn:9000 needs a Hadoop client on this machine: '):
    object_store.filesystem('hdfs://nn:9000/models')


def test_the_file_layer_and_this_module_agree_on_the_schemes():
  from freezerlib.core import files
  assert object_store.SCHEMES == files.STORE_SCHEMES
  assert object_store.FileError is files.FileError
