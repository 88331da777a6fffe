"""bncheck's numerical core: pure array code, no web imports.

    check(x, dy, gamma, beta, *, variant=..., dtype=...) -> CheckReport

Submodules: ``variants`` (the four seed formulas), ``reference`` (float64),
``fd`` (finite differences), ``compare`` and ``tolerance`` (reports),
``stress`` (named stress cases), ``backend`` (NumPy/CuPy dispatch).
"""

from .check import Limits, check, reference_outputs
from .errors import BNCheckError, DeviceUnavailableError, InputError, TimeBudgetError, WorkLimitError
from .report import Block, ChannelError, CheckReport, Checks, FDBlock, TensorMetrics, VariantsBlock
from .request import CANDIDATE_NAMES, FD_METHODS, INPUT_NAMES, CheckOptions, FDOptions
from .stress import CASES, Case, make
from .variants import VARIANTS, Variant

__all__ = [
    "CANDIDATE_NAMES",
    "CASES",
    "FD_METHODS",
    "INPUT_NAMES",
    "VARIANTS",
    "BNCheckError",
    "Block",
    "Case",
    "ChannelError",
    "CheckOptions",
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
