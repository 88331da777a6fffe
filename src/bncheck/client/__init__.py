"""A thin httpx client for the bncheck service. Imports httpx and NumPy (ml_dtypes for
bfloat16), never ``bncheck.server`` (a test holds it to that).

    from bncheck import Client

    with Client(base_url="http://127.0.0.1:8000") as bn:
        result = bn.check(x, dy, gamma, beta, variant="qianfeng", candidate={"dx": my_dx})
        for block, tensor, report in result.failures():
            print(block, tensor, report.worst_index, report.max_abs_err)
"""

from ._client import AsyncClient, Client, build_request
from ._exceptions import (
    APIError,
    BadRequest,
    BNCheckClientError,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    TransportError,
    Unauthorized,
)
from ._models import (
    Block,
    ChannelError,
    CheckResult,
    CrossCheck,
    FDBlock,
    Resolution,
    TensorReport,
    Tolerance,
    VariantsBlock,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "BNCheckClientError",
    "BadRequest",
    "Block",
    "ChannelError",
    "CheckResult",
    "Client",
    "CrossCheck",
    "FDBlock",
    "InvalidInput",
    "PayloadTooLarge",
    "RequestTimeout",
    "Resolution",
    "ServiceUnavailable",
    "TensorReport",
    "Tolerance",
    "TransportError",
    "Unauthorized",
    "VariantsBlock",
    "build_request",
]
