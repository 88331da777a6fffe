"""A check's report as one self-contained HTML file: inline SVG and CSS, no script, no
network. Drawn from the JSON report (the /v1/check answer, with ``output.plots``), so the
pictures and the numbers cannot disagree: a mark above the pass line is an element that
failed.

Readable without colour: failing marks are crosses, failing heatmap cells are hatched, and
every picture has a caption and a data table behind a <details>.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["render"]

LOG_MIN, LOG_MAX = -8.0, 4.0  # the ratio axis: 1e-8 .. 1e4, pass line at 1
BLOCK_TITLES = {"variant": "The variant against the float64 reference", "candidate": "Your outputs (candidate)",
                "finite_difference": "Finite-difference evidence for the reference",
                "saved_statistics": "Saved statistics"}
CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1em;
 color:#1b1b1b;background:#fff}
h1{font-size:1.6em;margin:.2em 0} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1.05em;margin:1.2em 0 .3em}
.verdict{display:inline-block;padding:.15em .6em;border-radius:.3em;font-weight:700;border:2px solid}
.verdict.pass{color:#0a5d2a;border-color:#0a5d2a;background:#e6f4ea}
.verdict.fail{color:#9b1c1c;border-color:#9b1c1c;background:#fdecea}
table{border-collapse:collapse;margin:.4em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.2em .5em;
 text-align:left;vertical-align:top} th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.fail{font-weight:700;color:#9b1c1c} td.pass{color:#0a5d2a}
figure{margin:.6em 0 1.2em;display:inline-block;vertical-align:top}
figcaption{font-size:.9em;color:#333;max-width:720px}
svg text{font:11px system-ui,sans-serif;fill:#333}
.axis{stroke:#555;stroke-width:1} .grid{stroke:#e3e3e3;stroke-width:1} .passline{stroke:#9b1c1c;stroke-width:1.5;
 stroke-dasharray:6 3}
.mark circle{fill:#2c6fbb} .mark.fail path{stroke:#c0262d;stroke-width:2.2}
.bar{fill:#2c6fbb} .bar.fail{fill:#c0262d} .envline{stroke:#0a5d2a;stroke-width:1.5;stroke-dasharray:2 2}
.cell.fail{stroke:#000;stroke-width:.6}
details{margin:.2em 0 .8em} summary{cursor:pointer;color:#2556a3}
ul.notes li{margin:.2em 0}
.meta{color:#444}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return _e(v)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}"


def _log(r: float | None) -> float:
    """A ratio on the log axis; None (a non-finite candidate) at the top."""
    if r is None:
        return LOG_MAX
    if r <= 0:
        return LOG_MIN
    return min(LOG_MAX, max(LOG_MIN, math.log10(r)))


def _fails(r: float | None) -> bool:
    return r is None or r > 1


def _verdict(passed: bool) -> str:
    return f'<span class="verdict {"pass" if passed else "fail"}">{"PASSED ✓" if passed else "FAILED ✗"}</span>'


# ------------------------------------------------------------------ tables


def _tensor_rows(block: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    for name in ("dx", "dgamma", "dbeta", "y", "mean", "invstd"):
        if isinstance(block.get(name), Mapping):
            yield name, block[name]


def _block_table(name: str, block: Mapping[str, Any]) -> str:
    head = ("<tr><th>tensor</th><th>verdict</th><th>max abs error</th><th>allowed at the worst element</th>"
            "<th>tol_ratio</th><th>resolution (max abs / ulps)</th><th>decided by</th><th>mismatched</th>"
            "<th>failed channels</th><th>worst index</th></tr>")
    rows = []
    for tname, t in _tensor_rows(block):
        res = t.get("resolution") or {}
        ok = t["passed"]
        rows.append(
            f"<tr><th scope='row'>{_e(tname)}</th><td class='{'pass' if ok else 'fail'}'>{'pass' if ok else 'FAIL'}"
            f"</td><td class='num'>{_num(t['max_abs_err'])}</td><td class='num'>{_num(t['worst_allowed'])}</td>"
            f"<td class='num'>{_num(t['tol_ratio'])}</td><td class='num'>{_num(res.get('max_abs'))} / "
            f"{_num(res.get('ulp'))}</td><td>{_e(t['decided_by'])}</td>"
            f"<td class='num'>{_num(t['mismatched'])} of {_num(t['total'])}</td>"
            f"<td>{_e(t.get('failed_channels') or '—')}</td><td>{_e(t['worst_index'])}</td></tr>")
    title = BLOCK_TITLES.get(name, name)
    notes = "".join(f"<li>{_e(n)}</li>" for n in block.get("notes", []))
    return (f"<h3>{_e(title)}: {_verdict(block['passed'])}</h3><table aria-label='{_e(title)}'>{head}"
            f"{''.join(rows)}</table>" + (f"<ul class='notes'>{notes}</ul>" if notes else ""))


def _fd_facts(fd: Mapping[str, Any]) -> str:
    facts = [("method", fd.get("method")), ("asked for", fd.get("requested")), ("values", fd.get("elements")),
             ("step (relative)", fd.get("step")), ("estimated error (natural units)", fd.get("estimated_error"))]
    cross = fd.get("cross_check")
    if cross:
        facts.append(("cross-check", f"{cross['method']} at {cross['positions']} positions: "
                                     f"{'pass' if cross['metrics']['passed'] else 'FAIL'}, "
                                     f"tol_ratio {_num(cross['metrics']['tol_ratio'])}"))
    rows = "".join(f"<tr><th scope='row'>{_e(k)}</th><td>{_num(v) if not isinstance(v, str) else _e(v)}</td></tr>"
                   for k, v in facts if v is not None)
    return f"<table aria-label='finite-difference facts'>{rows}</table>"


def _spread(v: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th scope='row'>{_e(k)}</th><td class='num'>{_num(val)}</td>"
                   f"<td>{_e(' vs '.join(v['spread_pair'].get(k, [])))}</td></tr>" for k, val in v["spread"].items())
    return ("<h3>Variant spread</h3><table aria-label='variant spread'><tr><th>tensor</th><th>largest difference"
            f"</th><th>between</th></tr>{rows}</table>")


# ------------------------------------------------------------------ pictures


def _y(log: float, top: float, height: float) -> float:
    return top + (LOG_MAX - log) / (LOG_MAX - LOG_MIN) * height


def _log_axis(left: float, top: float, width: float, height: float) -> str:
    parts = []
    for k in range(int(LOG_MIN), int(LOG_MAX) + 1, 2):
        y = _y(k, top, height)
        parts.append(f"<line class='grid' x1='{left}' x2='{left + width}' y1='{y:.1f}' y2='{y:.1f}'/>"
                     f"<text x='{left - 4}' y='{y + 4:.1f}' text-anchor='end'>1e{k}</text>")
    y1 = _y(0, top, height)
    parts.append(f"<line class='passline' x1='{left}' x2='{left + width}' y1='{y1:.1f}' y2='{y1:.1f}'/>"
                 f"<text x='{left + width - 2}' y='{y1 - 4:.1f}' text-anchor='end'>allowed (tol_ratio 1)</text>")
    parts.append(f"<line class='axis' x1='{left}' x2='{left}' y1='{top}' y2='{top + height}'/>"
                 f"<line class='axis' x1='{left}' x2='{left + width}' y1='{top + height}' y2='{top + height}'/>")
    return "".join(parts)


def _channel_plot(tname: str, ratios: list[float | None], failed: str) -> str:
    C = len(ratios)
    left, top, width, height = 52.0, 10.0, 660.0, 180.0
    step = width / max(C, 1)
    marks = []
    for c, r in enumerate(ratios):
        x = left + (c + 0.5) * step
        y = _y(_log(r), top, height)
        label = f"channel {c}: tol_ratio {_num(r)}" + (" (non-finite)" if r is None else "")
        s = max(2.0, min(4.5, step * 0.45))
        if _fails(r):
            shape = (f"<path d='M{x - s:.1f},{y - s:.1f}L{x + s:.1f},{y + s:.1f}M{x - s:.1f},{y + s:.1f}"
                     f"L{x + s:.1f},{y - s:.1f}'/>")
        else:
            shape = f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{s * 0.8:.1f}'/>"
        marks.append(f"<g class='mark{' fail' if _fails(r) else ''}' data-channel='{c}' "
                     f"data-ratio='{'' if r is None else r}'><title>{_e(label)}</title>{shape}</g>")
    ticks = "".join(f"<text x='{left + (c + 0.5) * step:.1f}' y='{top + height + 14}' text-anchor='middle'>{c}</text>"
                    for c in _ticks(C))
    n_fail = sum(_fails(r) for r in ratios)
    desc = (f"tol_ratio of each of {C} channels of {tname} on a log scale; {n_fail} above the pass line"
            + (f" (channels {failed})" if failed else ""))
    svg = (f"<svg class='channels' data-tensor='{_e(tname)}' role='img' aria-label='{_e(desc)}' "
           f"width='{left + width + 10:.0f}' height='{top + height + 34:.0f}'><title>{_e(desc)}</title>"
           f"{_log_axis(left, top, width, height)}{''.join(marks)}{ticks}"
           f"<text x='{left + width / 2}' y='{top + height + 30}' text-anchor='middle'>channel</text></svg>")
    rows = "".join(f"<tr><td class='num'>{c}</td><td class='num'>{_num(r)}</td><td>{'FAIL' if _fails(r) else 'pass'}"
                   f"</td></tr>" for c, r in enumerate(ratios))
    table = (f"<details><summary>Per-channel values of {_e(tname)} as a table</summary><table><tr><th>channel</th>"
             f"<th>tol_ratio</th><th>verdict</th></tr>{rows}</table></details>")
    return (f"<figure><figcaption><strong>{_e(tname)} per channel</strong>: {_e(desc)}. Crosses fail, dots "
            f"pass; ratios beyond 1e4 are drawn at the top.</figcaption>{svg}{table}</figure>")


def _ticks(n: int, most: int = 12) -> list[int]:
    step = max(1, math.ceil(n / most))
    return list(range(0, n, step))


def _colour(r: float | None) -> str:
    """A light-to-dark blue ramp for passing cells (by log ratio), red for failing ones."""
    if _fails(r):
        return "#c0262d"
    t = (_log(r) - LOG_MIN) / (0 - LOG_MIN)
    light, dark = (232, 240, 250), (20, 70, 150)
    rgb = (round(a + (b - a) * t) for a, b in zip(light, dark, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _hatch(uid: str) -> str:
    return (f"<defs><pattern id='{uid}' width='4' height='4' patternUnits='userSpaceOnUse' "
            "patternTransform='rotate(45)'><rect width='4' height='4' fill='#c0262d'/>"
            "<line x1='0' y1='0' x2='0' y2='4' stroke='#fff' stroke-width='1.5'/></pattern></defs>")


def _grid(values: list[list[float | None]], cell: float, cls: str, attrs: Any, label: str, uid: str, desc: str,
          left: float = 40, top: float = 14) -> str:
    rows, cols = len(values), len(values[0]) if values else 0
    rects = []
    for i, row in enumerate(values):
        for j, r in enumerate(row):
            fail = _fails(r)
            fill = f"url(#{uid})" if fail else _colour(r)
            rects.append(f"<rect class='cell{' fail' if fail else ''}' {attrs(i, j)} x='{left + j * cell:.1f}' "
                         f"y='{top + i * cell:.1f}' width='{cell:.2f}' height='{cell:.2f}' fill='{fill}'>"
                         f"<title>{_e(label)} {_e(attrs(i, j, text=True))}: tol_ratio {_num(r)}</title></rect>")
    w, h = left + cols * cell + 10, top + rows * cell + 28
    return (f"<svg class='{cls}' role='img' aria-label='{_e(desc)}' width='{w:.0f}' height='{h:.0f}'>"
            f"{_hatch(uid)}{''.join(rects)}"
            f"<rect x='{left}' y='{top}' width='{cols * cell:.1f}' height='{rows * cell:.1f}' fill='none' "
            f"class='axis'/></svg>")


def _heatmap(tname: str, hm: Mapping[str, Any], spatial: Mapping[str, Any] | None) -> str:
    values = hm["values"]
    rb, cb = hm["row_bin"], hm["col_bin"]
    rows, cols = len(values), len(values[0]) if values else 0
    cell = max(3.0, min(18.0, 620.0 / max(cols, 1), 360.0 / max(rows, 1)))

    def attrs(i: int, j: int, *, text: bool = False) -> str:
        if text:
            return f"samples {i * rb}-{(i + 1) * rb - 1}, channels {j * cb}-{(j + 1) * cb - 1}" if rb * cb > 1 \
                else f"sample {i}, channel {j}"
        return f"data-sample='{i * rb}' data-channel='{j * cb}'"

    failing = [(i, j) for i, row in enumerate(values) for j, r in enumerate(row) if _fails(r)]
    desc = (f"worst tol_ratio of {tname} over each (sample, channel): {rows} x {cols} cells"
            + (f", each {rb} samples x {cb} channels" if rb * cb > 1 else "")
            + f"; {len(failing)} cells fail (hatched)")
    svg = _grid(values, cell, "heatmap", attrs, "cell", f"hatch-heat-{tname}", desc)
    listed = "".join(f"<li>{_e(attrs(i, j, text=True))}: tol_ratio {_num(values[i][j])}</li>"
                     for i, j in failing[:500])
    more = f"<li>… and {len(failing) - 500} more</li>" if len(failing) > 500 else ""
    parts = [f"<figure><figcaption><strong>{_e(tname)}: samples (rows) x channels (columns)</strong>: "
             f"{_e(desc)}. Darker blue is a larger error that still passes.</figcaption>{svg}"
             f"<details><summary>Failing cells as a list</summary><ul>{listed or '<li>none</li>'}{more}</ul>"
             f"</details></figure>"]
    if spatial:
        parts.append(_spatial(tname, spatial))
    return "".join(parts)


def _spatial(tname: str, sp: Mapping[str, Any]) -> str:
    values = sp["values"]
    rb, cb = sp["bin"]
    cols = len(values[0]) if values else 0
    cell = max(3.0, min(14.0, 320.0 / max(cols, 1), 320.0 / max(len(values), 1)))

    def attrs(i: int, j: int, *, text: bool = False) -> str:
        return f"row {i * rb}, column {j * cb}" if text else f"data-row='{i * rb}' data-col='{j * cb}'"

    n_fail = sum(_fails(r) for row in values for r in row)
    desc = (f"tol_ratio over the {sp['shape'][0]} x {sp['shape'][1]} positions of sample {sp['sample']}, "
            f"channel {sp['channel']} (the worst cell); {n_fail} fail (hatched)")
    svg = _grid(values, cell, "spatial", attrs, "position", f"hatch-spatial-{tname}", desc)
    return (f"<figure><figcaption><strong>{_e(tname)}, sample {sp['sample']}, channel {sp['channel']}</strong>: "
            f"{_e(desc)}.</figcaption>{svg}</figure>")


def _histogram(tname: str, h: Mapping[str, Any]) -> str:
    edges, counts = h["edges"], h["counts"]
    left, top, width, height = 52.0, 10.0, 560.0, 140.0
    peak = max([*counts, 1])
    bw = width / len(counts)
    bars = []
    for i, n in enumerate(counts):
        fail = edges[i] >= 0
        bh = height * math.log1p(n) / math.log1p(peak)
        bars.append(f"<rect class='bar{' fail' if fail else ''}' x='{left + i * bw:.1f}' y='{top + height - bh:.1f}' "
                    f"width='{bw - 1:.1f}' height='{bh:.1f}'><title>tol_ratio 1e{edges[i]:g} to 1e{edges[i + 1]:g}: "
                    f"{n:,} elements</title></rect>")
    x1 = left + (0 - edges[0]) / (edges[-1] - edges[0]) * width
    axis = "".join(f"<text x='{left + (k - edges[0]) / (edges[-1] - edges[0]) * width:.1f}' y='{top + height + 14}' "
                   f"text-anchor='middle'>1e{k}</text>" for k in range(int(edges[0]), int(edges[-1]) + 1, 2))
    total_fail = sum(n for i, n in enumerate(counts) if edges[i] >= 0) + h["nonfinite"]
    desc = (f"how many elements of {tname} have each tol_ratio (error / allowed error), log scale; "
            f"{total_fail:,} at or above 1 fail; {h['zero']:,} exact; {h['nonfinite']:,} non-finite")
    svg = (f"<svg class='histogram' role='img' aria-label='{_e(desc)}' width='{left + width + 10:.0f}' "
           f"height='{top + height + 34:.0f}'><title>{_e(desc)}</title>{''.join(bars)}"
           f"<line class='passline' x1='{x1:.1f}' x2='{x1:.1f}' y1='{top}' y2='{top + height}'/>"
           f"<line class='axis' x1='{left}' x2='{left + width}' y1='{top + height}' y2='{top + height}'/>{axis}"
           f"<text x='{left + width / 2}' y='{top + height + 30}' text-anchor='middle'>tol_ratio (error ÷ allowed; "
           f"the dashed line is 1)</text></svg>")
    rows = "".join(f"<tr><td>1e{edges[i]:g} – 1e{edges[i + 1]:g}</td><td class='num'>{n:,}</td></tr>"
                   for i, n in enumerate(counts) if n)
    return (f"<figure><figcaption><strong>{_e(tname)}: errors against the tolerance</strong>: {_e(desc)}."
            f"</figcaption>{svg}<details><summary>Histogram as a table</summary><table><tr><th>tol_ratio</th>"
            f"<th>elements</th></tr>{rows}</table></details></figure>")


def _natural(tname: str, h: Mapping[str, Any]) -> str:
    """Errors in natural units, with the allowance (where the reference is 0) and the
    correct kernels' envelope as lines."""
    edges, counts = h["edges"], h["counts"]
    left, top, width, height = 52.0, 18.0, 560.0, 140.0
    peak = max([*counts, 1])
    bw = width / len(counts)
    lo, hi = edges[0], edges[-1]

    def at(value: float) -> float:
        return left + (min(hi, max(lo, math.log10(value))) - lo) / (hi - lo) * width

    bars = "".join(
        f"<rect class='bar' x='{left + i * bw:.1f}' y='{top + height - height * math.log1p(n) / math.log1p(peak):.1f}' "
        f"width='{bw - 1:.1f}' height='{height * math.log1p(n) / math.log1p(peak):.1f}'><title>error 1e{edges[i]:g} to "
        f"1e{edges[i + 1]:g} natural units: {n:,} elements</title></rect>" for i, n in enumerate(counts))
    lines, said = [], []
    for value, cls, label in ((h.get("allowed"), "passline", "allowed where the reference is 0"),
                              (h.get("envelope"), "envline", "correct kernels' worst")):
        if value:
            x = at(value)
            lines.append(f"<line class='{cls}' x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{top + height}'/>"
                         f"<text x='{x + 3:.1f}' y='{top - 5 if cls == 'passline' else top + 10}'>{_e(label)}</text>")
            said.append(f"{label}: {_num(value)}")
    axis = "".join(f"<text x='{left + (k - lo) / (hi - lo) * width:.1f}' y='{top + height + 14}' "
                   f"text-anchor='middle'>1e{k}</text>" for k in range(int(lo), int(hi) + 1, 2))
    desc = (f"how many elements of {tname} have each error in natural units (|error| / the element's natural "
            f"scale), log scale; {h['zero']:,} exact" + ("; " + "; ".join(said) if said else ""))
    svg = (f"<svg class='natural' role='img' aria-label='{_e(desc)}' width='{left + width + 10:.0f}' "
           f"height='{top + height + 34:.0f}'><title>{_e(desc)}</title>{bars}{''.join(lines)}"
           f"<line class='axis' x1='{left}' x2='{left + width}' y1='{top + height}' y2='{top + height}'/>{axis}"
           f"<text x='{left + width / 2}' y='{top + height + 30}' text-anchor='middle'>error in natural units"
           f"</text></svg>")
    return (f"<figure><figcaption><strong>{_e(tname)}: errors in natural units</strong>: {_e(desc)}. Elements with "
            f"a large reference are allowed rtol x |reference| more than the dashed line.</figcaption>{svg}</figure>")


