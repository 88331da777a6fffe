"""Where the channel axis is, and the (P, C, S) view every computation works on.

Any C-ordered tensor with channel axis ``k`` reshapes, without a copy, to
``(P, C, S)``: ``P`` is the product of the axes before ``k`` and ``S`` of the
axes after it. (N, D) is (N, D, 1), NCHW is (N, C, H*W), NHWC is (N*H*W, C, 1).
A channel's statistics reduce over axes 0 and 2 of that view, and a flat
index into the view is the same flat index into the original tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["Block", "Layout"]

# One block of the (P, C, S) view: rows p0:p1 and columns s0:s1, every channel.
Block = tuple[slice, slice]


@dataclass(frozen=True)
class Layout:
    shape: tuple[int, ...]
    axis: int
    P: int
    C: int
    S: int

    @classmethod
    def of(cls, shape: tuple[int, ...], channel_axis: int, *, field: str = "x") -> Layout:
        shape = tuple(int(n) for n in shape)
        if len(shape) < 2:
            msg = f"needs at least 2 dimensions (batch and channel), got shape {list(shape)}"
            raise InputError(msg, field=field)
        for i, n in enumerate(shape):
            if n < 1:
                msg = f"dimension {i} of shape {list(shape)} is {n}; every dimension must be at least 1"
                raise InputError(msg, field=field)
        rank = len(shape)
        if not -rank <= channel_axis < rank:
            msg = f"is {channel_axis}, outside [-{rank}, {rank - 1}] for a {rank}-D x"
            raise InputError(msg, field="channel_axis")
        axis = channel_axis % rank
        return cls(shape, axis, math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))

    @property
    def R(self) -> int:
        """Elements per channel: the reduction length."""
        return self.P * self.S

    @property
    def M(self) -> int:
        return self.P * self.C * self.S

    @property
    def view_shape(self) -> tuple[int, int, int]:
        return (self.P, self.C, self.S)

    def view(self, a: Any) -> Any:
        return a.reshape(self.view_shape)

    def restore(self, a3: Any) -> Any:
        return a3.reshape(self.shape)

    def per_channel(self, v: Any) -> Any:
        """A (C,) vector as (1, C, 1), to broadcast against the view."""
        return v.reshape(1, self.C, 1)

    def unravel(self, flat: int) -> list[int]:
        return [int(i) for i in np.unravel_index(int(flat), self.shape)]

    def blocks(self, target: int, *, min_blocks: int = 4) -> list[Block]:
        """Split the view into blocks of about ``target`` elements, each holding every channel.

        Whole rows (contiguous memory) where there are enough of them; a row is split along
        S only when there are fewer than ``min_blocks`` rows to share out.
        """
        row = self.C * self.S
        if row <= target or self.S == 1 or self.P >= min_blocks:
            rows = max(1, target // row)
            return [(slice(p, min(self.P, p + rows)), slice(0, self.S)) for p in range(0, self.P, rows)]
        cols = max(1, target // self.C)
        return [
            (slice(p, p + 1), slice(s, min(self.S, s + cols)))
            for p in range(self.P)
            for s in range(0, self.S, cols)
        ]
