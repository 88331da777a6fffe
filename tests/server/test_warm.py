"""A worker warms the device its checks run on before it is ready (numerics.check.warm_device;
what the warming compiles is tested on a GPU in tests/numerics/test_gpu.py)."""

import importlib
import logging
import os

import pytest

from bncheck.server import workers
from bncheck.server.settings import Settings

check_module = importlib.import_module("bncheck.numerics.check")  # the package's `check` is the function


@pytest.mark.parametrize("device", ["cpu", "gpu", "auto"])
def test_a_worker_warms_the_device_of_the_settings(monkeypatch, device):
    asked = []
    monkeypatch.setattr(check_module, "warm_device", lambda d: asked.append(d) or False)
    assert workers._warm(device) == os.getpid()
    assert asked == [device]


def test_a_failed_warming_is_logged_and_the_worker_still_starts(monkeypatch, caplog):
    def broken(device):
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(check_module, "warm_device", broken)
    with caplog.at_level(logging.ERROR, logger="bncheck.workers"):
        assert workers._warm("gpu") == os.getpid()
    assert "warming the GPU failed" in caplog.text
    assert "no CUDA driver" in caplog.text


class _Pool:
    def __init__(self):
        self.submitted = []

    def submit(self, fn, *args):
        from concurrent.futures import Future

        self.submitted.append((fn, args))
        done = Future()
        done.set_result(os.getpid())
        return done


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_workers_are_warmed_for_the_settings_device(monkeypatch, device):
    pool = _Pool()
    monkeypatch.setattr(workers.ProcessWorkers, "pool", property(lambda self: pool))
    w = workers.ProcessWorkers(Settings(device=device, max_concurrent=3))
    w._warm_up()
    assert pool.submitted == [(workers._warm, (device,))] * 3
    assert w.ready
