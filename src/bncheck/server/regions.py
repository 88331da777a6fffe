"""The system shared memory extension of the KServe v2 protocol (Triton's), for clients on
the same host.

A client creates a POSIX shared-memory object (``shm_open``: a file in /dev/shm), writes
its tensors into it, and registers a window of it as a named *region*
(``POST /v2/systemsharedmemory/region/<name>/register`` with key, offset and byte_size).
An infer input then names a region, a byte size and an offset instead of carrying data,
and an output asked for with the same parameters is written into the region instead of
being sent. The tensors never cross the socket: a 4M-element check moves a few hundred
bytes of JSON instead of 48 MiB (bench/service.py measures both).

The server process keeps the registry (``Registry``: names, keys, windows, checked
against the object when registered); each infer carries a snapshot of it (``Region``s) to
the worker, which maps what the request reads and writes what it asks for (``Access``).
Off by default, as in Triton (``--allow-client-shm``): with ``BNCHECK_CLIENT_SHM=true``
a client may make the server read and write any /dev/shm object the server's user may
open, bncheck's own segments excepted; set it only where the clients are trusted (and
with BNCHECK_TOKEN, registering needs the token). Inputs are read in place while the
check runs, as Triton does: a client must not change them until its answer arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import mmap
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ProblemError, bad_request
from .shm import PREFIX, SHM_DIR, pwrite_all

__all__ = ["Access", "Region", "Registry", "disabled", "region_parameters"]

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_KEY = re.compile(r"/?[A-Za-z0-9_.:-]{1,200}")
PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
# Errors opening an object that come from the name the client gave (a symlink: ELOOP).
_CALLERS = {errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENXIO}


def disabled() -> ProblemError:
    detail = ("system shared memory is off on this server; start it with BNCHECK_CLIENT_SHM=true to let "
              "clients on its host register regions")
    return ProblemError("shm-disabled", detail, [("systemsharedmemory", detail)])


@dataclass(frozen=True)
class Region:
    """A registered window of a shared-memory object: ``byte_size`` bytes from ``offset``."""

    name: str
    key: str
    offset: int
    byte_size: int

    @property
    def path(self) -> Path:
        return SHM_DIR / self.key.removeprefix("/")


def _int(value: Any, field: str, *, least: int) -> int:
    if type(value) is not int or value < least:
        raise bad_request(field, f"must be an integer >= {least}")
    return value


def _open(region: Region, field: str, flags: int) -> int:
    """A descriptor of the object behind ``region``; 400 naming ``field`` when it is gone,
    not a plain file, or (now) smaller than the region."""
    try:
        fd = os.open(region.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise bad_request(field, f"no shared-memory object {region.key!r} (looked for {region.path})") from None
    except OSError as exc:
        if exc.errno not in _CALLERS:
            raise  # out of descriptors or memory: ours, a 500, not the caller's 400
        raise bad_request(field, f"cannot open shared-memory object {region.key!r}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size < region.offset + region.byte_size:
        os.close(fd)
        what = "is not a shared-memory object" if not stat.S_ISREG(st.st_mode) else (
            f"has {st.st_size:,} bytes, fewer than offset + byte_size = {region.offset + region.byte_size:,}")
        raise bad_request(field, f"{region.key!r} {what}")
    return fd


def _not_registered(name: str) -> ProblemError:
    return bad_request("region", f"no region {name[:128]!r} is registered")


class Registry:
    """The regions registered with this server, by name (the server process's, guarded by a lock)."""

    def __init__(self, max_regions: int) -> None:
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, body: Any) -> Region:
        if not _NAME.fullmatch(name):
            raise bad_request("region", "a region's name is 1 to 128 letters, digits and _ . : -")
        if not isinstance(body, dict):
            raise bad_request("body", "send {\"key\": ..., \"offset\": ..., \"byte_size\": ...}")
        key = body.get("key")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.lstrip("/") in (".", ".."):
            raise bad_request("key", "must name a shared-memory object as shm_open does: '/name' or 'name', "
                                     "up to 200 letters, digits and _ . : -")
        if key.lstrip("/").startswith(PREFIX):
            raise bad_request("key", f"objects named {PREFIX}* are bncheck's own")
        region = Region(name, key, _int(body.get("offset", 0), "offset", least=0),
                        _int(body.get("byte_size"), "byte_size", least=1))
        os.close(_open(region, "key", os.O_RDONLY))
        with self._lock:
            if name in self._regions:
                raise bad_request("region", f"{name!r} is already registered; unregister it first")
            if len(self._regions) >= self.max_regions:
                raise bad_request("region", f"{self.max_regions} regions are registered already, the most this "
                                            "server keeps (BNCHECK_MAX_SHM_REGIONS)")
            self._regions[name] = region
        return region

    def unregister(self, name: str | None) -> None:
        """One region, or every one (``name`` None); an unknown name is a 400, as in Triton."""
        with self._lock:
            if name is None:
                self._regions.clear()
            elif self._regions.pop(name, None) is None:
                raise _not_registered(name)

    def status(self, name: str | None) -> list[dict[str, Any]]:
        with self._lock:
            if name is None:
                return [dataclasses.asdict(r) for r in self._regions.values()]
            if name not in self._regions:
                raise _not_registered(name)
            return [dataclasses.asdict(self._regions[name])]

    def snapshot(self) -> tuple[Region, ...]:
        with self._lock:
            return tuple(self._regions.values())


