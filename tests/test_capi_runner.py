"""Tests for capi_runner: SavedModels served through TensorFlow's C API answer correctly."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from capi_runner import run_saved_model

TF_SERVING_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "tf_serving"
HALF_PLUS_TWO = TF_SERVING_DATA / "saved_model_half_plus_two_cpu" / "00000123"
HALF_PLUS_THREE = TF_SERVING_DATA / "saved_model_half_plus_three" / "00000123"


@pytest.fixture
def runner(capi):
    return capi


@pytest.fixture
def tf_serving_data():
    if not TF_SERVING_DATA.is_dir():
        pytest.skip(f"TF Serving test models not found at {TF_SERVING_DATA}")
    return TF_SERVING_DATA


def _example(x: float) -> bytes:
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x]))
    return tf.train.Example(
        features=tf.train.Features(feature={"x": feature})).SerializeToString()


def test_half_plus_two_serving_default(runner, tf_serving_data):
    out = run_saved_model(runner, HALF_PLUS_TWO, {"x:0": np.float32([[1], [2]])}, ["y:0"])

    assert out["y:0"].dtype == np.float32
    np.testing.assert_array_equal(out["y:0"], np.float32([[2.5], [3.0]]))


def test_half_plus_two_classify_parses_serialized_examples(runner, tf_serving_data):
    examples = np.array([_example(4.0), _example(-1.5)], dtype=object)

    out = run_saved_model(runner, HALF_PLUS_TWO, {"tf_example:0": examples}, ["y:0", "y2:0"])

    np.testing.assert_array_equal(out["y:0"], np.float32([[4.0], [1.25]]))  # 0.5 * x + 2
    np.testing.assert_array_equal(out["y2:0"], np.float32([[5.0], [2.25]]))  # 0.5 * x + 3


def test_half_plus_three_serving_default(runner, tf_serving_data):
    out = run_saved_model(runner, HALF_PLUS_THREE, {"x:0": np.float32([[1], [2]])}, ["y:0"])

    np.testing.assert_array_equal(out["y:0"], np.float32([[3.5], [4.0]]))


def _export_tf1_model(export_dir: Path) -> None:
    """Writes a TF1 SavedModel: int64 `ids` and bool `flags` in, six dtypes out."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
        flags = tf.compat.v1.placeholder(tf.bool, [None], name="flags")
        is_even = tf.equal(tf.math.floormod(ids, 2), 0, name="is_even")
        outputs = {
            "shifted": tf.add(ids, 2**40, name="shifted"),  # needs all 64 bits
            "is_even": is_even,
            "even_and_flag": tf.logical_and(is_even, flags, name="even_and_flag"),
            "text": tf.strings.as_string(ids, name="text"),
            "quarter": tf.multiply(tf.cast(ids, tf.float64), 0.25, name="quarter"),
            "narrow": tf.cast(ids, tf.int32, name="narrow"),
        }
        builder = tf.compat.v1.saved_model.Builder(str(export_dir))
        signature = tf.compat.v1.saved_model.predict_signature_def(
            inputs={"ids": ids, "flags": flags}, outputs=outputs)
        builder.add_meta_graph_and_variables(
            sess, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()


def test_tf1_model_round_trips_int64_bool_string_float64_int32(runner, tmp_path):
    export_dir = tmp_path / "tf1_model"
    _export_tf1_model(export_dir)
    ids = np.array([3, -4, 2**40], dtype=np.int64)

    out = run_saved_model(
        runner, export_dir,
        {"ids": ids, "flags:0": np.array([True, True, False])},
        ["shifted:0", "is_even:0", "even_and_flag", "text:0", "quarter:0", "narrow:0"])

    assert out["shifted:0"].dtype == np.int64
    np.testing.assert_array_equal(out["shifted:0"], [2**40 + 3, 2**40 - 4, 2**41])
    assert out["is_even:0"].dtype == np.bool_
    np.testing.assert_array_equal(out["is_even:0"], [False, True, True])
    np.testing.assert_array_equal(out["even_and_flag"], [False, True, False])
    assert out["text:0"].tolist() == [b"3", b"-4", b"1099511627776"]
    assert out["quarter:0"].dtype == np.float64
    np.testing.assert_array_equal(out["quarter:0"], [0.75, -1.0, 2.0**38])
    assert out["narrow:0"].dtype == np.int32
    np.testing.assert_array_equal(out["narrow:0"], [3, -4, 0])  # 2**40 truncates to 0


def test_missing_export_dir_raises_with_the_dir(runner, tmp_path):
    missing = tmp_path / "no_such_model"

    with pytest.raises(RuntimeError, match="no_such_model") as info:
        run_saved_model(runner, missing, {"x:0": np.float32([[1]])}, ["y:0"])
    assert str(missing) in str(info.value)


def test_not_a_saved_model_raises_with_the_dir(runner, tf_serving_data):
    bad = tf_serving_data / "bad_half_plus_two" / "00000123"

    with pytest.raises(RuntimeError) as info:
        run_saved_model(runner, bad, {"x:0": np.float32([[1]])}, ["y:0"])
    assert f"cannot load SavedModel from {bad}" in str(info.value)


def test_unknown_tensor_name_raises(runner, tf_serving_data):
    with pytest.raises(RuntimeError, match="no operation named 'nope'"):
        run_saved_model(runner, HALF_PLUS_TWO, {"x:0": np.float32([[1]])}, ["nope:0"])
