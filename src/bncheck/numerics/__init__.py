"""bncheck's numerical core: pure array code, no web imports.

    check(x, dy, gamma, beta, *, variant=..., dtype=...) -> CheckReport

Submodules: ``variants`` (the four seed formulas), ``reference`` (float64),
``fd`` (finite differences), ``compare`` and ``tolerance`` (reports),
``stress`` (named stress cases), ``backend`` (NumPy/CuPy dispatch).
"""

from .check import FD_METHODS, FDOptions, Limits, check, reference_outputs
from .errors import BNCheckError, DeviceUnavailableError, InputError, TimeBudgetError, WorkLimitError
from .report import Block, ChannelError, CheckReport, Checks, FDBlock, TensorMetrics, VariantsBlock
from .stress import CASES, Case, make
from .variants import VARIANTS, Variant

__all__ = [
    "CASES",
    "FD_METHODS",
    "VARIANTS",
    "BNCheckError",
    "Block",
    "Case",
    "ChannelError",
    "CheckReport",
    "Checks",
    "DeviceUnavailableError",
    "FDBlock",
    "FDOptions",
    "InputError",
    "Limits",
    "TensorMetrics",
    "TimeBudgetError",
    "Variant",
    "VariantsBlock",
    "WorkLimitError",
    "check",
    "make",
    "reference_outputs",
]
