"""What the pictures of a comparison draw: per-channel tol_ratio, a heatmap of the worst
ratio over (batch x channel), the spatial map of the worst cell, and a histogram of the
ratios. All of it comes from the per-element ratio |candidate - reference| / allowed that
``compare`` computes anyway (``compare(..., plots=True)`` keeps it), so a picture shows
exactly what decided the verdict: a ratio above 1 is an element that failed.

The shapes are bounded whatever the tensor's size: the heatmap has at most HEAT_ROWS x
HEAT_COLS cells and the spatial map SPATIAL_MAX x SPATIAL_MAX; larger ones are max-pooled
(a bin shows its worst element, so a single bad element never disappears).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .layout import Layout

__all__ = ["NATURAL_EDGES", "Heatmap", "Histogram", "NaturalHistogram", "Pictures", "SpatialMap", "natural_counts",
           "summarize"]

HEAT_ROWS, HEAT_COLS, SPATIAL_MAX = 64, 128, 64
# log10 of the ratio, from 1e-8 to 1e4, in quarter decades; zeros and non-finite apart
EDGES = [round(-8 + 0.25 * i, 2) for i in range(49)]
# log10 of the error in natural units, from 1e-12 to 1e4, in quarter decades
NATURAL_EDGES = [round(-12 + 0.25 * i, 2) for i in range(65)]


@dataclass(frozen=True)
class Heatmap:
    """The worst ratio of each (sample, channel): rows are the batch axis (axis 0), columns
    the channels; each cell holds ``row_bin`` samples x ``col_bin`` channels."""

    row_bin: int
    col_bin: int
    values: list[list[float | None]]  # None: a non-finite candidate value there


@dataclass(frozen=True)
class SpatialMap:
    """The ratio over the positions of one (sample, channel): the worst cell of the heatmap."""

    sample: int
    channel: int
    shape: list[int]  # the positions' shape before pooling (H, W; or 1, L)
    bin: list[int]  # positions per pixel along each axis
    values: list[list[float | None]]


@dataclass(frozen=True)
class Histogram:
    """How many elements have each ratio: counts[i] between 10**edges[i] and 10**edges[i+1]
    (the first and last bins take everything below and above); exact zeros and non-finite
    candidates are counted apart."""

    edges: list[float]
    counts: list[int]
    zero: int
    nonfinite: int


@dataclass(frozen=True)
class NaturalHistogram:
    """How many elements have each error in natural units (|error| / the element's natural
    scale): counts[i] between 10**edges[i] and 10**edges[i+1]. ``allowed`` is the allowance
    in natural units where the reference is 0 (larger references get rtol * |reference| more);
    ``envelope`` the worst error of the correct kernels (calibrated verdicts)."""

    edges: list[float]
    counts: list[int]
    zero: int
    allowed: float | None
    envelope: float | None


@dataclass(frozen=True)
class Pictures:
    channel_ratio: list[float | None]  # the worst ratio in each channel; > 1 fails
    heatmap: Heatmap | None  # tensors with a batch axis (dx, y)
    spatial: SpatialMap | None  # tensors with positions (NCHW, NHWC, ...)
    histogram: Histogram
    natural: NaturalHistogram | None = None  # tensors judged against a natural scale


def _finite(values: np.ndarray) -> list[list[float | None]]:
    rounded = np.round(values.astype(np.float64), 6)
    return [[float(v) if math.isfinite(v) else None for v in row] for row in rounded.tolist()]


def _pool(a: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, int, int]:
    """Max-pool a 2-D array to at most rows x cols (edge bins padded with -inf)."""
    rb, cb = max(1, -(-a.shape[0] // rows)), max(1, -(-a.shape[1] // cols))
    if rb == cb == 1:
        return a, 1, 1
    pr, pc = -(-a.shape[0] // rb) * rb, -(-a.shape[1] // cb) * cb
    padded = np.full((pr, pc), -np.inf, dtype=a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    return padded.reshape(pr // rb, rb, pc // cb, cb).max(axis=(1, 3)), rb, cb


def _histogram(r3: np.ndarray) -> Histogram:
    flat = r3.reshape(-1)
    nonfinite = int(np.count_nonzero(~np.isfinite(flat)))
    zero = int(np.count_nonzero(flat == 0))
    pos = flat[np.isfinite(flat) & (flat > 0)]
    logs = np.clip(np.log10(pos), EDGES[0], EDGES[-1] - 1e-9)
    counts, _ = np.histogram(logs, bins=EDGES)
    return Histogram(list(EDGES), [int(c) for c in counts], zero, nonfinite)


def natural_counts(natural: np.ndarray) -> np.ndarray:
    """One block's histogram of errors in natural units (finite values): counts over
    NATURAL_EDGES, then the exact zeros."""
    flat = natural.reshape(-1)
    pos = flat[flat > 0]
    logs = np.clip(np.log10(pos), NATURAL_EDGES[0], NATURAL_EDGES[-1] - 1e-9)
    counts, _ = np.histogram(logs, bins=NATURAL_EDGES)
    return np.append(counts, flat.size - pos.size)


def summarize(r3: np.ndarray, lay: Layout, channel_ratio: np.ndarray, *, batch: bool,
              natural: NaturalHistogram | None = None) -> Pictures:
    """``r3``: the ratio over ``lay``'s (P, C, S) view (inf at non-finite candidates);
    ``batch``: whether axis 0 is a batch axis (a full tensor, not a per-channel one)."""
    heatmap = spatial = None
    if batch and lay.axis > 0:
        n = lay.shape[0]
        per_sample = r3.reshape(n, lay.P // n, lay.C, lay.S)  # (N, rows of one sample, C, S)
        cells = per_sample.max(axis=(1, 3))  # (N, C)
        pooled, rb, cb = _pool(cells, HEAT_ROWS, HEAT_COLS)
        heatmap = Heatmap(rb, cb, _finite(pooled))
        spatial = _spatial(per_sample, cells, lay)
    return Pictures(_finite(channel_ratio.reshape(1, -1))[0], heatmap, spatial, _histogram(r3), natural)


def _spatial(per_sample: np.ndarray, cells: np.ndarray, lay: Layout) -> SpatialMap | None:
    """The positions of the worst (sample, channel): H x W of NCHW (trailing axes), or of NHWC
    (the axes between batch and channels); None for (N, C)."""
    n, c = (int(i) for i in np.unravel_index(int(np.argmax(np.nan_to_num(cells, posinf=np.finfo(cells.dtype).max))),
                                              cells.shape))
    if lay.S > 1:
        trailing = lay.shape[lay.axis + 1:]
        values = per_sample[n, :, c, :].max(axis=0)
    elif lay.P // lay.shape[0] > 1:
        trailing = lay.shape[1:lay.axis]
        values = per_sample[n, :, c, 0]
    else:
        return None
    shape = [math.prod(trailing[:-1]), trailing[-1]] if len(trailing) > 1 else [1, trailing[0]]
    pooled, rb, cb = _pool(values.reshape(shape), SPATIAL_MAX, SPATIAL_MAX)
    return SpatialMap(n, c, shape, [rb, cb], _finite(pooled))
