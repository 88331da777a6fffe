"""Named, seeded stress cases: the inputs where batch-norm kernels go wrong.

Every case is float64 and deterministic for a given (name, shape, channel
axis, seed). ``Case.cast(dtype)`` rounds the inputs to a dtype, which is how a
kernel in that precision receives them; ``fits(dtype)`` says whether the
case's values are representable there at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .dtypes import finfo_max, resolve
from .errors import InputError
from .layout import Layout

__all__ = ["CASES", "Case", "make"]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Gen = Callable[[np.random.Generator, tuple[int, ...], Layout], Arrays]


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float
    channel_axis: int

    def fits(self, dtype: Any) -> bool:
        top = finfo_max(resolve(dtype)) / 4
        return all(float(np.max(np.abs(a))) < top for a in (self.x, self.dy, self.gamma, self.beta))

    def cast(self, dtype: Any) -> Case:
        """The case as a kernel in ``dtype`` receives it (x and dy rounded to dtype)."""
        dt = resolve(dtype)
        return replace(self, x=self.x.astype(dt), dy=self.dy.astype(dt))

    def kwargs(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "beta": self.beta, "eps": self.eps, "channel_axis": self.channel_axis}


@dataclass(frozen=True)
class Spec:
    description: str
    shape: tuple[int, ...]
    gen: Gen
    eps: float = 1e-5


def _params(rng: np.random.Generator, C: int) -> tuple[np.ndarray, np.ndarray]:
    gamma = rng.uniform(0.5, 1.5, C) * rng.choice([-1.0, 1.0], C)
    return gamma, rng.standard_normal(C)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    x = 2.0 * rng.standard_normal(shape) + 0.5
    return (x, rng.standard_normal(shape), *_params(rng, lay.C))


def _offset(offset: float) -> Gen:
    def gen(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
        x = offset + rng.standard_normal(shape)
        return (x, rng.standard_normal(shape), *_params(rng, lay.C))
    return gen


def _near_eps(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    x = 3.0 + 1e-4 * rng.standard_normal(shape)
    return (x, rng.standard_normal(shape), *_params(rng, lay.C))


def _channel_mask(shape: tuple[int, ...], lay: Layout, channels: list[int]) -> np.ndarray:
    mask = np.zeros((1, lay.C, 1), dtype=bool)
    mask[0, channels, 0] = True
    return np.broadcast_to(mask, lay.view_shape).reshape(shape)


def _constant_channel(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    x, dy, gamma, beta = _normal(rng, shape, lay)
    x = np.where(_channel_mask(shape, lay, sorted({0, lay.C // 2})), 2.5, x)
    return x, dy, gamma, beta


def _constant_dy(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    x, _, gamma, beta = _normal(rng, shape, lay)
    per_channel = (0.25 + 0.5 * np.arange(lay.C)).reshape(1, lay.C, 1)
    dy = np.broadcast_to(per_channel, lay.view_shape).reshape(shape).copy()
    return x, dy, gamma, beta


def _f16_range(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    x = rng.uniform(-60000.0, 60000.0, shape)
    dy = rng.uniform(-30000.0, 30000.0, shape)
    return (x, dy, *_params(rng, lay.C))


def _heavy_tails(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    x = rng.standard_t(1.5, shape)
    dy = rng.standard_t(2.0, shape)
    return (x, dy, *_params(rng, lay.C))


def _mixed_scales(rng: np.random.Generator, shape: tuple[int, ...], lay: Layout) -> Arrays:
    scales = np.logspace(-2, 2, lay.C).reshape(1, lay.C, 1)
    x = (rng.standard_normal(lay.view_shape) * scales + 3 * scales).reshape(shape)
    dy = (rng.standard_normal(lay.view_shape) / scales).reshape(shape)
    return (x, dy, *_params(rng, lay.C))


CASES: dict[str, Spec] = {
    "normal": Spec("x ~ N(0.5, 2^2), dy ~ N(0, 1)", (16, 8, 4, 4), _normal),
    "mean_offset": Spec("mean 1e4, std 1: x - mean loses digits (|mean|/std = 1e4)", (64, 8), _offset(1e4)),
    "huge_offset": Spec("mean 1e6, std 1 (|mean|/std = 1e6); beyond float16's range", (64, 8), _offset(1e6)),
    "near_eps": Spec("std 1e-4, far below sqrt(eps) = 3.2e-3", (64, 8), _near_eps),
    "constant_channel": Spec("channels 0 and C/2 constant: var = 0, xhat = 0", (16, 8, 4, 4), _constant_channel),
    "constant_dy": Spec("dy constant per channel: dx = 0 and dgamma ~ 0 (cancellation)", (64, 8), _constant_dy),
    "long_reduction": Spec("R = 2^20 elements per channel", (1 << 20, 2), _normal),
    "f16_range": Spec("|x| up to 6e4 and |dy| up to 3e4, near float16's largest value 65504", (64, 8), _f16_range),
    "single_element": Spec("R = 1: var = 0, dx = 0", (1, 8), _normal),
    "tiny_batch": Spec("the seed's (2, 4) with eps = 0.01", (2, 4), _normal, eps=0.01),
    "heavy_tails": Spec("Student t: x with 1.5 and dy with 2 degrees of freedom", (256, 8), _heavy_tails),
    "mixed_scales": Spec("channel scales from 1e-2 to 1e2 (x) and their inverses (dy)", (64, 16), _mixed_scales),
}


def make(name: str, *, shape: tuple[int, ...] | None = None, channel_axis: int = 1, seed: int = 0) -> Case:
    spec = CASES.get(name)
    if spec is None:
        msg = f"unknown stress case {name!r}; choose from {', '.join(CASES)}"
        raise InputError(msg, field="case")
    shape = tuple(spec.shape if shape is None else shape)
    lay = Layout.of(shape, channel_axis)
    rng = np.random.default_rng([seed, *name.encode()])
    x, dy, gamma, beta = spec.gen(rng, shape, lay)
    return Case(name, spec.description, x, dy, gamma, beta, spec.eps, channel_axis)
