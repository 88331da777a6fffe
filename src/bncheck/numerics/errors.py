"""The numerical core's one exception tree.

    BNCheckError
     ├── InputError (also a ValueError)   bad input; names the argument
     │    ├── WorkLimitError              more work than the configured budget
     │    └── DeviceUnavailableError      the GPU was asked for and is not there
     └── TimeBudgetError                  the check ran past its deadline

The service translates this tree into problem+json in a single handler.
"""

from __future__ import annotations

__all__ = ["BNCheckError", "DeviceUnavailableError", "InputError", "TimeBudgetError", "WorkLimitError"]


class BNCheckError(Exception):
    """Base of every error bncheck's numerics raise on purpose."""


class InputError(BNCheckError, ValueError):
    """An argument is wrong. ``field`` names it the way the wire contract does."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class WorkLimitError(InputError):
    """The request needs more work than the configured limits allow."""


class DeviceUnavailableError(InputError):
    """The GPU was asked for but CuPy or a CUDA device is missing."""


class TimeBudgetError(BNCheckError):
    """The check ran past ``Limits.deadline`` and stopped between two steps."""
