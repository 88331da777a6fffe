"""bncheck: whether a batch-norm backward pass is right, and where and by how much it is not.

    from bncheck import check                  # the numerics, in-process
    from bncheck import Client, AsyncClient    # the HTTP client of `bncheck serve`

Subpackages: ``bncheck.numerics`` (pure array code), ``bncheck.client`` (httpx and NumPy only),
``bncheck.server`` (the FastAPI service; ``pip install 'bncheck[server]'``), ``bncheck.cli``.
The names above are imported when first used, so that importing the numerics never loads the
client's or the server's packages.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__", "check"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from . import client

        return getattr(client, name)
    if name == "check":
        from .numerics import check

        return check
    msg = f"module 'bncheck' has no attribute {name!r}"
    raise AttributeError(msg)
