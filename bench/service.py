"""The HTTP service: transport overhead, JSON parsing, and liveness under load.

    python -m bench.service            (make bench)

1. /v1/check over real HTTP (b64 float32, 4M elements) against the same check
   in-process (target: at most 1.5x), timed in turn over 9 rounds after a warm-up; the
   ratio is the best over the best, and the median of each round's own ratio. The body is
   built once and sent as bncheck's client sends it (a megabyte at a time, with its length),
   and its answer read as the client reads it (client/_transport.py: up to a megabyte a read);
   the last row is the client itself, encoding the arrays and decoding the answer too.
2. Parsing 1M elements sent as nested lists against orjson.loads of the same
   text (target: at most 1.3x).
3. KServe v2 with binary tensors against the same check in-process and against /v1's
   b64 (x, dy and a candidate dx; target: v2 at most 1.15x in-process).
4. /livez latency while four large checks run (target: p99 under 50 ms).
5. Issue 17's HTTP target: a whole check with FD off on 4M float32 NCHW elements over
   /v1 (b64), v2 (binary) and v2 with the tensors in /dev/shm (system shared memory), as a
   ratio to PyTorch's CPU float64 backward timed in the same run (target: at most 8; the
   same check in-process at most 6); /v1 once more through httpx's own transport (64 KiB
   reads); and the floor under the socket rows: the same bytes through httpx and a bare
   uvicorn app that does nothing with them.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import httpx
import numpy as np
import orjson

from bncheck.client import Client, build_request
from bncheck.client._client import _json_headers, _pieces  # how the client sends a large body
from bncheck.client._transport import widen  # and how it reads a large answer
from bncheck.numerics import FDOptions, check
from bncheck.server import Settings, runner

from ._server import Server
from ._timing import best_ms, interleaved_ms, machine, median, round_ratio, table

SHAPE = (65536, 64)


def _http(url: str) -> httpx.Client:
    """An httpx client that reads answers as bncheck's Client does (client/_transport.py)."""
    return widen(httpx.Client(base_url=url, timeout=300))


def _row(ms: dict[str, list[float]], what: str, key: str) -> list[str]:
    """A row of timings against the in-process "check": best, median, and both ratios."""
    base = min(ms["check"])
    return [what, f"{min(ms[key]):.0f}", f"{median(ms[key]):.0f}", f"{min(ms[key]) / base:.2f}",
            f"{round_ratio(ms, key, 'check'):.2f}"]


def _data(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(shape) + 1).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def transport_rows(rounds: int = 9) -> list[list[str]]:
    """One worker process (max_concurrent 1), warmed by a first request as the in-process
    runs are by theirs; the three are timed in turn, round after round."""
    x, dy = _data(SHAPE)
    body = orjson.dumps(build_request(x, dy))
    with (Server(max_concurrent="1") as server, _http(server.url) as http,
          Client(base_url=server.url, timeout=300) as bn):
        def post() -> None:
            r = http.post("/v1/check", content=_pieces([body]), headers=_json_headers([body]))
            r.raise_for_status()
            r.read()

        ms = interleaved_ms({
            "check": lambda: check(x, dy, finite_difference=FDOptions("auto")),
            "runner": lambda: runner.run(body, Settings()),
            "http": post,
            "client": lambda: bn.check(x, dy),
        }, rounds=rounds)
    size = len(body) / 2**20

    def row(what: str, key: str) -> list[str]:
        return _row(ms, what, key)

    return [
        row("numerics `check()` in-process (4M float32, FD auto)", "check"),
        row(f"`runner.run`: parse {size:.0f} MiB body + check + encode", "runner"),
        row("POST /v1/check over HTTP, b64 (uvicorn, 1 worker process)", "http"),
        row("bncheck `Client.check`: encode, POST, decode the answer", "client"),
    ]