def _pictures(block_name: str, block: Mapping[str, Any]) -> str:
    out = []
    for tname, t in _tensor_rows(block):
        p = t.get("plots")
        if not p:
            continue
        out.append(f"<h3>{_e(tname)}: {_e(BLOCK_TITLES.get(block_name, block_name).lower())}</h3>")
        out.append(_channel_plot(tname, p["channel_ratio"], t.get("failed_channels", "")))
        if p.get("heatmap"):
            out.append(_heatmap(tname, p["heatmap"], p.get("spatial")))
        out.append(_histogram(tname, p["histogram"]))
        if p.get("natural"):
            out.append(_natural(tname, p["natural"]))
    return "".join(out)


# ------------------------------------------------------------------ the page


def render(doc: Mapping[str, Any], *, title: str = "bncheck report") -> str:
    """The report ``doc`` (a /v1/check answer) as a complete HTML document."""
    checks = doc.get("checks", {})
    meta = (f"variant <strong>{_e(doc['variant'])}</strong> in {_e(doc['dtype'])} (accumulating in "
            f"{_e(doc['accum_dtype'])}) on the {_e(doc['device'])}; shape {_e(doc['shape'])}, channel axis "
            f"{_e(doc['channel_axis'])}, {_num(doc['reduce_size'])} elements per channel, "
            f"{'training' if doc['training'] else 'inference'}, eps {_num(doc['eps'])}")
    body = [f"<header><h1>bncheck: {_verdict(doc['passed'])}</h1><p class='meta'>{meta}</p></header>",
            "<main><section aria-labelledby='tables'><h2 id='tables'>Verdicts</h2>"]
    for name in ("candidate", "variant", "finite_difference", "saved_statistics"):
        if name in checks:
            body.append(_block_table(name, checks[name]))
            if name == "finite_difference":
                body.append(_fd_facts(checks[name]))
    variants = checks.get("variants")
    if variants:
        for vname, block in variants["variants"].items():
            body.append(_block_table(vname, block))
        body.append(_spread(variants))
    body.append("</section>")
    drawn = "candidate" if "candidate" in checks else "variant"
    pictures = _pictures(drawn, checks[drawn]) if drawn in checks else ""
    if pictures:
        body.append(f"<section aria-labelledby='pictures'><h2 id='pictures'>Where the errors are</h2>{pictures}"
                    "</section>")
    notes = "".join(f"<li>{_e(n)}</li>" for n in doc.get("notes", []))
    if notes:
        body.append(f"<section aria-labelledby='notes'><h2 id='notes'>Notes</h2><ul class='notes'>{notes}</ul>"
                    "</section>")
    timings = ", ".join(f"{_e(k)} {v:.1f} ms" for k, v in doc.get("timings_ms", {}).items() if v is not None)
    body.append(f"<footer><p class='meta'>Time: {timings}.</p></footer></main>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}: "
            f"{'passed' if doc['passed'] else 'FAILED'}</title><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>{''.join(body)}"
            "</body></html>")
