"""Tensor encodings: exact round trips, and refusals that name the problem."""

import base64
import json

import ml_dtypes
import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bncheck.server import codec

DATATYPES = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16, "FP32": np.float32, "FP64": np.float64}


def _awkward(dtype):
    """Values that stress an encoding: signed zeros, subnormals, extremes, many digits."""
    info = ml_dtypes.finfo(dtype)
    v = [0.0, -0.0, float(info.smallest_subnormal), float(info.tiny), float(info.max), -float(info.max),
         1 / 3, np.pi, -2.5, 1e-3]
    return np.array(v, dtype=np.float64).astype(dtype).reshape(2, 5)


@pytest.mark.parametrize("wire", list(DATATYPES))
def test_b64_round_trip_is_bit_exact(wire):
    arr = _awkward(DATATYPES[wire])
    payload, used = codec.encode(arr, "b64")
    assert used == "b64"
    assert payload["datatype"] == wire
    assert payload["shape"] == [2, 5]
    back = codec.decode(payload, max_elements=100)
    assert back.encoding == "b64"
    assert back.datatype == wire
    assert back.array.dtype == arr.dtype
    assert back.array.tobytes() == arr.tobytes()


@pytest.mark.parametrize("wire", list(DATATYPES))
def test_b64_carries_nan_and_inf(wire):
    arr = np.array([[np.nan, np.inf], [-np.inf, 1.0]]).astype(DATATYPES[wire])
    back = codec.decode(codec.encode(arr, "b64")[0], max_elements=10).array
    assert np.isnan(back[0, 0].astype(np.float64))
    assert np.isinf(back[0, 1].astype(np.float64))


@pytest.mark.parametrize("wire", list(DATATYPES))
def test_data_round_trip_is_value_exact(wire):
    arr = _awkward(DATATYPES[wire])
    payload, used = codec.encode(arr, "data")
    assert used == "data"
    back = codec.decode(payload, max_elements=100).array
    assert back.dtype == arr.dtype
    assert np.array_equal(back.astype(np.float64), arr.astype(np.float64))
    assert np.array_equal(np.signbit(back.astype(np.float64)), np.signbit(arr.astype(np.float64)))


def test_list_round_trip_is_value_exact():
    arr = _awkward(np.float64).reshape(2, 1, 5)
    payload, used = codec.encode(arr, "list")
    assert used == "list"
    back = codec.decode(payload, max_elements=100)
    assert back.encoding == "list"
    assert back.datatype is None
    assert np.array_equal(back.array, arr)


def test_json_cannot_carry_nan_so_it_goes_as_b64():
    payload, used = codec.encode(np.array([1.0, np.nan]), "list")
    assert used == "b64"
    assert "b64" in payload


