"""Every example in examples/ runs against a live local server when its toolchain is present."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.conftest import LiveServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run(cmd, **kw):
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False, **kw)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_curl_lists(live_server):
    r = _run(["sh", str(EXAMPLES / "curl" / "check_lists.sh"), live_server.url])
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["passed"] is True
    assert body["checks"]["candidate"]["dbeta"]["passed"] is True


@needs_curl
def test_curl_b64(live_server):
    r = _run(["sh", str(EXAMPLES / "curl" / "check_b64.sh"), live_server.url])
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    dx = body["checks"]["candidate"]["dx"]
    assert dx["nonfinite"] == 1 and dx["worst_index"] == [1, 0]
    assert body["checks"]["finite_difference"]["method"] == "brute"
    assert body["shape"] == [3, 2]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_node(live_server):
    r = _run(["node", str(EXAMPLES / "node" / "check.mjs"), live_server.url])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "candidate dx: PASSED" in r.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpp(live_server):
    r = _run(["sh", str(EXAMPLES / "cpp" / "verify.sh"), live_server.url])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("bncheck: PASSED")
    assert "candidate          passed" in r.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpp_kserve_v2_binary(live_server):
    """The C++ kernel over KServe v2 with raw binary tensors: passes as written, fails on channel 3
    with the planted bug."""
    r = _run(["sh", str(EXAMPLES / "cpp" / "v2_infer.sh"), live_server.url])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["bncheck v2: PASSED", "bncheck v2: FAILED (dx channels 3)"]


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cpp_kserve_v2_shared_memory():
    """The same C++ kernel writing its outputs into POSIX shared memory, checked through a
    registered region (no tensor on the socket): the same two verdicts, and nothing left in
    /dev/shm or registered."""
    before = set(os.listdir("/dev/shm"))
    with LiveServer(client_shm=True) as server:
        r = _run(["sh", str(EXAMPLES / "cpp" / "v2_infer.sh"), server.url, "--shm"])
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines() == ["bncheck v2: PASSED", "bncheck v2: FAILED (dx channels 3)"]
        assert httpx.get(f"{server.url}/v2/systemsharedmemory/status").json() == []
    assert not [f for f in set(os.listdir("/dev/shm")) - before if f.startswith("bncheck_cpp_example")]


def test_python_tritonclient(live_server):
    pytest.importorskip("tritonclient.http")
    r = _run([sys.executable, str(EXAMPLES / "triton" / "check.py"), live_server.url.removeprefix("http://")])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "passed: False" in lines
    assert "dx failed channels: 2" in lines
    assert "dgamma passed: True" in lines
