"""Bodies through shared memory: segments, their clean-up, and the pipe as the fallback."""

import base64
import errno
import os
import socket
import time

import httpx
import numpy as np
import pytest

from bncheck.numerics import FDOptions, check
from bncheck.server import shm

from ..conftest import LiveServer

pytestmark = pytest.mark.skipif(not shm.available(), reason="no writable /dev/shm")


def _mine() -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(f"{shm.PREFIX}{os.getpid()}-*"))


def test_a_segment_round_trips_and_is_removed():
    seg = shm.Segment.create(3 << 20)
    assert seg is not None
    data = os.urandom(3 << 20)
    seg.write(0, data[:1000])
    seg.write(1000, memoryview(data)[1000:])
    assert seg.read_back(2000) == data[:2000]
    seg.close()
    other = shm.Segment.open(seg.path, seg.size)
    assert other.mm[: other.size] == data
    assert other.mm.find(data[1000:1016]) == 1000
    other.unlink()
    assert not os.path.exists(seg.path)
    other.unlink()  # twice is harmless


def test_no_room_means_no_segment_and_a_full_disk_is_an_error_not_a_crash():
    free = os.statvfs(shm.SHM_DIR)
    before = _mine()
    assert shm.Segment.create(free.f_bavail * free.f_frsize + (1 << 30)) is None
    assert _mine() == before
    seg = shm.Segment.create(10)
    assert seg is not None
    os.close(seg.fd)
    seg.fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC, as a full /dev/shm
    with pytest.raises(OSError, match="No space") as info:
        seg.write(0, b"x" * 10)
    assert info.value.errno == errno.ENOSPC
    seg.unlink()
    assert _mine() == before


def test_a_body_that_no_longer_fits_goes_on_in_memory(monkeypatch):
    """/dev/shm fills up while the body arrives: what arrived is kept and the rest read."""
    import asyncio

    from bncheck.server import Settings, workers

    real_write = shm.Segment.write

    def full_after_first(self, offset, data):
        if offset:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, offset, data)

    monkeypatch.setattr(shm.Segment, "write", full_after_first)
    body = os.urandom(3 << 20)
    chunks = [body[i:i + (1 << 18)] for i in range(0, len(body), 1 << 18)]

    class FakeRequest:
        headers = {"content-length": str(len(body))}

        async def stream(self):
            for c in chunks:
                yield c

    got = asyncio.run(workers.ProcessWorkers(Settings()).receive(FakeRequest()))
    assert got == body
    assert _mine() == []


def test_sweep_removes_only_the_segments_of_servers_that_are_gone():
    dead = 2**22 + 12345  # above any pid_max this machine uses
    while True:
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        dead += 1
    left = shm.Segment.create(10, owner=f"{dead}-0")
    live = shm.Segment.create(10)
    assert left is not None
    assert live is not None
    assert shm.sweep() >= 1
    assert not os.path.exists(left.path)
    assert os.path.exists(live.path)
    live.unlink()


def _big_request(rng, rows=512):
    x = (rng.standard_normal((rows, 1024)) + 1).astype(np.float32)
    dy = rng.standard_normal((rows, 1024)).astype(np.float32)

    def t(a):
        return {"shape": list(a.shape), "datatype": "FP32", "b64": base64.b64encode(a.tobytes()).decode()}

    return x, dy, {"x": t(x), "dy": t(dy), "finite_difference": {"method": "none"}}


