"""The client's exception tree.

    BNCheckClientError
     ├── TransportError            no answer: connection refused, reset, DNS... (wraps httpx)
     │    └── RequestTimeout       no answer in time
     └── APIError                  the service answered with a problem document (RFC 9457)
          ├── BadRequest           400 malformed JSON, 415 wrong media type
          ├── Unauthorized         401 missing or wrong bearer token
          ├── PayloadTooLarge      413 body over the server's limit
          ├── InvalidInput         422 a field is wrong: see .errors
          └── ServiceUnavailable   503 busy or over the time budget: see .retry_after
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIError",
    "BNCheckClientError",
    "BadRequest",
    "InvalidInput",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
]


class BNCheckClientError(Exception):
    """Base of everything the client raises."""


class TransportError(BNCheckClientError):
    """The request got no answer."""


class RequestTimeout(TransportError):
    """The request got no answer in time."""


class APIError(BNCheckClientError):
    """A problem+json answer. ``errors`` is a list of (field, message)."""

    def __init__(self, response: httpx.Response, problem: dict[str, Any]) -> None:
        self.response = response
        self.status: int = response.status_code
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", response.reason_phrase))
        self.detail: str = str(problem.get("detail", ""))
        self.errors: list[tuple[str, str]] = [(str(e.get("field", "")), str(e.get("message", "")))
                                              for e in problem.get("errors", []) if isinstance(e, dict)]
        super().__init__(f"{self.status} {self.title}: {self.detail}")

    @property
    def fields(self) -> list[str]:
        return [f for f, _ in self.errors]


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class PayloadTooLarge(APIError):
    pass


class InvalidInput(APIError):
    pass


class ServiceUnavailable(APIError):
    @property
    def retry_after(self) -> float | None:
        value = self.response.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


_BY_STATUS: dict[int, type[APIError]] = {400: BadRequest, 401: Unauthorized, 413: PayloadTooLarge,
                                         415: BadRequest, 422: InvalidInput, 503: ServiceUnavailable}


def raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:300]}
    if not isinstance(problem, dict):
        problem = {"detail": str(problem)[:300]}
    raise _BY_STATUS.get(response.status_code, APIError)(response, problem)
