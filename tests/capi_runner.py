"""Serve a SavedModel through TensorFlow's C API, so tests can prove an export serves.

`capi/serve_saved_model.c` loads a SavedModel with `TF_LoadSessionFromSavedModel` (the C++
loader TF Serving uses), runs one `TF_SessionRun` and writes the outputs back. This module
builds that program against the headers and libraries shipped in the tensorflow wheel and
talks to it through two little-endian binary files:

    request  := uint32 n_feeds, (name, tensor) * n_feeds, uint32 n_fetches, name * n_fetches
    name     := uint32 len, len bytes ("x:0", "IteratorGetNext:3"; no ":k" means output 0)
    response := uint32 n, tensor * n            (one per fetch, in the order of the fetches)
    tensor   := int32 TF_DataType, uint32 ndims, int64 dims[ndims], data
    data     := TF_STRING (7): per element uint32 len + len bytes;
                other dtypes: uint64 nbytes + nbytes of row-major raw values

Typical use:

    runner = build_runner(tmp_dir)
    out = run_saved_model(runner, export_dir, {"x:0": np.float32([[1], [2]])}, ["y:0"])
    out["y:0"]  # array([[2.5], [3.]], dtype=float32)
"""

from collections.abc import Mapping
from collections.abc import Sequence
import os
from pathlib import Path
import shutil
import struct
import subprocess
import tempfile

import numpy as np

SOURCE = Path(__file__).resolve().parent / "capi" / "serve_saved_model.c"

TF_STRING = 7
# TF_DataType values (tensorflow/c/tf_datatype.h) of the fixed-size numpy dtypes exchanged.
_TF_DTYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.float64): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4,
    np.dtype(np.int16): 5,
    np.dtype(np.int8): 6,
    np.dtype(np.complex64): 8,
    np.dtype(np.int64): 9,
    np.dtype(np.bool_): 10,
    np.dtype(np.uint16): 17,
    np.dtype(np.complex128): 18,
    np.dtype(np.float16): 19,
    np.dtype(np.uint32): 22,
    np.dtype(np.uint64): 23,
}
_NP_DTYPES = {code: dtype for dtype, code in _TF_DTYPES.items()}


def build_runner(build_dir) -> str:
    """Compiles `serve_saved_model.c` against the installed tensorflow package.

    Args:
        build_dir: Directory to write the executable into (created if missing).

    Returns:
        The path of the built executable.

    Raises:
        RuntimeError: If gcc is missing or the compilation fails (the message holds gcc's
            stderr).
    """
    import tensorflow as tf  # Imported here: only the build needs the package location.

    tf_dir = os.path.dirname(tf.__file__)
    os.makedirs(build_dir, exist_ok=True)
    exe = os.path.join(os.fspath(build_dir), "serve_saved_model")
    cmd = [
        "gcc", "-O2", "-Wall", str(SOURCE), "-o", exe, f"-I{tf_dir}/include", f"-L{tf_dir}",
        "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{tf_dir}",
    ]
    if shutil.which("ld.gold"):  # Links against the 790 MB libtensorflow_cc in ~1.5 s, not ~8 s.
        cmd.insert(1, "-fuse-ld=gold")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise RuntimeError(f"cannot build the C API runner: {e}") from e
    if proc.returncode != 0:
        raise RuntimeError(
            f"building {SOURCE.name} failed (gcc exit {proc.returncode}):\n{proc.stderr}")
    return exe