def test_big_endian_arrays_are_sent_little_endian():
    arr = np.arange(6, dtype=">f4").reshape(2, 3)
    payload, _ = codec.encode(arr, "b64")
    assert base64.b64decode(payload["b64"]) == arr.astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("text", "got a string"),
        (None, "got null"),
        (3.5, "got a number"),
        ([[1, 2], [3]], "ragged"),
        ([[1, "2"], [3, 4]], "strings"),
        ([[1, None], [3, 4]], "nulls"),
        ([[1, {"a": 1}]], "nulls, objects"),
        ([[True, False]], "booleans"),
        ([[1.0, True]], "booleans"),
        ({"shape": [2], "datatype": "FP32"}, "exactly one of"),
        ({"shape": [2], "datatype": "FP32", "data": [1, 2], "b64": ""}, "exactly one of"),
        ({"datatype": "FP32", "data": [1, 2]}, "needs 'shape'"),
        ({"shape": [2], "data": [1, 2]}, "needs 'datatype'"),
        ({"shape": [2], "datatype": "FP8", "data": [1, 2]}, "FP16, BF16, FP32, FP64"),
        ({"shape": [2], "datatype": "FP32", "data": [1, 2], "order": "F"}, "unknown tensor keys"),
        ({"shape": [2, 0], "datatype": "FP32", "data": []}, "shape[1] is 0"),
        ({"shape": [-2], "datatype": "FP32", "data": [1, 2]}, "shape[0] is -2"),
        ({"shape": [2.0], "datatype": "FP32", "data": [1, 2]}, "integers"),
        ({"shape": [True], "datatype": "FP32", "data": [1]}, "integers"),
        ({"shape": [], "datatype": "FP32", "data": []}, "non-empty"),
        ({"shape": [3], "datatype": "FP32", "data": [1, 2]}, "needs 3"),
        ({"shape": [2], "datatype": "FP32", "data": [[1], [2]]}, "flat"),
        ({"shape": [2], "datatype": "FP32", "data": [1, True]}, "booleans"),
        ({"shape": [2, 2], "datatype": "FP32", "data": [[1, 2, 3, 4]]}, "nested as [1, 4] but shape is [2, 2]"),
        ({"shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}, "ragged"),
        ({"shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, False]]}, "booleans"),
        ({"shape": [2], "datatype": "FP32", "data": [1, 2], "name": 3}, "name must be a string"),
        ({"shape": [2], "datatype": "FP32", "data": [1, 2], "parameters": []}, "parameters must be an object"),
        ({"shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}, "data": [1, 2]}, "/v2/models"),
        ({"shape": [2], "datatype": "FP16", "data": [1, 1e6]}, "65504"),
        ({"shape": [2], "datatype": "FP32", "data": "1,2"}, "flat or nested"),
        ({"shape": [2], "datatype": "FP32", "b64": "AAAAAAAAAAA"}, "multiple of 4"),
        ({"shape": [2], "datatype": "FP32", "b64": "AAAAAAAAAA=="}, "holds 7 bytes"),
        ({"shape": [2], "datatype": "FP32", "b64": "AAAA!AAAAAA="}, "not valid base64"),
        ({"shape": [2], "datatype": "FP32", "b64": 12}, "base64 string"),
    ],
)
def test_refusals_say_why(value, words):
    with pytest.raises(codec.TensorError) as info:
        codec.decode(value, max_elements=1000)
    assert words in str(info.value)


def test_v2_tensor_fields_and_nested_data_are_read():
    """What tritonclient's InferInput sends in JSON: name, parameters, and data flat or nested."""
    flat = codec.decode({"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {},
                         "data": [1, 2, 3, 4, 5, 6]}, max_elements=100, field="x")
    nested = codec.decode({"shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [4, 5, 6]]}, max_elements=100)
    assert np.array_equal(flat.array, [[1, 2, 3], [4, 5, 6]])
    assert np.array_equal(nested.array, flat.array)
    assert nested.array.dtype == np.float32
    assert codec.decode({"name": "candidate_dx", "shape": [1], "datatype": "FP64", "data": [1]},
                        max_elements=1, field="dx").array.tolist() == [1.0]
    with pytest.raises(codec.TensorError, match="name is 'dy' but the tensor is sent as 'x'"):
        codec.decode({"name": "dy", "shape": [1], "datatype": "FP32", "data": [1]}, max_elements=1, field="x")


def test_element_limit_is_checked_before_anything_is_allocated():
    huge = {"shape": [2**40, 2**40], "datatype": "FP64", "b64": "AAAA"}
    with pytest.raises(codec.TensorError, match="over the limit of 1,000"):
        codec.decode(huge, max_elements=1000)
    with pytest.raises(codec.TensorError, match="over the limit"):
        codec.decode([[0.0] * 40] * 40, max_elements=1000)


def test_deep_nesting_is_refused():
    deep = 1.0
    for _ in range(100):
        deep = [deep]
    with pytest.raises(codec.TensorError, match="too deep"):
        codec.decode(deep, max_elements=1000)


@pytest.mark.parametrize("value", [
    [[1.5, True]], [[0.0, False], [2.0, 3.0]], [[True] + [0.5] * 200], [[1.0] * 100 + [True]],
    [[0.0, 1.0] * 100 + [False]],
])
def test_booleans_are_found_among_zeros_and_ones(value):
    with pytest.raises(codec.TensorError, match="booleans"):
        codec.decode(value, max_elements=10_000)
    with pytest.raises(codec.TensorError, match="booleans"):
        codec.decode({"shape": [len(value[0])], "datatype": "FP32", "data": value[0]}, max_elements=10_000)


def test_exact_zeros_and_ones_are_numbers():
    assert codec.decode([[0.0, 1, 1.0, 0]], max_elements=10).array.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_why_booleans_need_looking_for():
    """np.asarray([1.5, True]) is [1.5, 1.0]: NumPy alone would take a boolean for a number."""
    assert np.asarray([1.5, True]).tolist() == [1.5, 1.0]


# --- long b64 strings taken out of the body before orjson parses it (codec.lift_b64) ---

def _body(x: np.ndarray, dy: np.ndarray, *, sep: str = ":", extra: str = "") -> bytes:
    def t(a: np.ndarray) -> str:
        return (f'{{"shape"{sep}{list(a.shape)}, "datatype": "FP32", '
                f'"b64"{sep}"{base64.b64encode(a.tobytes()).decode()}"}}')
    return f'{{"x": {t(x)}, "dy": {t(dy)}, "output": {{"encoding": "b64"}}{extra}}}'.encode()


def _parse(body: bytes):
    from bncheck.server import Settings, runner

    return runner.parse(body, Settings())


@pytest.mark.parametrize("sep", [":", " : ", "\n:\t"])
def test_lifted_b64_parses_to_the_same_arrays(sep):
    rng = np.random.default_rng(3)
    x, dy = (rng.standard_normal((256, 128)).astype(np.float32) for _ in range(2))
    body = _body(x, dy, sep=sep)
    text, lifted = codec.lift_b64(body)
    assert len(lifted) == 2
    assert len(text) < 400  # only the small rest goes through orjson
    req = _parse(body)
    np.testing.assert_array_equal(req.x.array, x)
    np.testing.assert_array_equal(req.dy.array, dy)
    assert req.output.encoding == "b64"


def test_short_escaped_and_value_b64_are_left_to_orjson():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    b64 = base64.b64encode(x.tobytes()).decode()
    escaped = b64.replace("/", "\\/")  # legal JSON, and some encoders write it
    assert escaped != b64
    body = (f'{{"x": {{"shape": [256, 128], "datatype": "FP32", "b64": "{escaped}"}}, '
            f'"dy": {{"shape": [2], "datatype": "FP32", "b64": "AACAPwAAAEA="}}, "note": "b64"}}').encode()
    _, lifted = codec.lift_b64(body)
    assert lifted == {}
    decoded = codec.decode({"shape": [256, 128], "datatype": "FP32", "b64": escaped.replace("\\/", "/")},
                           max_elements=1 << 20)
    np.testing.assert_array_equal(decoded.array, x)


def test_a_lifted_string_is_still_validated_and_bad_json_still_refused():
    from bncheck.server.errors import ProblemError

    rng = np.random.default_rng(5)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    good = _body(x, x)
    i = good.index(b'"b64"') + 10
    bad_chars = good[:i] + b"!" + good[i + 1:]
    with pytest.raises(ProblemError) as info:
        _parse(bad_chars)
    assert info.value.status == 422
    assert "base64" in str(info.value.errors)
    truncated = good[:-1]  # the closing brace is missing: the position must be the body's own
    with pytest.raises(ProblemError) as info:
        _parse(truncated)
    assert info.value.status == 400
    with pytest.raises(orjson.JSONDecodeError) as direct:
        orjson.loads(truncated)
    assert info.value.detail == f"the body is not valid JSON: {direct.value}"


def test_a_guessed_placeholder_is_just_a_string():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    text, lifted = codec.lift_b64(_body(x, x))
    name = next(iter(lifted))
    # Another request cannot know this request's nonce: its own placeholders differ.
    _, again = codec.lift_b64(_body(x, x))
    assert name not in again
    with pytest.raises(codec.TensorError, match="not valid base64|multiple of 4|holds"):
        codec.decode({"shape": [2], "datatype": "FP32", "b64": name}, max_elements=10)


def _restore(value, lifted):
    """The parsed document with every placeholder put back as the text it stands for."""
    if isinstance(value, dict):
        return {k: _restore(v, lifted) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, lifted) for v in value]
    if isinstance(value, str) and value in lifted:
        return bytes(lifted[value]).decode()
    return value


_b64_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=0,
                    max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.text(alphabet='ab"\\\n/b64', max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["b64", "x", 'k"b64"', "\\", "shape"]), inner | _b64_text, max_size=4),
    max_leaves=12,
)


@given(doc=_json, indent=st.sampled_from([None, 1]), slash=st.booleans())
def test_lifting_never_changes_what_the_document_says(doc, indent, slash):
    """Oracle: orjson on the original body. Any document, any escaping, any spacing."""
    body = json.dumps(doc, indent=indent).encode()
    if slash:
        body = body.replace(b"/", b"\\/")
    text, lifted = codec.lift_b64(body, min_len=1)
    assert _restore(orjson.loads(text), lifted) == orjson.loads(body)


def test_lifting_walks_past_escaped_quotes():
    b64 = "QUFB" * 20000
    body = b'{"a": "x\\\\", "k\\"": 1, "b64" : "' + b64.encode() + b'"}'
    text, lifted = codec.lift_b64(body)
    assert [bytes(v).decode() for v in lifted.values()] == [b64]
    assert _restore(orjson.loads(text), lifted) == orjson.loads(body)


def test_held_b64_is_spliced_into_the_serialised_document():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((300, 100)).astype(np.float32)
    b = rng.standard_normal((200, 100)).astype(np.float64)
    held = codec.Held()
    doc = {"first": codec.encode(a, "b64", held)[0], "note": 'a "quoted" note',
           "second": codec.encode(b, "b64", held)[0], "small": codec.encode(np.ones(3, np.float32), "b64", held)[0]}
    assert len(held.texts) == 2  # the small one stays in the document
    text = held.splice(orjson.dumps(doc))
    back = orjson.loads(text)
    assert back["note"] == 'a "quoted" note'
    assert back == orjson.loads(orjson.dumps({k: codec.encode(v, "b64")[0] for k, v in
                                              (("first", a), ("second", b), ("small", np.ones(3, np.float32)))}
                                             | {"note": 'a "quoted" note'}))
    for key, arr in (("first", a), ("second", b)):
        np.testing.assert_array_equal(codec.decode(back[key], max_elements=1 << 20).array, arr)


@pytest.mark.parametrize("encoding", ["list", "data"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16])
def test_held_numbers_are_the_text_of_the_plain_document(encoding, dtype):
    """A long array's numbers, written by orjson from the array and spliced in, make the very
    bytes orjson writes for the document of Python floats; short ones stay in the document."""
    rng = np.random.default_rng(11)
    long = (rng.standard_normal((90, 100)) * 10.0 ** rng.integers(-30, 30, (90, 100))).astype(dtype)
    long[0, :3] = [0.0, -0.0, 1.0]
    short = rng.standard_normal((3, 4)).astype(dtype)
    held = codec.Held()
    doc = {"a": codec.encode(long, encoding, held)[0], "b": codec.encode(short, encoding, held)[0], "c": [1, "x"]}
    assert len(held.texts) == 1
    plain = {"a": codec.encode(long, encoding)[0], "b": codec.encode(short, encoding)[0], "c": [1, "x"]}
    assert held.splice(orjson.dumps(doc)) == orjson.dumps(plain)
    back = orjson.loads(held.splice(orjson.dumps(doc)))
    got = codec.decode(back["a"], max_elements=1 << 20).array
    np.testing.assert_array_equal(got, long.astype(np.float64))
    assert np.signbit(got.reshape(-1)[1])