def _v2_body(tensors: dict[str, np.ndarray], parameters: dict[str, object]) -> tuple[bytes, int]:
    """A KServe v2 infer body with every tensor binary, as tritonclient builds it."""
    inputs = [{"name": name, "shape": list(a.shape), "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}}
              for name, a in tensors.items()]
    header = orjson.dumps({"inputs": inputs, "parameters": {**parameters, "binary_data_output": True}})
    return header + b"".join(a.tobytes() for a in tensors.values()), len(header)


def _posts(http: httpx.Client, v1_body: bytes, v2_body: bytes, header: int
           ) -> tuple[Callable[[], None], Callable[[], None]]:
    """POST /v1/check and a v2 infer of prebuilt bodies, sent as a client sends them."""
    def post_v1() -> None:
        r = http.post("/v1/check", content=_pieces([v1_body]), headers=_json_headers([v1_body]))
        r.raise_for_status()

    def post_v2() -> None:
        r = http.post("/v2/models/qianfeng/infer", content=_pieces([v2_body]),
                      headers={"Inference-Header-Content-Length": str(header), "Content-Length": str(len(v2_body))})
        r.raise_for_status()

    return post_v1, post_v2


def v2_rows(rounds: int = 7) -> list[list[str]]:
    """x, dy and a candidate dx (4M float32 each): the check in-process, /v1 with b64 and /v2
    with binary tensors, both bodies prebuilt and sent as a client sends them, and Triton's
    own client building its request; one worker process; timed in turn, round after round."""
    x, dy = _data(SHAPE)
    dx = check(x, dy, finite_difference=FDOptions("none")).gradients["dx"]  # type: ignore[index]
    v1_body = orjson.dumps(build_request(x, dy, candidate={"dx": dx}))
    v2_body, header = _v2_body({"x": x, "dy": dy, "candidate_dx": dx}, {"finite_difference": "auto"})
    with (Server(max_concurrent="1", max_body_bytes=str(256 << 20), client_shm="true") as server,
          _http(server.url) as http, contextlib.ExitStack() as regions):
        post_v1, post_v2 = _posts(http, v1_body, v2_body, header)

        timings = {"check": lambda: check(x, dy, candidate={"dx": dx}, finite_difference=FDOptions("auto")),
                   "v1": post_v1, "v2": post_v2}
        try:
            import tritonclient.http as triton

            client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=300)
            inputs = []
            for name, a in (("x", x), ("dy", dy), ("candidate_dx", dx)):
                t = triton.InferInput(name, list(a.shape), "FP32")
                inputs.append(t)

            def triton_infer() -> None:
                for t, a in zip(inputs, (x, dy, dx), strict=True):
                    t.set_data_from_numpy(a, binary_data=True)
                client.infer("qianfeng", inputs).as_numpy("dx")

            timings["triton"] = triton_infer
            timings["triton_shm"] = _triton_through_regions(triton, client, (x, dy, dx), regions)
        except ImportError:
            pass
        ms = interleaved_ms(timings, rounds=rounds)

    def row(what: str, key: str) -> list[str]:
        return _row(ms, what, key)

    rows = [row("numerics `check()` in-process, candidate dx (4M float32, FD auto)", "check"),
            row(f"POST /v1/check, b64 ({len(v1_body) / 2**20:.0f} MiB)", "v1"),
            row(f"POST /v2/models/qianfeng/infer, binary ({len(v2_body) / 2**20:.0f} MiB; target <= 1.15)", "v2")]
    if "triton" in ms:
        rows.append(row("tritonclient.http `infer` (builds the request, reads dx)", "triton"))
        rows.append(row("tritonclient.http `infer` through system shared memory (copies in, infers, copies dx "
                        "out)", "triton_shm"))
    return rows


def _triton_through_regions(triton: Any, client: Any, arrays: tuple[np.ndarray, ...],
                            stack: contextlib.ExitStack) -> Callable[[], None]:
    """tritonclient's own shared-memory utilities: the inputs in one region, dx into another
    (destroyed when ``stack`` closes)."""
    import tritonclient.utils.shared_memory as tshm

    n = arrays[0].nbytes
    ins = tshm.create_shared_memory_region("bench_in", f"/bncheck_bench_in_{os.getpid()}", 3 * n)
    stack.callback(tshm.destroy_shared_memory_region, ins)
    outs = tshm.create_shared_memory_region("bench_out", f"/bncheck_bench_out_{os.getpid()}", n)
    stack.callback(tshm.destroy_shared_memory_region, outs)
    client.register_system_shared_memory("bench_in", ins._shm_key, 3 * n)
    client.register_system_shared_memory("bench_out", outs._shm_key, n)
    inputs = [triton.InferInput(name, list(a.shape), "FP32").set_shared_memory("bench_in", n, i * n)
              for i, (name, a) in enumerate(zip(("x", "dy", "candidate_dx"), arrays, strict=True))]
    dx_out = triton.InferRequestedOutput("dx")
    dx_out.set_shared_memory("bench_out", n)

    def infer() -> None:
        tshm.set_shared_memory_region(ins, list(arrays))
        client.infer("qianfeng", inputs, outputs=[dx_out, triton.InferRequestedOutput("passed")])
        tshm.get_contents_as_numpy(outs, np.float32, list(arrays[0].shape)).copy()

    return infer