def run_saved_model(runner_path, export_dir, feeds: Mapping[str, np.ndarray],
                    fetches: Sequence[str], tag="serve") -> dict[str, np.ndarray]:
    """Runs one request against a SavedModel in a fresh `serve_saved_model` process.

    Args:
        runner_path: The executable returned by `build_runner`.
        export_dir: The SavedModel directory (the one holding `saved_model.pb`).
        feeds: Tensor name (`"x:0"`) to value. Numeric arrays keep their numpy dtype (pass
            `np.float32` explicitly for float inputs); arrays of `bytes` or `str` (dtype
            object, `S` or `U`) become TF_STRING, `str` encoded as UTF-8.
        fetches: Tensor names to return: at least one, and none of them fed (unlike
            Python's Session.run, TF_SessionRun refuses both).
        tag: The MetaGraph tag, or a sequence of tags.

    Returns:
        Fetch name to numpy array; TF_STRING outputs are object arrays of `bytes`.

    Raises:
        RuntimeError: If the program exits non-zero (the message holds its stderr).
        TypeError: If a feed has a dtype the request format does not carry.
    """
    tags = tag if isinstance(tag, str) else ",".join(tag)
    request = bytearray(struct.pack("<I", len(feeds)))
    for name, value in feeds.items():
        request += _encode_name(name) + _encode_tensor(name, np.asarray(value))
    request += struct.pack("<I", len(fetches))
    for name in fetches:
        request += _encode_name(name)

    with tempfile.TemporaryDirectory(prefix="serve_saved_model_") as tmp:
        request_path = os.path.join(tmp, "request.bin")
        response_path = os.path.join(tmp, "response.bin")
        with open(request_path, "wb") as f:
            f.write(request)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [os.fspath(runner_path), os.fspath(export_dir), tags, request_path, response_path],
            capture_output=True, env=env)
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", errors="replace").strip()
            raise RuntimeError(f"serving {os.fspath(export_dir)} through the C API failed "
                               f"(exit {proc.returncode}):\n{stderr}")
        with open(response_path, "rb") as f:
            response = f.read()

    (count,), pos = _unpack("<I", response, 0)
    outputs = []
    for _ in range(count):
        array, pos = _decode_tensor(response, pos)
        outputs.append(array)
    if len(outputs) != len(fetches) or pos != len(response):
        raise RuntimeError(f"malformed response: {count} tensors, {len(response) - pos} "
                           f"bytes left over, {len(fetches)} fetches asked for")
    return dict(zip(fetches, outputs))


def _encode_name(name: str) -> bytes:
    data = name.encode("utf-8")
    return struct.pack("<I", len(data)) + data


def _encode_tensor(name: str, array: np.ndarray) -> bytes:
    is_string = array.dtype.kind in "OSU"
    dtype = TF_STRING if is_string else _tf_dtype(name, array.dtype)
    parts = [struct.pack(f"<iI{array.ndim}q", dtype, array.ndim, *array.shape)]
    if is_string:
        for item in array.ravel():
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts += [struct.pack("<I", len(data)), data]
    else:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        parts += [struct.pack("<Q", len(data)), data]
    return b"".join(parts)


def _tf_dtype(name: str, dtype: np.dtype) -> int:
    try:
        return _TF_DTYPES[dtype.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"feed {name}: numpy dtype {dtype} has no TF_DataType here") from None


def _decode_tensor(buf: bytes, pos: int) -> tuple[np.ndarray, int]:
    (dtype, ndims), pos = _unpack("<iI", buf, pos)
    shape, pos = _unpack(f"<{ndims}q", buf, pos)
    if dtype == TF_STRING:
        items = np.empty(int(np.prod(shape)), dtype=object)
        for i in range(items.size):
            (length,), pos = _unpack("<I", buf, pos)
            items[i] = buf[pos:pos + length]
            pos += length
        return items.reshape(shape), pos
    if dtype not in _NP_DTYPES:
        raise RuntimeError(f"response holds TF_DataType {dtype}, which this module cannot read")
    np_dtype = _NP_DTYPES[dtype]
    (nbytes,), pos = _unpack("<Q", buf, pos)
    array = np.frombuffer(buf[pos:pos + nbytes], dtype=np_dtype.newbyteorder("<"))
    return array.astype(np_dtype).reshape(shape), pos + nbytes


def _unpack(fmt: str, buf: bytes, pos: int) -> tuple[tuple, int]:
    """Unpacks `fmt` from `buf` at `pos`; returns the values and the position after them."""
    return struct.unpack_from(fmt, buf, pos), pos + struct.calcsize(fmt)


def run_signatures(runner_path, export_dir, feeds_by_signature, tag='serve'):
    """Runs signatures by key through the C API:
    {sig: {input key: value}} -> {sig: {output: value}}.

    Tensor names come from the SavedModel's own SignatureDefs, as TF Serving resolves them. A
    sparse input (a SparseTensorValue) is fed as its indices, values and dense shape tensors,
    a ragged one (RaggedTensorValue or tf.RaggedTensor) as its components, as a TF Serving
    client sends them; sparse and ragged outputs come back as such values
    (freezerlib.verify.loaders.feed_arrays and output_value).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    from freezerlib.verify import loaders

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    results = {}
    for key, feeds in feeds_by_signature.items():
        sig = signatures[key]
        tensors = {}
        for k, v in feeds.items():
            tensors.update(loaders.feed_arrays(sig.inputs[k], v))
        names = {k: loaders.output_tensors(sig.outputs[k]) for k in sorted(sig.outputs)}
        out = run_saved_model(runner_path, export_dir, tensors,
                              [n for group in names.values() for n in group], tag=tag)
        results[key] = {k: loaders.output_value(sig.outputs[k], [out[n] for n in group])
                        for k, group in names.items()}
    return results
