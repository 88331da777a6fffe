"""CUDA C source for the GPU path: element-wise pieces and multi-output channel sums.

Pure text: this module never imports CuPy. ``backend`` compiles what it writes
(``cupy.RawKernel``), and the tests compile the same text on the CPU against a
small emulation of CUDA's threads, barriers and atomics.

Why not CuPy's own kernels:
- ``cupy.fuse`` takes one reduction per kernel, and its reductions over a
  non-contiguous axis read memory with a stride. A variant needs up to four
  channel sums of the same tensors; here they are one pass over memory.
- Each element-wise piece is traced from the Python function the CPU runs
  (``variants.py``): the same operations in the same order, written with
  ``__fmul_rn``-style intrinsics, which round like NumPy and which the compiler
  never contracts into fused multiply-adds. Element-wise results are therefore
  bit-identical to the CPU emulation; only the order of additions in a channel
  sum differs, as it does between any two kernels.

Three thread layouts over the (P, C, S) view, each for a reduction ("reduce")
or an element-wise map ("map"):
- ``packed``: S == 1 and C <= 32. A block of 256 threads walks whole rows; a
  thread keeps one channel (t % C) and steps by a multiple of C, so loads are
  contiguous and no index is divided.
- ``rows``: S == 1 and C > 32. Blocks of 32 x 8 threads; a warp reads 32
  neighbouring channels of a row.
- ``planes``: S > 1. A block owns one channel and a chunk of its P*S elements,
  which lie in contiguous runs of S.
A reduction writes one partial sum per block and output; the last block of each
channel tile to finish (an atomic counter, which it resets) adds the partials up
in a fixed order, so results do not depend on scheduling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BLOCK_THREADS", "Launch", "Source", "Term", "Untraceable", "operands", "plan", "source", "trace"]

BLOCK_THREADS = 256
_ROWS_TILE = 32
_PACKED_MAX_C = 32  # so that every channel has at least 8 threads to add up the partial sums
_GATHER = 64  # at most this many partial sums per thread in a reduction's last block
_MAX_CHUNKS = 1024
_MAX_GRID_Y = 65535
_INT_MAX = (1 << 31) - 1

_OPS = {
    "float": {"*": "__fmul_rn", "+": "__fadd_rn", "-": "__fsub_rn", "/": "__fdiv_rn"},
    "double": {"*": "__dmul_rn", "+": "__dadd_rn", "-": "__dsub_rn", "/": "__ddiv_rn"},
}


class Untraceable(Exception):
    """The function does something other than + - * / and unary minus on its arguments."""


class _Tracer:
    def __init__(self, ctype: str, prefix: str) -> None:
        self.ctype, self.prefix = ctype, prefix
        self.lines: list[str] = []

    def emit(self, expr: str) -> _Sym:
        name = f"{self.prefix}{len(self.lines)}"
        self.lines.append(f"const {self.ctype} {name} = {expr};")
        return _Sym(self, name)


class _Sym:
    """A value inside a traced function. Every operation becomes one rounded CUDA operation."""

    __slots__ = ("name", "tracer")
    __array_ufunc__ = None  # NumPy functions refuse symbols instead of treating them as objects

    def __init__(self, tracer: _Tracer, name: str) -> None:
        self.tracer, self.name = tracer, name

    def _op(self, op: str, other: object, reverse: bool) -> _Sym:
        if not isinstance(other, _Sym) or other.tracer is not self.tracer:
            msg = f"an operand of {op!r} is a {type(other).__name__}, not an argument of the function"
            raise Untraceable(msg)
        a, b = (other, self) if reverse else (self, other)
        return self.tracer.emit(f"{_OPS[self.tracer.ctype][op]}({a.name}, {b.name})")

    def __mul__(self, o: object) -> _Sym:
        return self._op("*", o, False)

    def __rmul__(self, o: object) -> _Sym:
        return self._op("*", o, True)

    def __add__(self, o: object) -> _Sym:
        return self._op("+", o, False)

    def __radd__(self, o: object) -> _Sym:
        return self._op("+", o, True)

    def __sub__(self, o: object) -> _Sym:
        return self._op("-", o, False)

    def __rsub__(self, o: object) -> _Sym:
        return self._op("-", o, True)

    def __truediv__(self, o: object) -> _Sym:
        return self._op("/", o, False)

    def __rtruediv__(self, o: object) -> _Sym:
        return self._op("/", o, True)

    def __neg__(self) -> _Sym:
        return self.tracer.emit(f"-{self.name}")

    def __bool__(self) -> bool:
        msg = "a traced function may not branch on its values"
        raise Untraceable(msg)


def trace(fn: Callable[..., Any], names: Sequence[str], ctype: str, prefix: str = "t") -> tuple[list[str], str]:
    """Run ``fn`` on symbols called ``names``; returns its CUDA statements and the result's name."""
    tracer = _Tracer(ctype, prefix)
    try:
        result = fn(*(_Sym(tracer, n) for n in names))
    except (TypeError, AttributeError) as exc:  # a NumPy function or a method: not plain arithmetic
        msg = f"{getattr(fn, '__name__', fn)!r}: {exc}"
        raise Untraceable(msg) from exc
    if not isinstance(result, _Sym) or result.tracer is not tracer:
        msg = f"{getattr(fn, '__name__', fn)!r} returned {type(result).__name__}"
        raise Untraceable(msg)
    return tracer.lines, result.name