def parse_rows() -> list[list[str]]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 1024)).tolist()
    dy = rng.standard_normal((512, 1024)).tolist()
    text = json.dumps({"x": x, "dy": dy, "variant": "qianfeng", "training": True}).encode()
    settings = Settings()
    loads_ms = best_ms(lambda: orjson.loads(text), repeat=5)
    parse_ms = best_ms(lambda: runner.parse(text, settings), repeat=5)
    stdlib_ms = best_ms(lambda: json.loads(text), repeat=3)
    return [
        [f"orjson.loads, 1M numbers as nested lists ({len(text) / 2**20:.0f} MiB)", f"{loads_ms:.0f}", "1.00"],
        ["bncheck parse: simdjson straight into arrays + schema", f"{parse_ms:.0f}", f"{parse_ms / loads_ms:.2f}"],
        ["stdlib json.loads (FastAPI's body parser)", f"{stdlib_ms:.0f}", f"{stdlib_ms / loads_ms:.2f}"],
    ]


def _load(url: str, started: Any, stop: Any, done: Any) -> None:
    """livez_rows' load, in a process of its own: four clients posting 4M-element checks back
    to back until ``stop``."""
    x, dy = _data(SHAPE)
    body = orjson.dumps(build_request(x, dy))

    def post_until_stopped() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while not stop.is_set():
                http.post("/v1/check", content=body, headers={"content-type": "application/json"})
                with done.get_lock():
                    done.value += 1

    threads = [threading.Thread(target=post_until_stopped) for _ in range(4)]
    for t in threads:
        t.start()
    started.set()
    for t in threads:
        t.join()


def livez_rows(server: Server, seconds: float = 15.0) -> list[list[str]]:
    """/livez probed every 10 ms while four clients keep four checks running. The clients run
    in another process: in the prober's own, their threads held its GIL for tens of
    milliseconds at a time (reading and joining 22 MiB answers), and that waiting was counted
    as the server's (p99 35-52 ms with them beside the prober, 12-16 ms apart, same server)."""
    ctx = multiprocessing.get_context("spawn")
    started, stop, done = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    loader = ctx.Process(target=_load, args=(server.url, started, stop, done))
    loader.start()
    started.wait(120)
    time.sleep(1.0)
    latencies = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            http.get("/livez").raise_for_status()
            latencies.append((time.perf_counter() - start) * 1e3)
            time.sleep(0.01)
    stop.set()
    loader.join()
    lat = np.array(latencies)
    return [[f"/livez while 4 checks of 4M elements run ({len(lat)} probes, {done.value} checks done)",
             f"{np.percentile(lat, 50):.1f}", f"{np.percentile(lat, 99):.1f}", f"{lat.max():.1f}"]]


