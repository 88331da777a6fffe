"""Large nested-list bodies read by simdjson (fastlists.py): the same tensors orjson and NumPy
read, or no answer at all (and orjson reads the body).

The oracle is the usual path: orjson.loads, then codec.decode of each tensor."""

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bncheck.server import Settings, codec, fastlists, runner
from bncheck.server.errors import ProblemError
from bncheck.server.schemas import TENSOR_FIELDS, TENSOR_GROUPS

LIMIT = 1 << 20


def _fast(text: bytes):
    return fastlists.parse(text, TENSOR_FIELDS, TENSOR_GROUPS, min_bytes=0)


def _usual(value):
    return codec.decode(value, max_elements=LIMIT)


def _tensors(doc):
    yield from ((k, v) for k, v in doc.items() if k in TENSOR_FIELDS)
    for k, v in (doc.get("candidate") or {}).items():
        yield f"candidate.{k}", v


def _assert_same(text: bytes) -> bool:
    """Whatever fastlists returns is what the usual path reads; True when it answered."""
    fast = _fast(text)
    if fast is None:
        return False
    slow = orjson.loads(text)
    assert fast.keys() == slow.keys()
    fast_tensors, slow_tensors = dict(_tensors(fast)), dict(_tensors(slow))
    assert fast_tensors.keys() == slow_tensors.keys()
    for name, value in fast_tensors.items():
        got, want = _usual(value), _usual(slow_tensors[name])
        assert got.encoding == want.encoding, name
        assert got.datatype == want.datatype, name
        assert got.array.dtype == want.array.dtype, name
        assert got.array.shape == want.array.shape, name
        assert got.array.tobytes() == want.array.tobytes(), name  # bit for bit: -0.0, the last digit
    for key in fast.keys() - TENSOR_FIELDS - {"candidate"}:
        assert fast[key] == slow[key]
        assert type(fast[key]) is type(slow[key])
    return True


def test_a_big_list_body_reads_the_same_arrays_faster_path():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 3, 5))
    body = {"x": x.tolist(), "dy": (rng.integers(-9, 9, (64, 32, 3, 5))).tolist(), "gamma": [1.5] * 32,
            "beta": {"shape": [32], "datatype": "FP16", "data": rng.standard_normal(32).round(2).tolist()},
            "variant": "kevin", "eps": 1e-3, "training": False, "finite_difference": {"method": "none"},
            "candidate": {"dx": (-x).tolist(), "dbeta": [0] * 32}, "tolerance": {"rtol": 0.01, "atol": 0}}
    text = json.dumps(body).encode()
    assert _assert_same(text)
    fast = _fast(text)
    assert isinstance(fast["x"], codec.Numbers)
    assert isinstance(fast["candidate"]["dx"], codec.Numbers)
    assert isinstance(fast["beta"]["data"], codec.Numbers)
    np.testing.assert_array_equal(fast["x"].array, x)  # and the data itself, from NumPy's own repr
    assert fast["x"].array.flags.writeable


@pytest.mark.parametrize("x", [
    "[[1, [2]], [3, 4]]",  # flattens to the same four numbers: only the count of '[' tells
    "[[1, 2], [3], [4, 5, 6]]",  # ragged with a total that fits (3, 2)
    "[[1, 2], [3, 4], 5]",
    "[[[1]], [2]]",
    "[1, []]",
    "[[], []]",
    "[]",
    "[1, true]",
    "[0, false]",
    "[1, null]",
    '[1, "2"]',
    "[1, {}]",
    "[9223372036854775808, -1]",  # NumPy: an object array, refused; not read as doubles here
    "[1e19]",  # the same magnitude as a float: left to orjson too (it cannot tell them apart)
    "[1e400]",
])
def test_what_it_is_not_sure_of_goes_to_orjson(x):
    text = f'{{"x": {x}, "dy": [1, 2]}}'.encode()
    assert _fast(text) is None


@pytest.mark.parametrize("text", [
    b'\xef\xbb\xbf{"x": [1, 2], "dy": [1, 2]}',  # a byte order mark: orjson refuses it
    b'{"x": [1, 2], "x": [3, 4], "dy": [1, 2]}',  # orjson keeps the last
    b'{"x": [1, 2], "dy": [1, 2], "variant": "q[ianfeng"}',
    b'{"x": [1, 2], "dy": [1, 2], "va[": 1}',
    b'{"x": [1, 2], "dy": [1, 2], "output": {"a": {"b": "\\u005b"}}}',  # an escaped '['
    b'{"x": [1, 2], "dy": {"shape": [2], "datatype": "FP32", "data": [1, [2]]}}',
    b'{"x": [1, 2], "dy": [1, 2], "junk": ' + json.dumps(list(range(5000))).encode() + b"}",
    b'[{"x": [1, 2]}]',
    b'{"x": [1, 2], "dy": [1, 2]',
    b'{"x": [1, 2], "dy": [1, 2]} []',
    b'{"x": [1, 2], "dy": [1, 2], "s": "\\ud800"}',
])
def test_bodies_it_leaves_to_orjson(text):
    assert _fast(text) is None


