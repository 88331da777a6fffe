"""httpx transports that read an answer a megabyte at a time.

httpcore reads a response 64 KiB at a time (``HTTP11Connection.READ_NUM_BYTES``), and h11
copies every piece into its buffer and out again: reading a 4M-element check's /v1 answer
(22 MiB of b64) took httpx 56-138 ms on the benchmark machine, 34-59 ms with reads of up to
``READ_BYTES`` (a plain socket: 11-24 ms), and it is part of every large check over HTTP
(``python -m bench.service``, README Benchmarks). Such a read returns what the socket has,
however much that is, and the pieces are as many times fewer.

It is done where httpcore lets it be done: a network backend (httpcore's public interface)
whose streams read more than they are asked to, given to the connection pool of the
transport httpx made for a client. httpx has no parameter for the backend, so the pool's is
replaced after the fact; where those attributes are not there (another httpx or httpcore),
the transport is httpx's own, unchanged.
"""

from __future__ import annotations

from typing import Any

import httpcore
import httpx

__all__ = ["READ_BYTES", "widen"]

READ_BYTES = 1 << 20


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max(max_bytes, READ_BYTES), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, timeout)

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self.inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self.inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self.inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _AsyncStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self.inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self.inner.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self.inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self.inner = inner

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self.inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncStream(await self.inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def widen(client: Any) -> Any:
    """``client`` (an ``httpx.Client`` or ``AsyncClient``), its own transport (the one httpx
    made for it; a proxy's, from the environment, is left alone) reading up to ``READ_BYTES``
    at a time. The client is made by httpx as usual, so that its environment's proxies still
    apply: httpx ignores them when it is given a transport."""
    made = getattr(client, "_transport", None)
    if isinstance(made, httpx.HTTPTransport):
        _widen(made, httpcore.ConnectionPool, _Backend)
    elif isinstance(made, httpx.AsyncHTTPTransport):
        _widen(made, httpcore.AsyncConnectionPool, _AsyncBackend)
    return client


def _widen(made: Any, pool_type: type[Any], backend: type[Any]) -> None:
    pool: Any = getattr(made, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if type(pool) is pool_type and inner is not None:  # exactly httpcore's pool: no proxy in between
        pool._network_backend = backend(inner)