def whole_check_http_rows(rounds: int = 7) -> list[list[str]]:
    """A whole check with FD off on 4M float32 NCHW elements (16, 64, 64, 64), gradients
    returned: in-process, /v1 with b64 and v2 with binary tensors (one warm worker process),
    timed in turn, each as a ratio to PyTorch's CPU float64 backward on the same data."""
    from ._timing import torch_or_none
    from .core import _torch_backward_ms

    torch = torch_or_none()
    if torch is None:
        return []
    shape = (16, 64, 64, 64)
    x, dy = _data(shape)
    gamma = np.ones(shape[1])
    torch_ms = _torch_backward_ms(torch, x, dy, gamma)
    v1_body = orjson.dumps(build_request(x, dy, finite_difference="none"))
    v2_body, header = _v2_body({"x": x, "dy": dy}, {"finite_difference": "none"})
    echo_command = ["-m", "uvicorn", "bench._echo:app", "--log-level", "warning"]
    with (Server(max_concurrent="1", max_body_bytes=str(256 << 20), client_shm="true") as server,
          Server(echo_command) as echo, _http(server.url) as http, _http(echo.url) as bare,
          httpx.Client(base_url=server.url, timeout=300) as plain, _Regions(http, x) as regions):
        post_v1, post_v2 = _posts(http, v1_body, v2_body, header)
        post_v1_plain = _posts(plain, v1_body, v2_body, header)[0]
        dx = check(x, dy, finite_difference=FDOptions("none")).gradients["dx"]  # type: ignore[index]
        if not np.array_equal(regions.post(x, dy), dx):
            msg = "dx through shared memory differs from the check's"
            raise AssertionError(msg)

        def post_bare() -> None:  # the v2 body up and dx's bytes down, nothing else
            r = bare.post("/", content=_pieces([v2_body]), headers={"Content-Length": str(len(v2_body)),
                                                                    "X-Answer-Bytes": str(x.nbytes)})
            r.raise_for_status()

        ms = interleaved_ms({"check": lambda: check(x, dy, finite_difference=FDOptions("none")),
                             "v1": post_v1, "v1 plain": post_v1_plain, "v2": post_v2,
                             "shm": lambda: regions.post(x, dy), "bare": post_bare},
                            rounds=rounds)

    def row(what: str, key: str, target: str) -> list[str]:
        return [what, f"{min(ms[key]):.0f}", f"{median(ms[key]):.0f}", f"{min(ms[key]) / torch_ms:.1f}", target]

    return [["PyTorch CPU float64 `native_batch_norm_backward`", f"{torch_ms:.1f}", "", "1.0", ""],
            row("`check()` in-process, FD off", "check", "<= 6"),
            row(f"POST /v1/check, b64 ({len(v1_body) / 2**20:.0f} MiB), FD off, dx returned", "v1", "<= 8"),
            row("the same, read by httpx's own transport (64 KiB reads, not bncheck's client's 1 MiB)", "v1 plain", ""),
            row(f"POST /v2/models/qianfeng/infer, binary ({len(v2_body) / 2**20:.0f} MiB), FD off", "v2", "<= 8"),
            row("the same infer through system shared memory (the client's copies in and out included)", "shm",
                "<= 8"),
            row(f"the transport alone: the same {len(v2_body) / 2**20:.0f} MiB up and dx's {x.nbytes / 2**20:.0f} MiB "
                "down, httpx to a bare uvicorn app (bench/_echo.py), no check", "bare", "")]


class _Regions:
    """x and dy in one /dev/shm region, dx into another (the system shared memory extension,
    as a client on the server's host uses it): ``post`` copies x and dy in, infers, and
    copies dx out."""

    def __init__(self, http: httpx.Client, x: np.ndarray) -> None:
        self.http, self.shape, self.nbytes = http, x.shape, x.nbytes
        self.body = orjson.dumps({
            "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": x.nbytes,
                                       "shared_memory_offset": i * x.nbytes}} for i, name in enumerate(("x", "dy"))],
            "outputs": [{"name": "dx", "parameters": {"shared_memory_region": "out",
                                                      "shared_memory_byte_size": x.nbytes}}, {"name": "passed"}],
            "parameters": {"finite_difference": "none"}})

    def __enter__(self) -> _Regions:
        self.made = [shared_memory.SharedMemory(create=True, size=size) for size in (2 * self.nbytes, self.nbytes)]
        for name, seg in zip(("in", "out"), self.made, strict=True):
            r = self.http.post(f"/v2/systemsharedmemory/region/{name}/register", json={"key": seg.name,
                                                                                      "byte_size": seg.size})
            r.raise_for_status()
        return self

    def post(self, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
        inputs = np.ndarray((2, *self.shape), np.float32, self.made[0].buf)
        inputs[0], inputs[1] = x, dy
        r = self.http.post("/v2/models/qianfeng/infer", content=self.body,
                           headers={"content-type": "application/json"})
        r.raise_for_status()
        return np.ndarray(self.shape, np.float32, self.made[1].buf).copy()

    def __exit__(self, *exc: object) -> None:
        for seg in self.made:
            seg.close()
            seg.unlink()


def main() -> None:
    print(f"# bncheck service ({machine()})\n")
    rows = whole_check_http_rows()
    if rows:
        print(table(["4M float32 NCHW (16, 64, 64, 64)", "best ms", "median ms", "÷ PyTorch (best)", "target"], rows))
        print()
    print(table(["what", "best ms", "median ms", "÷ in-process (best)", "÷ in-process (median of rounds)"],
                transport_rows()))
    print()
    print(table(["what", "best ms", "median ms", "÷ in-process (best)", "÷ in-process (median of rounds)"],
                v2_rows()))
    print()
    print(table(["what", "ms (best of 5)", "÷ orjson.loads"], parse_rows()))
    print()
    with Server(max_concurrent="4") as server:
        print(table(["what", "p50 ms", "p99 ms", "max ms"], livez_rows(server)))


if __name__ == "__main__":
    main()
