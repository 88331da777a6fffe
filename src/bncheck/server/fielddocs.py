"""What every field of the wire contract means, for the OpenAPI document (``/docs``).

Keyed by field name, with ``Schema.field`` for the few names that mean different things in
different schemas. ``openapi.build`` fills in every property that has no description of its
own, and a test holds the document to "every property described".
"""

from __future__ import annotations

__all__ = ["describe"]

_TENSORS = {
    "dx": "dx: the gradient with respect to x",
    "dgamma": "dgamma: the gradient with respect to gamma, one value per channel",
    "dbeta": "dbeta: the gradient with respect to beta, one value per channel",
    "y": "y: the forward output",
    "mean": "mean: the per-channel mean of x",
    "invstd": "invstd: the per-channel 1 / sqrt(var + eps)",
}

BY_FIELD: dict[str, str] = {
    "passed": "true when every tensor of this block is within its allowance",
    "notes": "what the reader should know about this block or check, in plain words",
    "channel": "the channel's index",
    "mismatched": "how many elements are over their allowance",
    "shape": "the tensor's shape, outermost axis first",
    "datatype": "FP16, BF16, FP32 or FP64",
    "variant": "the backward formula: staged, kevin, rocking, qianfeng (GET /v1/variants), or all",
    "dtype": "the precision, as a NumPy name (float16, bfloat16, float32, float64)",
    "accum_dtype": "the precision of the arithmetic and of the per-channel results",
    "channel_axis": "the channel axis of x: 1 for NCHW and (N, C), -1 for channels-last",
    "reduce_size": "R, the elements per channel that each statistic reduces over",
    "training": "training mode (batch statistics); false: inference with running statistics",
    "eps": "the epsilon added to the variance",
    "device": "where the check ran: cpu or gpu",
    "checks": "one block per kind of evidence; the top-level verdict needs all of them",
    "timings_ms": "milliseconds per phase of the check (decode, reference, variant, ..., total)",
    "worst_index": "the full index of the worst element, e.g. [n, c, h, w]",
    "worst_candidate": "the candidate's value there (\"nan\", \"inf\" or \"-inf\" when not finite)",
    "total": "how many elements were compared",
    "nonfinite": "how many candidate elements are NaN or Inf (each counts as mismatched)",
    "channels_failed": "how many channels hold at least one mismatched element",
    "worst_channels": "the channels with the largest tol_ratio, worst first (up to 5)",
    "decided_by": "which term of the allowance decided at the worst element",
    "cancellation": "the values are far below the size of the terms they come from: relative error means nothing",
    "tolerance": "how the allowance was made; an element's is rtol*|reference| + atol*scale + abs_floor",
    "compared": "what the numbers are when they are not the tensor itself (directional derivatives, samples)",
    "resolution": "what a pass could not see: errors below these went unflagged",
    "method": "stats (every element, exactly updated sums), brute (perturb and re-run) or directional",
    "requested": "the method the request asked for (auto picks stats and a brute cross-check)",
    "elements": "how many dx values were differenced",
    "samples": "brute: positions per channel",
    "directions": "directional: how many random directions",
    "seed": "seed of the sampled positions and directions",
    "cross_check": "auto: a few brute-force positions that confirm the stats method",
    "positions": "how many positions per channel",
    "metrics": "the comparison at those positions",
    "variants": "variant all: one block per formula",
    "spread_pair": "per tensor: the two formulas that differ the most",
    "name": "the formula's name, as used in variant",
    "summary": "what the formula does",
    "formula": "the formula itself",
    "reference": "where the formula was published",
    "seed_function": "the function of the seed gist it follows",
    "rtol": "relative term: allowed += rtol * |reference|",
    "atol": "absolute term: allowed += atol (or atol * scale, in natural mode)",
    "x": "the input of the forward pass (any rank >= 2, channels on channel_axis)",
    "dy": "the gradient flowing back into y, the same shape as x",
    "running_mean": "inference: the running mean, one value per channel",
    "running_var": "inference: the running variance, one value per channel",
    "saved_mean": "the mean your forward pass saved; the formulas use it, and it is judged against x's",
    "saved_invstd": "the invstd your forward pass saved; used and judged like saved_mean",
    "candidate": "your kernel's outputs to verify, each in the dtype your kernel wrote it",
    "finite_difference": "finite-difference evidence that the float64 reference is right",
    "output": "what to send back",
    "field": "the request field at fault, as a dotted path (candidate.dx, finite_difference.step)",
    "message": "what is wrong with it",
    "type": "the problem's kind, a relative URI such as /problems/invalid-input",
    "title": "the problem's kind, in words",
    "status": "the HTTP status",
    "detail": "what went wrong, in one sentence, without echoing the input",
    "instance": "the path that was called",
    "errors": "one entry per field at fault",
}

