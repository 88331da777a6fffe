"""Every kind of problem bncheck answers with, once: its status, its title and what it means.

The handlers raise ``ProblemError(kind, detail)`` and take status and title from here; the
OpenAPI responses and the table in docs/bad-input.md are built from here (a test keeps the
document in step).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROBLEMS", "Kind", "markdown_table"]


@dataclass(frozen=True)
class Kind:
    status: int
    title: str
    meaning: str


PROBLEMS: dict[str, Kind] = {
    "malformed-json": Kind(400, "Malformed JSON", "the body is not JSON, is empty, or is shorter than its "
                           "Content-Length"),
    "malformed-infer": Kind(400, "Malformed inference request", "/v2 infer: the JSON header or the binary data "
                            "do not add up (Inference-Header-Content-Length, binary_data_size)"),
    "client-disconnected": Kind(400, "Client disconnected", "the client left before its body arrived in full"),
    "unauthorized": Kind(401, "Unauthorized", "BNCHECK_TOKEN is set and the bearer token is missing or wrong"),
    "shm-disabled": Kind(403, "Shared memory is off", "/v2 system shared memory: the server was started without "
                         "BNCHECK_CLIENT_SHM=true"),
    "unknown-model": Kind(404, "Unknown model", "/v2: the model is not one of the variants"),
    "too-large": Kind(413, "Content too large", "the body is over BNCHECK_MAX_BODY_BYTES"),
    "too-big-for-memory": Kind(413, "Too big for this server's memory", "the check cannot fit a worker's memory "
                               "(its worker died twice on it, or BNCHECK_WORKER_MEMORY_MB refused it)"),
    "unsupported-media": Kind(415, "Unsupported media type", "the body is not application/json"),
    "invalid-input": Kind(422, "Invalid input", "a field is wrong; errors names it (400 on /v2)"),
    "too-much-work": Kind(422, "Too much work", "over the element or finite-difference limits (400 on /v2)"),
    "device-unavailable": Kind(422, "Device unavailable", "the GPU was asked for and is not there (400 on /v2)"),
    "internal": Kind(500, "Internal error", "a fault of bncheck's; detail carries an error id the log carries too"),
    "busy": Kind(503, "Busy", "the queue is full (BNCHECK_MAX_CONCURRENT running, BNCHECK_QUEUE waiting); "
                 "Retry-After"),
    "time-budget": Kind(503, "Over the time budget", "the check ran past BNCHECK_REQUEST_TIMEOUT_S; Retry-After"),
    "worker-died": Kind(503, "Worker died", "the worker running the check died and has been replaced; "
                        "Retry-After"),
    "not-ready": Kind(503, "Not ready", "/readyz: shutting down, or worker processes starting"),
    "http": Kind(404, "HTTP error", "anything else the router refuses: 404 no such path, 405 wrong method"),
}


def markdown_table() -> str:
    rows = ["| type | status | title | meaning |", "|---|---|---|---|"]
    rows += [f"| `/problems/{name}` | {k.status if name != 'http' else '404, 405'} | {k.title} | {k.meaning} |"
             for name, k in PROBLEMS.items()]
    return "\n".join(rows)