@dataclass(frozen=True)
class Launch:
    """Where the threads go: ``template``, the grid, the block, and each block's ``chunk``
    (rows for packed and rows, elements of the channel for planes)."""

    template: str
    grid: tuple[int, int]
    block: tuple[int, int]
    chunk: int
    lanes: int  # channels reduced side by side in a block (1 for planes)
    groups: int  # threads per lane

    @property
    def chunks(self) -> int:
        return self.grid[1]

    @property
    def tiles(self) -> int:
        return self.grid[0]


def plan(shape: tuple[int, int, int], target_blocks: int) -> Launch | None:
    """The launch for a (P, C, S) view, about ``target_blocks`` blocks; None if too big for
    32-bit loop counters (the caller then takes the general path)."""
    P, C, S = shape
    if max(P, C, S) > _INT_MAX or P * S > _INT_MAX:
        return None
    if S == 1 and C <= _PACKED_MAX_C:
        template, tiles, extent = "packed", 1, P
        block, lanes, groups = (BLOCK_THREADS, 1), C, BLOCK_THREADS // C
    elif S == 1:
        template, tiles, extent = "rows", -(-C // _ROWS_TILE), P
        block, lanes, groups = (_ROWS_TILE, BLOCK_THREADS // _ROWS_TILE), _ROWS_TILE, BLOCK_THREADS // _ROWS_TILE
    else:
        template, tiles, extent = "planes", C, P * S
        block, lanes, groups = (BLOCK_THREADS, 1), 1, BLOCK_THREADS
    chunks = max(1, min(_MAX_CHUNKS, _GATHER * groups, -(-target_blocks // tiles), extent))
    if template == "planes":
        chunks = max(chunks, min(extent, -(-extent // (1 << 20))))  # at most ~1M elements a block
    chunk = -(-extent // chunks)
    chunks = -(-extent // chunk)
    if chunks > _MAX_GRID_Y or tiles > _INT_MAX:
        return None
    return Launch(template, (tiles, chunks), block, chunk, lanes, groups)


@dataclass(frozen=True)
class Source:
    name: str
    code: str
    params: tuple[tuple[str, str], ...]  # (C type, name), in launch order


def source(mode: str, launch: Launch, ctype: str, kinds: Sequence[str],
           terms: Sequence[tuple[Callable[..., Any], Sequence[int]]]) -> Source:
    """The kernel for ``terms`` over operands of ``kinds`` ("full", "chan" or "scalar").

    mode "reduce": one channel sum per term; "map": the single term's value per element.
    Each term is a function and the operand slots it takes, in order.
    """
    if mode not in ("reduce", "map") or (mode == "map" and len(terms) != 1):
        msg = f"bad kernel request: mode {mode!r} with {len(terms)} terms"
        raise ValueError(msg)
    T = ctype
    body: list[str] = []
    results: list[str] = []
    for k, (fn, slots) in enumerate(terms):
        lines, res = trace(fn, [f"v{s}" for s in slots], T, prefix=f"t{k}_")
        body += lines
        results.append(res)
    used = sorted({s for _, slots in terms for s in slots})
    params: list[tuple[str, str]] = []
    for i, kind in enumerate(kinds):
        params.append((T, f"a{i}") if kind == "scalar" else (f"const {T}* __restrict__", f"a{i}"))
    if mode == "reduce":
        params += [(f"{T}* __restrict__", "partial"), (f"{T}* __restrict__", "out"),
                   ("unsigned int* __restrict__", "counter")]
    else:
        params.append((f"{T}* __restrict__", "out"))
    params += [("int", "P"), ("int", "C"), ("int", "S"), ("int", "chunk")]
    fixed = [f"const {T} v{i} = a{i};" for i in used if kinds[i] == "scalar"]
    fixed += [f"const {T} v{i} = a{i}[c];" for i in used if kinds[i] == "chan"]
    loads = [f"const {T} v{i} = a{i}[idx];" for i in used if kinds[i] == "full"]
    if mode == "reduce":
        step = [f"acc{k} = {_OPS[T]['+']}(acc{k}, {r});" for k, r in enumerate(results)]
    else:
        step = [f"out[idx] = {results[0]};"]
    inner = "\n".join(_indent(loads + body + step, 12))
    digest = hashlib.sha1(repr((list(kinds), results, body)).encode()).hexdigest()[:12]
    name = f"bncheck_{mode}_{launch.template}_{T}_{digest}"
    head = _HEADS[launch.template]
    loop = _LOOPS[launch.template].replace("@INNER@", inner)
    lines = [f'extern "C" __global__ void {name}(',
             ",\n".join(f"    {t} {n}" for t, n in params) + ")",
             "{",
             *(_shared(T, len(terms)) if mode == "reduce" else []),
             head,
             "    if (valid) {",
             *_indent(fixed, 8),
             *_indent([f"{T} acc{k} = 0;" for k in range(len(terms))] if mode == "reduce" else [], 8),
             loop]
    if mode == "reduce":
        lines += _indent([f"sh[{k}][t] = acc{k};" for k in range(len(terms))], 8)
        lines += ["    }", _reduce_tail(T, len(terms))]
    else:
        lines.append("    }")
    lines.append("}")
    return Source(name, "\n".join(lines), tuple(params))


def _shared(T: str, nout: int) -> list[str]:
    return [f"    __shared__ {T} sh[{nout}][256];", "    __shared__ bool is_last;"]


def _indent(lines: Sequence[str], n: int) -> list[str]:
    return [" " * n + line for line in lines]


# Each head defines: t (thread 0..255), c (channel), lane, group, valid, and the element range.
_HEADS = {
    "packed": """\
    const int t = threadIdx.x;
    const int lanes = C, groups = 256 / C, width = lanes * groups;
    const int lane = t % C, group = t / C;
    const int c = lane;
    const bool valid = t < width;
    const long long p0 = (long long)blockIdx.y * chunk;
    const long long p1 = (p0 + chunk < (long long)P) ? p0 + chunk : (long long)P;""",
    "rows": """\
    const int t = threadIdx.y * 32 + threadIdx.x;
    const int lanes = 32, groups = 8;
    const int lane = threadIdx.x, group = threadIdx.y;
    const int c = blockIdx.x * 32 + lane;
    const bool valid = c < C;
    const long long p0 = (long long)blockIdx.y * chunk;
    const long long p1 = (p0 + chunk < (long long)P) ? p0 + chunk : (long long)P;""",
    "planes": """\
    const int t = threadIdx.x;
    const int lanes = 1, groups = 256;
    const int lane = 0, group = t;
    const int c = blockIdx.x;
    const bool valid = true;
    const unsigned int j0 = (unsigned int)blockIdx.y * (unsigned int)chunk;
    const unsigned int n = (unsigned int)P * (unsigned int)S;
    const unsigned int j1 = (j0 + (unsigned int)chunk < n) ? j0 + (unsigned int)chunk : n;""",
}

_LOOPS = {
    "packed": """\
        #pragma unroll 4
        for (long long idx = p0 * C + t; idx < p1 * C; idx += width) {
@INNER@
        }""",
    "rows": """\
        #pragma unroll 4
        for (long long p = p0 + group; p < p1; p += groups) {
            const long long idx = p * C + c;
@INNER@
        }""",
    "planes": """\
        #pragma unroll 4
        for (unsigned int j = j0 + t; j < j1; j += 256) {
            const unsigned int q = j / (unsigned int)S;
            const long long idx = ((long long)q * C + c) * S + (j - q * (unsigned int)S);
@INNER@
        }""",
}


def _reduce_tail(T: str, nout: int) -> str:
    """Add the block's values lane by lane (a tree over the groups), store one partial per
    block, and let the channel tile's last block add its partials up the same way."""
    add = _OPS[T]["+"]
    tree = "\n".join(
        f"            sh[{k}][t] = {add}(sh[{k}][t], sh[{k}][t + w * lanes]);" for k in range(nout))
    store_partial = "\n".join(
        f"        partial[((long long){k} * gridDim.y + blockIdx.y) * C + c] = sh[{k}][t];" for k in range(nout))
    gather = "\n".join(
        f"""        {{
            {T} s = 0;
            if (valid && group < groups)
                #pragma unroll 8
                for (unsigned int b = group; b < gridDim.y; b += groups)
                    s = {add}(s, __ldcg(&partial[((long long){k} * gridDim.y + b) * C + c]));
            sh[{k}][t] = s;
        }}""" for k in range(nout))
    store_out = "\n".join(f"        out[(long long){k} * C + c] = sh[{k}][t];" for k in range(nout))
    return f"""\
    __syncthreads();
    int top = 1;
    while (top < groups) top <<= 1;
    for (int w = top >> 1; w >= 1; w >>= 1) {{
        if (valid && group < w && group + w < groups) {{
{tree}
        }}
        __syncthreads();
    }}
    if (valid && group == 0) {{
{store_partial}
    }}
    __threadfence();
    __syncthreads();
    if (t == 0) is_last = (atomicAdd(&counter[blockIdx.x], 1u) == gridDim.y - 1);
    __syncthreads();
    if (!is_last) return;
{gather}
    __syncthreads();
    for (int w = top >> 1; w >= 1; w >>= 1) {{
        if (valid && group < w && group + w < groups) {{
{tree}
        }}
        __syncthreads();
    }}
    if (valid && group == 0) {{
{store_out}
    }}
    if (t == 0) counter[blockIdx.x] = 0;"""


Term = tuple[Callable[..., Any], Sequence[Any]]


def operands(terms: Sequence[Term], shape: tuple[int, int, int]
             ) -> tuple[list[Any], list[str], list[tuple[Callable[..., Any], tuple[int, ...]]]] | None:
    """The distinct operands of ``terms`` (arrays by identity), their kinds, and each term's
    function with its operand slots. None when an operand is neither the full (P, C, S) view,
    a (1, C, 1) per-channel vector nor a scalar."""
    P, C, S = shape
    values: list[Any] = []
    kinds: list[str] = []
    seen: dict[int, int] = {}
    slotted = []
    for fn, args in terms:
        slots = []
        for a in args:
            if getattr(a, "ndim", 0) == 0:
                kind = "scalar"
            elif a.shape == (P, C, S):
                kind = "full"
            elif a.shape == (1, C, 1):
                kind = "chan"
            else:
                return None
            if kind == "scalar" or id(a) not in seen:
                values.append(a)
                kinds.append(kind)
                if kind != "scalar":
                    seen[id(a)] = len(values) - 1
            slots.append(len(values) - 1 if kind == "scalar" else seen[id(a)])
        slotted.append((fn, tuple(slots)))
    return values, kinds, slotted
