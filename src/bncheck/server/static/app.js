// bncheck's page: read .npy, .npz and raw .bin files in the browser, send them as raw bytes
// (KServe v2 binary tensor data: a JSON header, then the bytes), and show the HTML report
// the server answers with (Accept: text/html). No library, no network beyond this server.
"use strict";

const INPUTS = ["x", "dy", "gamma", "beta", "running_mean", "running_var", "saved_mean", "saved_invstd"];
const OUTPUTS = ["dx", "dgamma", "dbeta", "y", "mean", "invstd"];
const PER_CHANNEL = new Set(["gamma", "beta", "running_mean", "running_var", "saved_mean", "saved_invstd",
                             "dgamma", "dbeta", "mean", "invstd"]);
const NPY_TYPES = { "<f2": "FP16", "<f4": "FP32", "<f8": "FP64", "|V2": "BF16", "<V2": "BF16",
                    "bfloat16": "BF16", "<bfloat16": "BF16" };
const ITEMSIZE = { FP16: 2, BF16: 2, FP32: 4, FP64: 8 };

const dropped = new Map(); // a name (x, dx, inputs_npz, ...) -> File

class BadFile extends Error {}

// ---------------------------------------------------------------- .npy

function readNpy(buffer, what) {
  const bytes = new Uint8Array(buffer);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) {
    throw new BadFile(`${what}: not a .npy file (no \\x93NUMPY magic)`);
  }
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new BadFile(`${what}: unreadable .npy header`);
  if (fortran[1] === "True") throw new BadFile(`${what}: Fortran-ordered arrays are not supported; save it C-ordered`);
  const datatype = NPY_TYPES[descr[1]];
  if (!datatype) {
    throw new BadFile(`${what}: dtype ${descr[1]} is not one of float16, bfloat16, float32, float64 (little-endian)`);
  }
  const dims = shape[1].split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  const data = bytes.subarray(start + headerLen);
  const want = dims.reduce((a, b) => a * b, 1) * ITEMSIZE[datatype];
  if (data.length !== want) throw new BadFile(`${what}: holds ${data.length} bytes of data; its shape needs ${want}`);
  return { datatype, shape: dims, data };
}

// ---------------------------------------------------------------- .npz (a zip of .npy)

async function inflateRaw(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function readNpz(buffer, what) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new BadFile(`${what}: not a .npz (zip) file`);
  const count = view.getUint16(eocd + 10, true);
  let at = view.getUint32(eocd + 16, true);
  const arrays = new Map();
  for (let k = 0; k < count; k++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new BadFile(`${what}: damaged zip directory`);
    const method = view.getUint16(at + 10, true);
    const compressed = view.getUint32(at + 20, true);
    const nameLen = view.getUint16(at + 28, true);
    const extraLen = view.getUint16(at + 30, true);
    const commentLen = view.getUint16(at + 32, true);
    const local = view.getUint32(at + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLen));
    at += 46 + nameLen + extraLen + commentLen;
    if (compressed === 0xffffffff) throw new BadFile(`${what}: zip64 archives (over 4 GB) are not supported`);
    const dataStart = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    let member = bytes.subarray(dataStart, dataStart + compressed);
    if (method === 8) member = await inflateRaw(member);
    else if (method !== 0) throw new BadFile(`${what}: ${name} uses zip method ${method}; use np.savez`);
    const copy = member.slice(); // its own, aligned buffer
    arrays.set(name.replace(/\.npy$/, ""), readNpy(copy.buffer, `${what}: ${name}`));
  }
  return arrays;
}

// ---------------------------------------------------------------- raw .bin

function readBin(buffer, what, shape, datatype) {
  const want = shape.reduce((a, b) => a * b, 1) * ITEMSIZE[datatype];
  if (buffer.byteLength !== want) {
    throw new BadFile(`${what}: a raw file of ${buffer.byteLength} bytes, but shape [${shape}] of ${datatype} ` +
                      `needs ${want}; set the shape and datatype of .bin files`);
  }
  return { datatype, shape, data: new Uint8Array(buffer) };
}

function binShape() {
  const text = document.getElementById("bin-shape").value.trim();
  if (!text) return null;
  const dims = text.replace(/[[\]()\s]/g, "").split(/[,x]/).filter((s) => s).map(Number);
  if (!dims.length || dims.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new BadFile(`the shape of .bin files must be positive integers, like 8,32,28,28; got "${text}"`);
  }
  return dims;
}

// ---------------------------------------------------------------- gathering the tensors

function fileFor(name) {
  const input = document.querySelector(`input[type=file][name="${name}"]`);
  return (input && input.files.length ? input.files[0] : null) || dropped.get(name) || null;
}