def _count(monkeypatch, name):
    calls = []
    real = getattr(shm.Segment, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(shm.Segment, name, staticmethod(counted))
    return calls


def test_large_checks_in_worker_processes_go_through_shared_memory_and_leave_nothing(monkeypatch, caplog):
    created = _count(monkeypatch, "create")
    sent = []

    class Counted(shm.SegmentResponse):
        def __init__(self, seg, *args, **kwargs):
            sent.append(seg)
            super().__init__(seg, *args, **kwargs)

    monkeypatch.setattr(shm, "SegmentResponse", Counted)
    x, dy, body = _big_request(np.random.default_rng(0))
    want = check(x, dy, finite_difference=FDOptions("none"))
    with LiveServer(executor="process", max_concurrent=1) as server:
        r = httpx.post(f"{server.url}/v1/check", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert len(r.request.content) > shm.MIN_BYTES
        assert len(r.content) > shm.MIN_BYTES
        got = r.json()["gradients"]["dx"]
        dx = np.frombuffer(base64.b64decode(got["b64"]), np.float32).reshape(x.shape)
        np.testing.assert_array_equal(dx, want.gradients["dx"])
        assert len(created) == 1  # the request, written by the server as it arrived
        assert len(sent) == 1  # the answer, written by the worker, sent from its segment
        kept = _mine()
        assert len(kept) == 2  # the body's file and the answer's, kept for the next check (shm.Pool)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'bncheck_worker_transport_total{carrier="shared_memory",direction="request"} 1.0' in metrics
        assert 'bncheck_worker_transport_total{carrier="shared_memory",direction="answer"} 1.0' in metrics
        assert 'carrier="pipe"' not in metrics
        # A smaller check on other data goes into the kept files, and nothing of the first shows
        # through (the files are longer than its body and its answer).
        x2, dy2, body2 = _big_request(np.random.default_rng(1), rows=300)
        r = httpx.post(f"{server.url}/v1/check", json=body2, timeout=120)
        assert r.status_code == 200, r.text
        dx2 = np.frombuffer(base64.b64decode(r.json()["gradients"]["dx"]["b64"]), np.float32)
        np.testing.assert_array_equal(dx2.reshape(x2.shape),
                                      check(x2, dy2, finite_difference=FDOptions("none")).gradients["dx"])
        assert len(created) == 1  # the body went into the kept file
        # The answer into the other: the first answer's file came back once sent (it goes out
        # in pieces read from it, so the transport never holds a view of it)
        assert set(_mine()) == set(kept)
        kept = _mine()
        # A client that promises more than it sends: the half-written body's file is removed.
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 4194304\r\n\r\n" + b"{" + b" " * (2 << 20))
        deadline = time.monotonic() + 30  # polled: a loaded machine may take seconds; a leak never clears
        while len(_mine()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has taken the request and given up on it
        assert len(_mine()) == 1
        assert set(_mine()) < set(kept)
    assert _mine() == []  # the server stopped: nothing kept
    # The client that went away is not a server bug: nothing is logged as an internal error.
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]


def test_without_shared_memory_the_pipe_carries_the_body(monkeypatch):
    monkeypatch.setattr(shm, "available", lambda: False)
    x, dy, body = _big_request(np.random.default_rng(1))
    with LiveServer(executor="process", max_concurrent=1) as server:
        r = httpx.post(f"{server.url}/v1/check", json=body, timeout=120)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert r.status_code == 200, r.text
    assert r.json()["passed"] is True
    assert 'bncheck_worker_transport_total{carrier="pipe",direction="request"} 1.0' in metrics  # for operators
    assert _mine() == []


def test_an_answer_nobody_waits_for_is_removed():
    import asyncio

    from bncheck.server import runner, workers

    seg = shm.Segment.create(shm.MIN_BYTES)
    assert seg is not None
    seg.close()
    outcome = runner.Outcome(b"", True, 1, {}, shared=(seg.path, seg.size))

    async def cancelled_request() -> None:
        waiter = asyncio.get_running_loop().create_future()
        waiter.cancel()
        workers._settle(waiter, (True, outcome))

    asyncio.run(cancelled_request())
    assert not os.path.exists(seg.path)


def _request_segment(body: bytes) -> shm.Segment:
    seg = shm.Segment.create(len(body))
    assert seg is not None
    seg.write(0, body)
    seg.close()
    return seg


def _same_answer(got: bytes, want: bytes) -> None:
    import orjson

    g, w = orjson.loads(got), orjson.loads(want)
    g.pop("timings_ms")
    w.pop("timings_ms")
    assert g == w


def test_a_worker_writes_its_answer_in_pieces_that_make_the_whole(monkeypatch):
    """The answer's pieces (JSON around long b64 texts) land in one segment, in order, the
    same document the joined answer is; where /dev/shm fills up meanwhile, the joined bytes."""
    import orjson

    from bncheck.server import Settings, runner, workers

    x, dy, request = _big_request(np.random.default_rng(2))
    body = orjson.dumps(request)
    want = runner.run(body, Settings()).body
    assert len(want) > shm.MIN_BYTES
    seg = _request_segment(body)
    result = workers.shared_job(seg.path, seg.size, Settings(), None, shm.owner_tag())
    seg.unlink()
    assert result.shared is not None
    assert result.body == b""
    assert result.parts == ()  # nothing unpicklable goes back to the server
    answer = shm.Segment.open(*result.shared)
    _same_answer(bytes(answer.mm[: answer.size]), want)
    answer.unlink()

    real_write = shm.Segment.write

    def full_after_first(self, offset, data):
        if offset:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, offset, data)

    seg = _request_segment(body)
    monkeypatch.setattr(shm.Segment, "write", full_after_first)
    result = workers.shared_job(seg.path, seg.size, Settings(), None, shm.owner_tag())
    monkeypatch.undo()
    seg.unlink()
    assert result.shared is None
    assert result.parts == ()
    _same_answer(result.body, want)
    assert _mine() == []

    # Into a file the server kept, longer than the answer and full of other bytes: the answer
    # is its first bytes; where /dev/shm fills up, the file is left to the server.
    kept = _request_segment(b"\xff" * (len(want) + 12345))
    seg = _request_segment(body)
    result = workers.shared_job(seg.path, seg.size, Settings(), None, shm.owner_tag(), answer_path=kept.path)
    assert result.shared is not None
    assert result.shared[0] == kept.path
    answer = shm.Segment.open(*result.shared)
    _same_answer(bytes(answer.mm[: answer.size]), want)
    assert answer.capacity == len(want) + 12345
    answer.close()
    monkeypatch.setattr(shm.Segment, "write", full_after_first)
    result = workers.shared_job(seg.path, seg.size, Settings(), None, shm.owner_tag(), answer_path=kept.path)
    monkeypatch.undo()
    assert result.shared is None
    _same_answer(result.body, want)
    assert os.path.exists(kept.path)
    seg.unlink()
    kept.unlink()
    assert _mine() == []


def test_an_answer_goes_out_in_pieces_and_its_file_comes_back_even_if_the_transport_holds_them():
    import asyncio

    pool = shm.Pool(shm.owner_tag(), keep=4, idle_s=60)
    answer = os.urandom(shm.SEND_PIECE * 2 + 12345)  # two whole pieces and a part of one
    for offset in (0, 40):
        held = []

        async def send_and_hold(message, held=held):  # a transport that has sent nothing yet
            held.append(message)

        written = _pool_segment(pool, answer, offset)
        response = shm.SegmentResponse(shm.Segment(written.path, len(answer), offset=offset), keep=pool.give)
        asyncio.run(response(None, None, send_and_hold))
        again = pool.kept()
        assert again is not None
        assert again.path == written.path  # kept for the next answer, though nothing has been sent yet
        again = shm.Segment.reopen(again.path, len(answer))
        assert again is not None
        again.write(0, bytes(len(answer)))  # the next answer, written over the first
        pool.give(again)
        start, *pieces = held
        assert dict(start["headers"])[b"content-length"] == str(len(answer)).encode()
        assert [len(m["body"]) for m in pieces] == [shm.SEND_PIECE, shm.SEND_PIECE, 12345]
        assert [m["more_body"] for m in pieces] == [True, True, False]
        assert b"".join(m["body"] for m in pieces) == answer  # what was sent is not what was written after
        pool.clear()
    assert _mine() == []


def _pool_segment(pool: shm.Pool, data: bytes, offset: int = 0) -> shm.Segment:
    seg = pool.take(len(data), offset)
    assert seg is not None
    seg.write(0, data)
    seg.close()
    return seg


def test_a_pool_reuses_a_file_a_body_fits_in_and_reads_back_only_the_new_body():
    pool = shm.Pool(shm.owner_tag(), keep=2, idle_s=60)
    first = _pool_segment(pool, os.urandom(3 << 20))
    pool.give(first)
    assert _mine() == [os.path.basename(first.path)]  # kept
    data = os.urandom((1 << 20) + 7)
    second = _pool_segment(pool, data, offset=40)
    assert second.path == first.path  # the same file, with its pages
    assert second.capacity == 3 << 20
    read = shm.Segment.open(second.path, second.size, 40)
    assert bytes(read.body) == data  # nothing of the first body shows through
    read.close()
    bigger = pool.take(4 << 20)  # fits in no kept file: a new one
    assert bigger is not None
    assert bigger.path != first.path
    pool.give(second)
    pool.give(bigger)
    assert len(_mine()) == 2
    assert [pool.kept().capacity, pool.kept().capacity] == [4 << 20, 3 << 20]  # the largest first, for answers
    assert pool.kept() is None
    assert len(_mine()) == 2  # handed out, not removed
    shm.remove_all(pool.owner)
    assert _mine() == []


def test_a_pool_keeps_the_largest_files_and_never_one_still_mapped():
    pool = shm.Pool(shm.owner_tag(), keep=1, idle_s=60)
    small, large = _pool_segment(pool, b"a" * 1000), _pool_segment(pool, b"b" * 5000)
    pool.give(small)
    pool.give(large)  # over ``keep``: the smaller one goes
    assert _mine() == [os.path.basename(large.path)]
    mapped = shm.Segment.open(large.path, 5000)
    view = memoryview(mapped.mm)[:10]  # a view still alive (a transport still sending from it)
    pool.take(100)  # takes the kept file, which is now handed out
    assert pool.give(mapped) is None
    assert not os.path.exists(large.path)  # removed, not kept: it could still be read
    assert bytes(view) == b"b" * 10  # and the view still reads what it had
    view.release()
    assert pool.clear() == 0
    assert _mine() == []


def test_a_pool_gives_its_files_back_when_idle_or_when_a_new_body_needs_the_room(monkeypatch):
    pool = shm.Pool(shm.owner_tag(), keep=2, idle_s=0.3)
    seg = _pool_segment(pool, b"x" * 1000)
    pool.give(seg)
    assert os.path.exists(seg.path)
    deadline = time.monotonic() + 10  # polled: a loaded machine may be slow; a leak never clears
    while os.path.exists(seg.path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(seg.path)
    # Kept again; then a body that fits in none finds no room until the kept file is gone.
    seg = _pool_segment(pool, b"y" * 1000)
    pool.give(seg)
    real_create = shm.Segment.create
    monkeypatch.setattr(shm.Segment, "create", staticmethod(
        lambda size, owner=None, offset=0: None if _mine() else real_create(size, owner, offset)))
    big = pool.take(1 << 20)
    assert big is not None
    assert not os.path.exists(seg.path)
    assert _mine() == [os.path.basename(big.path)]
    big.unlink()


def test_a_small_answer_from_a_large_body_comes_back_as_bytes():
    import orjson

    from bncheck.server import Settings, workers

    _, _, request = _big_request(np.random.default_rng(3))
    request["output"] = {"gradients": False}
    seg = _request_segment(orjson.dumps(request))
    result = workers.shared_job(seg.path, seg.size, Settings(), None, shm.owner_tag())
    seg.unlink()
    assert result.shared is None
    assert result.parts == ()
    assert orjson.loads(result.body)["passed"] is True
    assert _mine() == []


def test_a_large_list_body_over_http_reads_and_answers_as_in_process():
    """Nested lists of 400K elements: parsed in place from shared memory (fastlists.py), and
    the answer's lists written straight from the arrays (codec.Held), through a segment."""
    import json

    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 1000)) + 1
    dy = rng.standard_normal((400, 1000))
    body = json.dumps({"x": x.tolist(), "dy": dy.tolist(), "dtype": "float64",
                       "finite_difference": {"method": "none"}}).encode()
    want = check(x, dy, dtype="float64", finite_difference=FDOptions("none"))
    with LiveServer(executor="process", max_concurrent=1) as server:
        r = httpx.post(f"{server.url}/v1/check", content=body, headers={"content-type": "application/json"},
                       timeout=120)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["passed"] is True
    np.testing.assert_array_equal(np.array(got["gradients"]["dx"]), want.gradients["dx"])
    np.testing.assert_array_equal(np.array(got["gradients"]["dgamma"]), want.gradients["dgamma"])
    assert 'bncheck_worker_transport_total{carrier="shared_memory",direction="request"} 1.0' in metrics
    assert 'bncheck_worker_transport_total{carrier="shared_memory",direction="answer"} 1.0' in metrics
    assert _mine() == []


def test_a_v2_body_in_a_segment_is_read_in_place_past_an_aligning_offset():
    """The server writes a v2 body into its segment past a few bytes that put the binary part
    on a 64-byte boundary (shm.aligning): the worker's tensors are then read-only views of
    the mapping, not copies. Without the offset, a JSON header of odd length leaves them
    unaligned, and they are copied. The values are the same either way."""
    import contextlib

    import orjson

    from bncheck.server import Settings, kserve, regions, runner

    rng = np.random.default_rng(4)
    x, dy = (rng.standard_normal((64, 3, 64, 64)).astype(np.float32) for _ in range(2))
    inputs = [{"name": n, "shape": list(a.shape), "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}}
              for n, a in (("x", x), ("dy", dy))]
    header = orjson.dumps({"id": "odd", "inputs": inputs})
    header += b" " * (1 - len(header) % 4 + 4) if len(header) % 4 == 0 else b""  # not a multiple of 4
    assert len(header) % 4
    body = header + x.tobytes() + dy.tobytes()
    call = runner.Call("qianfeng", len(header))
    for offset, in_place in ((shm.aligning(len(header)), True), (0, False)):
        seg = shm.Segment.create(len(body), offset=offset)
        assert seg is not None
        seg.write(0, body)
        seg.close()
        mapped = shm.Segment.open(seg.path, seg.size, offset)
        with contextlib.closing(regions.Access()) as access:
            req, _, _ = kserve.parse(mapped.body, call, Settings(), access)
        got = {"x": req.x.array, "dy": req.dy.array}
        for name, want in (("x", x), ("dy", dy)):
            np.testing.assert_array_equal(got[name], want)
            if in_place:
                assert got[name].ctypes.data % 64 == 0
            assert np.shares_memory(got[name], np.frombuffer(mapped.mm, np.uint8)) is in_place, (name, offset)
            assert got[name].flags.writeable is not in_place
        del req, got
        mapped.unlink()
    assert _mine() == []


def test_no_address_space_to_map_the_body_is_a_413_not_a_bug(monkeypatch):
    """Under BNCHECK_WORKER_MEMORY_MB (RLIMIT_AS) mapping a large body is the first allocation to
    fail, with ENOMEM from mmap rather than MemoryError: the same clean refusal."""
    import orjson

    from bncheck.server import Settings, workers

    _, _, request = _big_request(np.random.default_rng(4))
    seg = _request_segment(orjson.dumps(request))

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(shm.Segment, "open", no_room)
    try:
        result = workers.shared_job(seg.path, seg.size, Settings(worker_memory_mb=300), None, shm.owner_tag())
    finally:
        seg.unlink()
    assert result.status == 413
    problem = orjson.loads(result.body)
    assert problem["type"] == "/problems/too-big-for-memory"
    assert "BNCHECK_WORKER_MEMORY_MB=300" in problem["detail"]
