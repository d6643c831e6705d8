"""core/errors: the user's mistakes as one error type, TensorFlow's errors as their one line."""

import pytest
import tensorflow as tf

from freezerlib.core import errors


def test_graph_execution_error_becomes_the_kernels_line():
  graph = tf.Graph()
  with graph.as_default():
    y = tf.strings.to_number(tf.constant('x'))
    with tf.compat.v1.Session() as session:
      with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        session.run(y)
  # TensorFlow's message starts with 'Graph execution error', the node's Python trace and
  # 'Node:'; the line that says what went wrong comes after them.
  assert caught.value.message.startswith('Graph execution error')
  assert errors.tf_error_message(caught.value) == (
      'StringToNumberOp could not correctly convert string: x')


@pytest.mark.parametrize('text,expected', [
    ('first\nsecond', 'first'),
    ('\n  Detected at node x\n  File "a.py", line 1\n  the cause  \n', 'the cause'),
    ('Traceback (most recent call last):\nFrom /job:ps/task:0:\nreal', 'real'),
    ('Graph execution error:\nNode: x', 'Graph execution error:'),  # nothing else: first line
])
def test_first_line_that_is_not_trace(text, expected):
  assert errors.tf_error_message(ValueError(text)) == expected


def test_message_attribute_wins_and_empty_names_the_type():
  class WithMessage(Exception):
    message = 'from the attribute'

  assert errors.tf_error_message(WithMessage('from str')) == 'from the attribute'
  assert errors.tf_error_message(KeyError()) == 'KeyError'


def test_exists_error_names_the_path_and_the_flag():
  error = errors.exists_error('/tmp/out.pb')
  assert isinstance(error, errors.UserError) and isinstance(error, Exception)
  assert str(error) == '/tmp/out.pb already exists; pass --overwrite to replace it'


def test_a_failing_reference_is_a_user_error_of_its_own():
  # optimize_from_pb_test.py exits 3 for it; every script's one-line path still catches it.
  assert issubclass(errors.ReferenceFailed, errors.UserError)
  assert not issubclass(errors.UserError, errors.ReferenceFailed)