async function gather() {
  const tensors = new Map();
  const raw = []; // .bin files wait for x's shape
  for (const [npzName, names] of [["inputs_npz", INPUTS], ["outputs_npz", OUTPUTS]]) {
    const file = fileFor(npzName);
    if (!file) continue;
    const arrays = await readNpz(await file.arrayBuffer(), file.name);
    for (const n of names) if (arrays.has(n)) tensors.set(n, arrays.get(n));
  }
  for (const name of [...INPUTS, ...OUTPUTS]) {
    const file = fileFor(name);
    if (!file) continue;
    if (/\.bin$/i.test(file.name)) raw.push([name, file]);
    else tensors.set(name, readNpy(await file.arrayBuffer(), file.name));
  }
  if (raw.length) {
    const datatype = document.getElementById("bin-dtype").value;
    let shape = binShape() || (tensors.get("x") && tensors.get("x").shape);
    if (!shape) throw new BadFile("raw .bin files need a shape: fill in the shape of .bin files");
    const axis = Number(document.getElementById("channel-axis").value || 1);
    const C = shape[(axis % shape.length + shape.length) % shape.length];
    for (const [name, file] of raw) {
      tensors.set(name, readBin(await file.arrayBuffer(), file.name, PER_CHANNEL.has(name) ? [C] : shape, datatype));
    }
  }
  for (const need of ["x", "dy"]) {
    if (!tensors.has(need)) throw new BadFile(`choose a file for ${need} (or an inputs .npz holding it)`);
  }
  return tensors;
}

function v2Body(tensors) {
  const inputs = [];
  const parts = [];
  for (const [name, t] of tensors) {
    inputs.push({ name: OUTPUTS.includes(name) ? `candidate_${name}` : name, shape: t.shape, datatype: t.datatype,
                  parameters: { binary_data_size: t.data.byteLength } });
    parts.push(t.data);
  }
  const parameters = { finite_difference: document.getElementById("fd").value,
                       channel_axis: Number(document.getElementById("channel-axis").value || 1) };
  const dtype = document.getElementById("dtype").value;
  if (dtype) parameters.dtype = dtype;
  const header = new TextEncoder().encode(JSON.stringify({ inputs, parameters }));
  return { body: new Blob([header, ...parts]), headerLength: header.byteLength };
}

// ---------------------------------------------------------------- the check

function say(text) { document.getElementById("status").textContent = text; }
function fail(text) { document.getElementById("error").textContent = text; }

async function run(event) {
  event.preventDefault();
  fail("");
  const button = document.getElementById("run");
  button.disabled = true;
  try {
    say("Reading the files…");
    const tensors = await gather();
    const { body, headerLength } = v2Body(tensors);
    const variant = document.getElementById("variant").value;
    say(`Checking ${[...tensors.keys()].join(", ")} (${(body.size / 1048576).toFixed(1)} MiB)…`);
    const headers = { "Inference-Header-Content-Length": String(headerLength), Accept: "text/html",
                      "Content-Type": "application/octet-stream" };
    const token = document.getElementById("token").value;
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(`/v2/models/${encodeURIComponent(variant)}/infer`, { method: "POST", headers, body });
    const text = await response.text();
    if (!response.ok) {
      let message = text;
      try { message = JSON.parse(text).error || text; } catch (_) { /* not JSON: show it as it is */ }
      say("");
      fail(`The server answered ${response.status}: ${message}`);
      return;
    }
    show(text);
    say(/<title>[^<]*FAILED/.test(text) ? "Done: the check FAILED; the report is below." :
        "Done: the check passed; the report is below.");
  } catch (err) {
    say("");
    fail(err instanceof BadFile ? err.message : `Something went wrong: ${err}`);
  } finally {
    button.disabled = false;
  }
}

function show(page) {
  const result = document.getElementById("result");
  const frame = document.getElementById("report");
  frame.srcdoc = page;
  const link = document.getElementById("download");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([page], { type: "text/html" }));
  result.hidden = false;
}

// ---------------------------------------------------------------- dropping files

function nameOf(file) {
  const stem = file.name.replace(/\.[^.]*$/, "").toLowerCase().replace(/^candidate_/, "");
  if (/\.npz$/i.test(file.name)) return /out|cand|result|grad/.test(stem) ? "outputs_npz" : "inputs_npz";
  return [...INPUTS, ...OUTPUTS].includes(stem) ? stem : null;
}

function onDrop(event) {
  event.preventDefault();
  document.getElementById("drop").classList.remove("over");
  const list = document.getElementById("dropped");
  for (const file of event.dataTransfer.files) {
    const name = nameOf(file);
    const item = document.createElement("li");
    if (name) {
      dropped.set(name, file);
      item.textContent = `${file.name} → ${name.replace("_npz", " .npz")}`;
    } else {
      item.textContent = `${file.name}: not used (name it x, dy, gamma, beta, dx, dgamma, dbeta, ...)`;
    }
    list.appendChild(item);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("check").addEventListener("submit", run);
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.getElementById("drop").classList.add("over");
  });
  document.addEventListener("dragleave", () => document.getElementById("drop").classList.remove("over"));
  document.addEventListener("drop", onDrop);
});
