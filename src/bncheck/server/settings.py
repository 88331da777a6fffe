"""Configuration from BNCHECK_* environment variables (pydantic-settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every field reads BNCHECK_<NAME>; the README's configuration table lists them."""

    model_config = SettingsConfigDict(env_prefix="BNCHECK_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_elements: int = Field(1 << 24, ge=1, description="elements per tensor; more is a 422")
    fd_work: int = Field(1 << 28, ge=1, description="finite-difference work, in element-evaluations of the forward")
    max_concurrent: int = Field(2, ge=1, description="checks running at once; more wait in the queue")
    queue: int = Field(32, ge=0, description="checks that may wait for a slot, in order (their wait counts "
                       "against their time budget); beyond it, 503 with Retry-After before the body is read")
    request_timeout_s: float = Field(120.0, gt=0, description="time budget of one check; over it, 503")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "human"] = Field("auto", description="json lines (time, level, logger, "
                                                         "request_id, message, fields); human on a terminal; "
                                                         "auto: human on a TTY, json elsewhere")
    token: SecretStr | None = Field(None, description="when set, /v1/*, /v2 (but its health routes) and /metrics "
                                                      "need 'Authorization: Bearer'")
    device: Literal["cpu", "gpu", "auto"] = Field("cpu", description="where checks run unless a request says")
    executor: Literal["process", "thread"] = Field(
        "process", description="checks run in worker processes (the event loop stays free) or threads")
    worker_nice: int = Field(10, ge=0, le=19, description="niceness of worker processes: the server stays responsive")
    worker_heap_mb: int = Field(1024, ge=0, le=2047, description="free heap a worker (and the server process) "
                                "keeps between checks (glibc), returned to the system after 10 s idle; 0: glibc's "
                                "defaults")
    client_shm: bool = Field(False, description="clients on this host may register /dev/shm regions and send "
                             "tensors through them (KServe v2 system shared memory); the server then reads and "
                             "writes any shared-memory object they name that its user may open")
    max_shm_regions: int = Field(64, ge=1, description="regions registered at once (BNCHECK_CLIENT_SHM)")
    worker_memory_mb: int = Field(0, ge=0, description="address-space limit of a worker process (RLIMIT_AS): "
                                  "a check that needs more is refused with 413 instead of being OOM-killed; "
                                  "0: no limit")