@dataclass(frozen=True)
class Window:
    """Where a tensor is: ``size`` bytes at ``offset`` into ``region``."""

    region: Region
    offset: int
    size: int


def region_parameters(params: dict[str, Any], field: str, regions: tuple[Region, ...]) -> Window | None:
    """The window an input's or output's parameters name, or None where they name none.
    ``field`` (``x``, ``outputs[0]``) prefixes the errors."""
    given = [p for p in PARAMETERS if p in params]
    if not given:
        return None
    for p in PARAMETERS[:2]:
        if p not in params:
            raise bad_request(f"{field}.parameters.{p}", "is required with " + ", ".join(given))
    name = params["shared_memory_region"]
    region = next((r for r in regions if r.name == name), None)
    if region is None:
        shown = repr(name)[:130]
        raise bad_request(f"{field}.parameters.shared_memory_region", f"no region {shown} is registered")
    size = _int(params["shared_memory_byte_size"], f"{field}.parameters.shared_memory_byte_size", least=0)
    offset = _int(params.get("shared_memory_offset", 0), f"{field}.parameters.shared_memory_offset", least=0)
    if offset + size > region.byte_size:
        raise bad_request(f"{field}.parameters.shared_memory_byte_size",
                          f"offset {offset:,} + byte_size {size:,} is past the end of region {region.name!r} "
                          f"({region.byte_size:,} bytes)")
    return Window(region, offset, size)


class Access:
    """A worker's reads and writes of regions for one request: ``read`` is a read-only view
    of a window (each region is opened and mapped once a request; views stay valid until
    ``close``), ``write`` stores bytes with pwrite (never past the window, so never growing
    the object)."""

    def __init__(self) -> None:
        self._maps: dict[str, tuple[mmap.mmap, int]] = {}  # region name -> its mapping, the region's start in it

    def read(self, window: Window, field: str) -> memoryview:
        region = window.region
        if region.name not in self._maps:
            fd = _open(region, field, os.O_RDONLY)
            try:
                page = region.offset - region.offset % mmap.ALLOCATIONGRANULARITY
                mm = mmap.mmap(fd, region.offset + region.byte_size - page, prot=mmap.PROT_READ, offset=page)
            finally:
                os.close(fd)
            self._maps[region.name] = (mm, region.offset - page)
        mm, start = self._maps[region.name]
        return memoryview(mm)[start + window.offset:start + window.offset + window.size]

    def write(self, window: Window, data: Any, field: str) -> None:
        view = memoryview(data).cast("B")
        if view.nbytes > window.size:
            raise bad_request(f"{field}.parameters.shared_memory_byte_size",
                              f"is {window.size:,} bytes, too few for this output's {view.nbytes:,}")
        fd = _open(window.region, field, os.O_WRONLY)
        try:
            pwrite_all(fd, view, window.region.offset + window.offset)
        finally:
            os.close(fd)

    def close(self) -> None:
        for mm, _ in self._maps.values():
            with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
                mm.close()
        self._maps.clear()