BY_SCHEMA_FIELD: dict[str, str] = {
    "Gradients.dx": "dx of the chosen formula in dtype, encoded like x (output.encoding overrides)",
    "Gradients.dgamma": "dgamma of the chosen formula, in accum_dtype",
    "Gradients.dbeta": "dbeta of the chosen formula, in accum_dtype",
    "Checks.variant": "the chosen formula in dtype against the float64 reference",
    "Checks.finite_difference": "the float64 reference against finite differences of the forward definition",
    "Checks.candidate": "your outputs against the reference, judged against correct kernels in their precision",
    "Checks.saved_statistics": "saved_mean and saved_invstd against x's own statistics",
    "Checks.variants": "variant all: every formula, and how far they spread",
    "CheckResponse.variant": "the formula that ran",
    "CheckResponse.dtype": "the precision it ran in",
    "CheckResponse.shape": "x's shape",
    "CheckResponse.checks": "one block per kind of evidence; passed is true only when every block passed",
    "CheckResponse.notes": "what the reader should know about the whole check: blind spots of the data, "
                           "how a candidate was judged, reduced work",
    "CheckRequest.variant": "the backward formula bncheck computes: staged, kevin, rocking, qianfeng, or all",
    "CheckRequest.eps": "the epsilon added to the variance",
    "CheckRequest.training": "training mode (batch statistics); false: inference, which needs running_mean "
                             "and running_var",
    "ChannelError.mismatched": "how many of the channel's elements are over their allowance",
    "FDBlock.method": "the method that ran: stats, brute or directional",
    "FDBlock.seed": "seed of the sampled positions and directions",
    "FiniteDifference.seed": "seed of the sampled positions (brute) and directions (directional)",
    "VariantsBlock.variants": "one block per formula, each against the float64 reference",
    "ToleranceSpec.rtol": "for every candidate tensor: allowed += rtol * |reference| (give atol too)",
    "ToleranceSpec.atol": "for every candidate tensor: allowed += atol (give rtol too)",
    "ToleranceIn.rtol": "allowed += rtol * |reference|",
    "ToleranceIn.atol": "allowed += atol",
    # the answer (its schema is generated from numerics/report.py; the descriptions live here)
    "CheckResponse.passed": "true only when every block in checks passed",
    "CheckResponse.gradients": "the chosen formula's dx, dgamma, dbeta; absent for variant 'all' or "
                               "output.gradients false",
    "CheckResponse.reference": "float64; present when output.reference is true",
    "ChannelError.max_abs_err": "the channel's largest |candidate - reference|; null where not finite",
    "ChannelError.tol_ratio": "the channel's worst |err| / allowed; null when the channel holds a non-finite value",
    "FDBlock.step": "the step, relative to sqrt(var + eps), per channel",
    "FDBlock.step_min": "the smallest absolute step of any channel",
    "FDBlock.step_max": "the largest absolute step of any channel",
    "FDBlock.estimated_error": "the finite differences' own error, natural-scale units",
    "Resolution.natural": "allowance where the reference is 0, in natural-scale units",
    "Resolution.max_abs": "the largest error any element was allowed: a pass means no error above it",
    "Resolution.ulp": "max_abs in ulps of the tensor's dtype at its largest |reference|",
    "TensorReport.max_abs_err": "the largest |candidate - reference| over finite candidates",
    "TensorReport.max_rel_err": "over elements whose reference is not 0; null when not finite, or not applicable "
                                "(cancellation)",
    "TensorReport.rms_err": "root mean square of the errors over finite candidates",
    "TensorReport.max_ulp": "in the candidate's dtype, over elements whose reference is not 0; null when not "
                            "applicable (cancellation)",
    "TensorReport.tol_ratio": "worst |err| / allowed; <= 1 passes; null if non-finite",
    "TensorReport.worst_reference": "the reference's value at the worst element",
    "TensorReport.worst_allowed": "the allowance at the worst element: tol_ratio = |worst_candidate - "
                                  "worst_reference| / worst_allowed",
    "TensorReport.failed_channels": "every failing channel, in order, as ranges: '16-23,30'",
    "TensorReport.compared": "present only when the numbers are not the tensor itself (directional derivatives, "
                             "sampled positions)",
    "TensorReport.plots": "present when output.plots is true: what the HTML report draws, from every element's "
                          "tol_ratio (null where the candidate is not finite)",
    "ToleranceUsed.mode": "natural: atol is in units of the natural scale",
    "ToleranceUsed.floor": "always 1 (the first release's noise-floor widening; kept for compatibility)",
    "ToleranceUsed.basis": "calibrated: measured on correct kernels run on these inputs; analytic: a first-order "
                           "bound; user: the request's tolerance",
    "ToleranceUsed.envelope": "calibrated: correct kernels' worst error, natural units",
    "ToleranceUsed.margin": "calibrated: allowed = margin * envelope * scale + rtol * |reference| "
                            "(atol = margin * envelope)",
    "ToleranceUsed.members": "calibrated: how many correct kernels the envelope spans",
    "ToleranceUsed.channels": "calibrated: on how many channels the correct kernels ran: a first few when their "
                              "envelope already passes every tensor (more channels could only widen it), all of "
                              "them when something fails",
    "ToleranceUsed.abs_floor": "added to every element's allowance: the rounding of outputs in the dtype's "
                               "subnormal range. allowed = rtol * |reference| + atol * scale + abs_floor, scale = 1 "
                               "in absolute mode",
    "VariantsBlock.spread": "per tensor: the largest difference between two variants",
    # the pictures' numbers (numerics/pictures.py), in a tensor report when output.plots is true
    "Pictures.channel_ratio": "each channel's worst tol_ratio (over 1 fails; null: a non-finite candidate)",
    "Pictures.heatmap": "the worst tol_ratio of each (sample, channel); null for per-channel tensors",
    "Pictures.spatial": "the tol_ratio over the positions of the worst (sample, channel); null for (N, C)",
    "Pictures.histogram": "how many elements have each tol_ratio",
    "Heatmap.row_bin": "samples per row (more than 1 when the batch was pooled to 64 rows)",
    "Heatmap.col_bin": "channels per column (more than 1 when the channels were pooled to 128 columns)",
    "Heatmap.values": "rows of the worst tol_ratio per cell; null where a candidate value is not finite",
    "SpatialMap.sample": "the sample (index on axis 0) of the worst cell",
    "SpatialMap.bin": "positions per pixel along each axis (more than 1 when pooled to 64 x 64)",
    "SpatialMap.values": "rows of the worst tol_ratio per pixel; null where a candidate value is not finite",
    "Histogram.edges": "bin edges in log10(tol_ratio), from -8 to 4 (the first and last bins take everything "
                       "beyond)",
    "Histogram.counts": "elements per bin",
    "Histogram.zero": "elements with no error at all",
    "Pictures.natural": "how many elements have each error in natural units; null where no natural scale applies",
    "NaturalHistogram.edges": "bin edges in log10(|error| / natural scale), from -12 to 4",
    "NaturalHistogram.counts": "elements per bin (finite candidates)",
    "NaturalHistogram.zero": "elements with no error at all",
    "NaturalHistogram.allowed": "the allowance in natural units where the reference is 0 (null: absolute tolerance)",
    "NaturalHistogram.envelope": "the correct kernels' worst error in natural units (calibrated verdicts)",
}
for _name, _what in _TENSORS.items():
    BY_FIELD.setdefault(_name, _what)
    BY_SCHEMA_FIELD[f"Candidate.{_name}"] = f"your {_what}, in the dtype your kernel wrote it"
    BY_SCHEMA_FIELD[f"ToleranceSpec.{_name}"] = f"plain allclose terms for {_name} alone"
    for block in ("Block", "FDBlock"):
        BY_SCHEMA_FIELD[f"{block}.{_name}"] = f"the comparison of {_name}, when this block compared it"


def describe(schema_name: str, field: str) -> str | None:
    return BY_SCHEMA_FIELD.get(f"{schema_name}.{field}") or BY_FIELD.get(field)
