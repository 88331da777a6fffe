"""Every Python and shell block of the README runs as written against a live server.

The only change made to a block is the address: `make serve`'s http://127.0.0.1:8000 (or
127.0.0.1:8000 for tritonclient) becomes the test server's, which runs as `make serve` runs one
(BNCHECK_CLIENT_SHM=true, for the shared-memory blocks). Blocks that start a server or need
Docker (`make serve`, `docker ...`) are the ones not run here; `make test` itself and
docker-smoke cover those.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.conftest import LiveServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
NOT_HERE = ("make serve", "make test", "docker ", "podman ")


def _blocks():
    found = [(lang, code) for lang, code in BLOCK.findall((ROOT / "README.md").read_text())
             if lang in ("python", "sh") and not any(word in code for word in NOT_HERE)]
    return found


BLOCKS = _blocks()


@pytest.fixture
def shm_server():
    with LiveServer(client_shm=True) as server:
        yield server


def test_the_readme_has_its_examples():
    langs = [lang for lang, _ in BLOCKS]
    assert langs.count("python") >= 1
    assert langs.count("sh") >= 3  # curl, curl b64, the command line


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{lang}-{code.strip().splitlines()[0][:40]}" for lang, code in BLOCKS])
def test_a_readme_block_runs_as_written(shm_server, tmp_path, index):
    lang, code = BLOCKS[index]
    code = code.replace("http://127.0.0.1:8000", shm_server.url).replace("127.0.0.1:8000", shm_server.url[7:])
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