def test_small_bodies_go_to_orjson_alone():
    assert fastlists.parse(b'{"x": [1, 2], "dy": [3, 4]}', TENSOR_FIELDS, TENSOR_GROUPS) is None


_leaf = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.sampled_from(["1", "[", ""]), st.just([]), st.just([1.5]), st.just({}))


@st.composite
def _nested(draw):
    """A regular array of numbers, sometimes spoilt in one place."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    numbers = draw(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64),
                                      st.integers(-(2**53), 2**53)),
                            min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    tree = np.array(numbers, dtype=object).reshape(shape).tolist()
    if draw(st.booleans()):
        node = tree
        for _ in range(draw(st.integers(0, len(shape) - 1))):
            node = node[draw(st.integers(0, len(node) - 1))]
        i = draw(st.integers(0, len(node) - 1))
        action = draw(st.sampled_from(["wrap", "replace", "append", "drop"]))
        if action == "wrap":  # [1, 2] -> [1, [2]]: the same numbers, flattened
            node[i] = [node[i]]
        elif action == "replace":
            node[i] = draw(_leaf)
        elif action == "append":
            node.append(draw(_leaf))
        elif len(node) > 1:
            del node[i]
    return tree


@settings(max_examples=400, deadline=None)
@given(x=_nested(), dy=_nested(), wrap=st.booleans(), extra=st.dictionaries(
    st.sampled_from(["variant", "eps", "training", "output", "channel_axis"]),
    st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
              st.text(max_size=4), st.lists(st.integers(), max_size=3)), max_size=3))
def test_whatever_it_answers_is_what_orjson_and_numpy_read(x, dy, wrap, extra):
    doc = {"x": x, "dy": dy, **extra}
    if wrap:
        flat = np.array(dy, dtype=object).reshape(-1).tolist() if _regular(dy) else dy
        doc["dy"] = {"shape": [len(flat)], "datatype": "FP64", "data": flat}
    _assert_same(json.dumps(doc).encode())


def _regular(tree) -> bool:
    try:
        return np.array(tree, dtype=object).ndim >= 1
    except ValueError:
        return False


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_it_answers_for_every_regular_array_of_numbers(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-300, 18, shape)  # |x| >= 2**63: orjson's
    assert _assert_same(json.dumps({"x": x.tolist(), "dy": rng.integers(-5, 5, shape).tolist()}).encode())


def test_the_request_parser_uses_it_and_gets_the_usual_request(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 400))
    text = json.dumps({"x": x.tolist(), "dy": x[::-1].tolist(), "variant": "rocking"}).encode()
    assert len(text) > fastlists.FAST_MIN
    calls = []
    real = fastlists.parse
    monkeypatch.setattr(fastlists, "parse", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = runner.parse(text, Settings())
    assert calls
    assert real(text, TENSOR_FIELDS, TENSOR_GROUPS) is not None
    monkeypatch.setattr(fastlists, "parse", lambda *a, **k: None)
    slow = runner.parse(text, Settings())
    for name in ("x", "dy"):
        assert getattr(fast, name).array.tobytes() == getattr(slow, name).array.tobytes()
        assert getattr(fast, name).encoding == getattr(slow, name).encoding == "list"
    assert fast.variant == slow.variant == "rocking"


def test_a_big_ragged_body_gets_the_usual_message():
    rows = [[0.5] * 400 for _ in range(300)]
    rows[7] = rows[7][:-1]
    text = json.dumps({"x": rows, "dy": rows}).encode()
    assert len(text) > fastlists.FAST_MIN
    with pytest.raises(ProblemError) as info:
        runner.parse(text, Settings())
    assert info.value.status == 422
    assert "ragged" in str(info.value.errors)


def test_a_body_in_shared_memory_reads_the_same(tmp_path):
    """Large bodies reach the workers as an mmap of a /dev/shm segment (shm.py)."""
    from bncheck.server import shm

    if not shm.available():
        pytest.skip("no writable /dev/shm")
    rng = np.random.default_rng(5)
    text = json.dumps({"x": rng.standard_normal((300, 400)).tolist(),
                       "dy": rng.standard_normal((300, 400)).tolist()}).encode()
    seg = shm.Segment.create(len(text))
    assert seg is not None
    seg.write(0, text)
    seg.close()
    mapped = shm.Segment.open(seg.path, seg.size)
    try:
        got = fastlists.parse(mapped.mm, TENSOR_FIELDS, TENSOR_GROUPS)
        want = fastlists.parse(text, TENSOR_FIELDS, TENSOR_GROUPS)
        assert got is not None
        assert want is not None
        for name in ("x", "dy"):
            assert got[name].array.tobytes() == want[name].array.tobytes()
        np.testing.assert_array_equal(got["x"].array, np.array(orjson.loads(text)["x"]))
    finally:
        mapped.unlink()
    assert fastlists._count_open(memoryview(text), chunk=7) == text.count(b"[")  # pieces cut anywhere
