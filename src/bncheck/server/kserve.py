"""The KServe v2 (Triton) inference protocol, with the binary tensor data extension.

One model per backward variant. An infer body is a JSON header, then (binary tensor
data extension) the raw little-endian bytes of the inputs that say ``binary_data_size``,
one after another in input order; ``Inference-Header-Content-Length`` says where the
header ends. Here it becomes the same ``CheckRequest`` /v1 validates, runs through the
same ``runner.evaluate``, and the answer goes back as the protocol's outputs: the
variant's ``dx``, ``dgamma``, ``dbeta``, ``passed`` (BOOL) and ``report`` (BYTES: the /v1
JSON report, without the gradients, which are outputs of their own), each as JSON
``data`` or raw bytes as asked. With the system shared memory extension (regions.py) an
input or output names a registered region instead, and its bytes are read or written
there. Runs in a worker process, like ``runner.run``.

Errors read as the protocol's ``{"error": "..."}`` (errors.render), naming the v2
input or parameter: ``candidate_dx``, ``parameters.eps``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from bncheck.numerics.dtypes import wire_name
from bncheck.numerics.errors import InputError
from bncheck.numerics.inputs import FULL_TENSORS
from bncheck.numerics.report import TENSOR_NAMES
from bncheck.numerics.request import FD_METHODS, INPUT_NAMES, CheckOptions
from bncheck.numerics.variants import VARIANTS

from . import codec, regions, runner
from .errors import ProblemError, bad_request, from_domain
from .schemas import CheckRequest, Output
from .settings import Settings

__all__ = ["INPUTS", "MODEL_VERSION", "OUTPUTS", "PARAMETERS", "model_metadata", "run", "server_metadata"]

MODEL_VERSION = "1"
# v2 input name -> where it goes in a CheckRequest
INPUTS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in INPUT_NAMES},
    **{f"candidate_{t}": ("candidate", t) for t in TENSOR_NAMES},
}
REQUIRED = INPUT_NAMES[:2]
PER_CHANNEL = {name for name in INPUTS if name.removeprefix("candidate_") not in (*REQUIRED, *FULL_TENSORS)}
GRADIENTS = ("dx", "dgamma", "dbeta")
OUTPUTS = (*GRADIENTS, "passed", "report")
# Request parameters: the check's options (request.py; the model names the variant, rtol and atol
# stand for a tolerance, and the HTML answer asks for plots itself), and the protocol's own.
_NOT_PARAMETERS = ("variant", "tolerance", "plots")
_OPTIONS = [f for f in dataclasses.fields(CheckOptions) if f.name not in _NOT_PARAMETERS]
PARAMETERS = {f.name: f.metadata["doc"] for f in _OPTIONS}
PARAMETERS.update({
    "finite_difference": "a method: " + ", ".join(FD_METHODS) + " (default auto)",
    "rtol": "with atol: plain allclose terms instead of the calibrated verdict",
    "atol": "with rtol",
    "binary_data_output": "boolean: outputs as raw bytes (binary tensor data extension)",
})
_TENSOR_KEYS = {"name", "shape", "datatype", "parameters", "data"}


def server_metadata(version: str, *, shared_memory: bool = False) -> dict[str, Any]:
    extensions = ["binary_tensor_data", *(["system_shared_memory"] if shared_memory else [])]
    return {"name": "bncheck", "version": version, "extensions": extensions}


def model_metadata(model: str) -> dict[str, Any]:
    """Shapes are dynamic (-1); x and dy may have any rank from 2 (the NCHW case is shown).
    The datatype shown is FP32; FP16, BF16 and FP64 are read too, for any input."""
    def tensor(name: str, per_channel: bool) -> dict[str, Any]:
        return {"name": name, "datatype": "FP32", "shape": [-1] if per_channel else [-1, -1, -1, -1]}

    return {"name": model, "versions": [MODEL_VERSION], "platform": "bncheck",
            "inputs": [tensor(name, name in PER_CHANNEL) for name in INPUTS],
            "outputs": [tensor(name, name != "dx") for name in GRADIENTS]
            + [{"name": "passed", "datatype": "BOOL", "shape": [1]},
               {"name": "report", "datatype": "BYTES", "shape": [1]}]}


def unknown_model(model: str) -> ProblemError:
    detail = f"unknown model {model[:60]!r}; the models are the variants: {', '.join(VARIANTS)}"
    return ProblemError("unknown-model", detail, [("model", detail)])


# ------------------------------------------------------------------ request


def _fail(field: str, message: str) -> ProblemError:
    return bad_request(field, message)


def _header(body: Any, header_length: int | None) -> tuple[dict[str, Any], int]:
    size = len(body)
    if header_length is None:
        header_length = size
    elif header_length > size:
        msg = f"is {header_length:,} but the body has {size:,} bytes"
        raise ProblemError("malformed-infer", f"Inference-Header-Content-Length {msg}",
                           [("Inference-Header-Content-Length", msg)])
    try:
        doc = orjson.loads(memoryview(body)[:header_length])
    except orjson.JSONDecodeError as exc:
        where = "the body" if header_length == size else f"the first {header_length:,} bytes (the JSON header)"
        raise ProblemError("malformed-infer", f"{where} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail("body", "the inference request must be a JSON object with 'inputs'")
    return doc, header_length


def _input_list(doc: dict[str, Any]) -> list[dict[str, Any]]:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _fail("inputs", "must be a non-empty list of tensors (x and dy at least)")
    seen: set[str] = set()
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise _fail(f"inputs[{i}]", "each input is an object with name, shape, datatype and data or "
                                        "parameters.binary_data_size")
        name = t.get("name")
        if not isinstance(name, str) or name not in INPUTS:
            shown = repr(name)[:40]
            raise _fail(f"inputs[{i}].name", f"unknown input {shown}; the inputs are {', '.join(INPUTS)}")
        if name in seen:
            raise _fail(name, "is sent twice")
        seen.add(name)
        extra = sorted(set(t) - _TENSOR_KEYS)
        if extra:
            raise _fail(name, f"unknown tensor keys {extra[:5]}; a tensor has name, shape, datatype, data "
                              "and parameters")
    return inputs


def _source(t: dict[str, Any], call: runner.Call, client_shm: bool) -> int | regions.Window | None:
    """Where an input's data is: raw bytes after the header (their size), a shared-memory
    region (its window), or JSON ``data`` (None)."""
    params = t.get("parameters", {})
    if not isinstance(params, dict):
        raise _fail(t["name"], "parameters must be an object")
    if any(p in params for p in regions.PARAMETERS):
        if not client_shm:
            raise regions.disabled()
        window = regions.region_parameters(params, t["name"], call.regions)
        if "data" in t or "binary_data_size" in params:
            msg = "has a shared_memory_region and data or binary_data_size too; send one"
            raise ProblemError("malformed-infer", f"{t['name']}: {msg}", [(t["name"], msg)])
        return window
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in t:
            raise _fail(t["name"], "has neither data nor parameters.binary_data_size nor "
                                   "parameters.shared_memory_region")
        return None
    if type(size) is not int or size < 0:
        raise _fail(f"{t['name']}.parameters.binary_data_size", "must be a non-negative integer")
    if "data" in t:
        raise ProblemError("malformed-infer", f"{t['name']}: has both data and binary_data_size; send one",
                           [(t["name"], "has both data and binary_data_size")])
    return size


def _tensors(body: Any, inputs: list[dict[str, Any]], start: int, call: runner.Call, settings: Settings,
             access: regions.Access) -> dict[str, codec.Decoded]:
    sources = [_source(t, call, settings.client_shm) for t in inputs]
    binary = len(body) - start
    claimed = sum(s for s in sources if isinstance(s, int))
    if claimed != binary:
        msg = (f"the body holds {binary:,} bytes after the JSON header but the inputs' binary_data_size add "
               f"up to {claimed:,}")
        raise ProblemError("malformed-infer", msg, [("binary_data_size", msg)])
    out: dict[str, codec.Decoded] = {}
    at = start
    view = memoryview(body)
    for t, source in zip(inputs, sources, strict=True):
        name = t["name"]
        try:
            if source is None:
                out[name] = codec.decode({k: t[k] for k in ("shape", "datatype", "data") if k in t},
                                         max_elements=settings.max_elements)
            elif isinstance(source, int):
                out[name] = _from_bytes(t, view[at:at + source], settings.max_elements)
                at += source
            else:
                out[name] = _from_bytes(t, access.read(source, name), settings.max_elements, region=True)
        except codec.TensorError as exc:
            raise _fail(name, str(exc)) from None
    return out


def _from_bytes(t: dict[str, Any], raw: memoryview, max_elements: int, *, region: bool = False
                ) -> codec.Decoded:
    if "shape" not in t or "datatype" not in t:
        msg = "a tensor needs 'shape' and 'datatype'"
        raise codec.TensorError(msg)
    shape = codec.check_shape(t["shape"], max_elements)
    dt = codec.check_datatype(t["datatype"])
    want = math.prod(shape) * dt.itemsize
    if raw.nbytes != want:
        size = "shared_memory_byte_size" if region else "binary_data_size"
        msg = (f"{size} is {raw.nbytes:,} but shape {list(shape)} of {t['datatype']} needs {want:,} "
               f"bytes ({math.prod(shape):,} x {dt.itemsize})")
        raise codec.TensorError(msg)
    arr = codec.from_bytes(raw, dt, shape)
    # Read in place (read-only): out of the body (bytes, or a segment of ours, where the server
    # aligned the binary part) or out of a region; copied only when unaligned.
    if not arr.flags.aligned:
        arr = arr.copy()
    return codec.Decoded(arr, "binary", t["datatype"])


def _parameters(doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise _fail("parameters", "must be an object")
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise _fail(f"parameters.{unknown[0][:40]}", f"unknown parameter; bncheck reads {', '.join(PARAMETERS)}")
    data: dict[str, Any] = {f.name: params[f.name] for f in _OPTIONS
                            if f.name in params and f.name != "finite_difference"}
    if "finite_difference" in params:
        data["finite_difference"] = {"method": params["finite_difference"]}
    if "rtol" in params or "atol" in params:
        data["tolerance"] = {k: params[k] for k in ("rtol", "atol") if k in params}
    binary = params.get("binary_data_output", False)
    if type(binary) is not bool:
        raise _fail("parameters.binary_data_output", "must be true or false")
    return data, binary


Asked = tuple[str, bool, "regions.Window | None"]  # an output: name, as raw bytes, into a region (then raw)


def _asked(doc: dict[str, Any], binary_default: bool, call: runner.Call, client_shm: bool) -> list[Asked]:
    """The outputs to send, each with whether it goes as raw bytes and the region it goes
    into, if any; all of them, as raw bytes or JSON as asked, when none are named."""
    outputs = doc.get("outputs")
    if outputs is None:
        return [(name, binary_default, None) for name in OUTPUTS]
    if not isinstance(outputs, list):
        raise _fail("outputs", "must be a list of {name, parameters}")
    asked: list[Asked] = []
    for i, o in enumerate(outputs):
        name = o.get("name") if isinstance(o, dict) else None
        if name not in OUTPUTS:
            shown = repr(name)[:40]
            raise _fail(f"outputs[{i}].name", f"unknown output {shown}; the outputs are {', '.join(OUTPUTS)}")
        if any(name == n for n, _, _ in asked):
            raise _fail(f"outputs[{i}].name", f"{name} is asked for twice")
        params = o.get("parameters", {})
        if not isinstance(params, dict):
            raise _fail(f"outputs[{i}].parameters", "must be an object")
        binary = params.get("binary_data", binary_default)
        if type(binary) is not bool:
            raise _fail(f"outputs[{i}].parameters.binary_data", "must be true or false")
        window = None
        if any(p in params for p in regions.PARAMETERS):
            if not client_shm:
                raise regions.disabled()
            window = regions.region_parameters(params, f"outputs[{i}]", call.regions)
            binary = True  # its bytes go into the region
        asked.append((name, binary, window))
    return asked


_V1_TO_V2 = {"finite_difference": "parameters.finite_difference", "tolerance": "parameters.rtol",
             "variant": "model", "output": "outputs"}


def v2_field(loc: Sequence[Any]) -> str:
    """A /v1 request field (a pydantic loc, or a dotted name) as a v2 client knows it."""
    parts = [str(p) for p in loc if not str(p).startswith("function-")]
    if not parts:
        return "body"
    if parts[0] == "candidate" and len(parts) > 1:
        return f"candidate_{parts[1]}"
    if parts[0] in INPUTS:
        return parts[0]
    if parts[0] in _V1_TO_V2:
        return _V1_TO_V2[parts[0]]
    return f"parameters.{parts[0]}"


def parse(body: Any, call: runner.Call, settings: Settings, access: regions.Access
          ) -> tuple[Any, list[Asked], Any]:
    """The request, the outputs asked for and the request's id. Inputs in shared-memory
    regions are read through ``access`` (views, valid until it closes)."""
    if call.model not in VARIANTS:
        raise unknown_model(str(call.model))
    doc, header_length = _header(body, call.header_length)
    tensors = _tensors(body, _input_list(doc), header_length, call, settings, access)
    data, binary_default = _parameters(doc)
    asked = _asked(doc, binary_default, call, settings.client_shm)
    for name in REQUIRED:
        if name not in tensors:
            raise _fail(name, "is required (x and dy at least)")
    for name, decoded in tensors.items():
        where = INPUTS[name]
        if len(where) == 2:
            data.setdefault("candidate", {})[where[1]] = decoded
        else:
            data[name] = decoded
    data["variant"] = call.model
    data["output"] = Output(gradients=any(n in GRADIENTS for n, _, _ in asked) and not call.html, encoding="b64",
                            plots=call.html)
    try:
        req = CheckRequest.model_validate(data, context={"max_elements": settings.max_elements})
    except ValidationError as exc:
        pairs = [(v2_field(e.get("loc", ())), str(e.get("msg", "invalid")))
                 for e in exc.errors(include_input=False, include_url=False)]
        raise bad_request(*pairs[0], more=pairs[1:]) from None
    return req, asked, doc.get("id")


# ------------------------------------------------------------------ answer


Made = tuple[dict[str, Any], Any]  # an output's JSON entry, and its raw bytes when binary


def _output(name: str, datatype: str, shape: list[int], binary: bool, packed: Any, json_data: Any) -> Made:
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if binary:
        entry["parameters"] = {"binary_data_size": memoryview(packed).nbytes}
        return entry, packed
    entry["data"] = json_data
    return entry, None


def _tensor_output(name: str, arr: np.ndarray, binary: bool, held: codec.Held, notes: list[str]) -> Made:
    data = None if binary else codec.numbers(arr, flat=True, held=held)
    if not binary and data is None:
        notes.append(f"output {name} holds NaN or Inf, which JSON numbers cannot carry: sent as binary data")
        binary = True
    packed = codec.to_bytes(arr).data if binary else None
    return _output(name, wire_name(arr.dtype), list(arr.shape), binary, packed, data)


def run(body: Any, call: runner.Call, settings: Settings, *, deadline: float | None = None, joined: bool = True
        ) -> runner.Outcome:
    """The answer to one infer body; ``joined=False`` leaves it in pieces (runner.run);
    ``call.html``: the HTML report instead (the web page sends its files this way)."""
    with contextlib.closing(regions.Access()) as access:
        return _run(body, call, settings, access, deadline=deadline, joined=joined)


def _run(body: Any, call: runner.Call, settings: Settings, access: regions.Access, *, deadline: float | None,
         joined: bool) -> runner.Outcome:
    start = time.perf_counter()
    req, asked, request_id = parse(body, call, settings, access)
    decoded = (time.perf_counter() - start) * 1e3
    try:
        report = runner.evaluate(req, settings, deadline)
    except InputError as exc:
        raise from_domain(exc, rename=lambda field: v2_field(field.split("."))) from None
    if call.html:
        return runner.html_outcome(runner.to_wire(req, report), report)
    encode_start = time.perf_counter()
    held = codec.Held()
    notes: list[str] = []
    gradients = report.gradients or {}
    place = _placer(asked, access)
    made = {name: place(name, _tensor_output(name, gradients[name], binary, held, notes))
            for name, binary, _ in asked if name in GRADIENTS}
    wire = runner.to_wire(req.model_copy(update={"output": Output(gradients=False)}), report)
    wire["notes"] += notes
    timings = wire["timings_ms"]
    timings.update(decode=decoded, encode=(time.perf_counter() - encode_start) * 1e3,
                   total=(time.perf_counter() - start) * 1e3)
    text = orjson.dumps(wire)  # the report, with the time its outputs took
    for name, binary, _ in asked:
        if name == "passed":
            made[name] = place(name, _output(name, "BOOL", [1], binary, bytes([report.passed]), [report.passed]))
        elif name == "report":
            made[name] = place(name, _output(name, "BYTES", [1], binary, struct.pack("<I", len(text)) + text,
                                             [text.decode()]))
    # In the order asked: the header's outputs and the binary parts after it must agree.
    outputs = [made[name][0] for name, _, _ in asked]
    raw = [made[name][1] for name, _, _ in asked if made[name][1] is not None]
    header: dict[str, Any] = {"model_name": str(call.model), "model_version": MODEL_VERSION, "outputs": outputs}
    if request_id is not None:
        header["id"] = request_id
    doc = held.splice(orjson.dumps(header))
    elements = int(np.prod(report.shape))
    if not raw:
        return runner.Outcome(doc, report.passed, elements, timings)
    parts = (doc, *raw)
    headers = (("Inference-Header-Content-Length", str(len(doc))),)
    if joined:
        return runner.Outcome(b"".join(parts), report.passed, elements, timings,
                              media_type="application/octet-stream", headers=headers)
    return runner.Outcome(b"", report.passed, elements, timings, parts=parts,
                          media_type="application/octet-stream", headers=headers)


def _placer(asked: list[Asked], access: regions.Access) -> Callable[[str, Made], Made]:
    """``place(name, made)``: an output asked for in a shared-memory region is written there,
    and its entry says where and how many bytes, with neither data nor binary bytes; any
    other output is left as it is."""
    windows = {name: (i, window) for i, (name, _, window) in enumerate(asked) if window is not None}

    def place(name: str, made: Made) -> Made:
        if name not in windows:
            return made
        (i, window), (entry, packed) = windows[name], made
        access.write(window, packed, f"outputs[{i}]")
        params = {"shared_memory_region": window.region.name, "shared_memory_byte_size": memoryview(packed).nbytes}
        if window.offset:
            params["shared_memory_offset"] = window.offset
        return {**entry, "parameters": params}, None

    return place
