// Post a check with a candidate dx computed here, in JavaScript, and print the verdict.
// Node 18+ (built-in fetch). Usage: node examples/node/check.mjs [URL]
const url = process.argv[2] ?? "http://127.0.0.1:8000";
const [N, C] = [64, 4];

// Deterministic inputs (a small LCG), float32 like a kernel's buffers.
let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1;
const x = Float32Array.from({ length: N * C }, () => 3 * rand() + 1);
const dy = Float32Array.from({ length: N * C }, rand);
const gamma = Float32Array.from({ length: C }, (_, c) => 0.5 + c / 4);
const eps = 1e-5;

// A straightforward batch-norm backward over axis 0 of an (N, C) row-major array.
function backward(x, dy, gamma) {
  const dx = new Float32Array(N * C);
  for (let c = 0; c < C; c++) {
    let mean = 0, v = 0, dbeta = 0, dot = 0;
    for (let n = 0; n < N; n++) mean += x[n * C + c];
    mean /= N;
    for (let n = 0; n < N; n++) v += (x[n * C + c] - mean) ** 2;
    const invstd = 1 / Math.sqrt(v / N + eps);
    for (let n = 0; n < N; n++) {
      dbeta += dy[n * C + c];
      dot += dy[n * C + c] * (x[n * C + c] - mean);
    }
    for (let n = 0; n < N; n++) {
      const xhat = (x[n * C + c] - mean) * invstd;
      dx[n * C + c] = gamma[c] * invstd * (dy[n * C + c] - dbeta / N - xhat * dot * invstd / N);
    }
  }
  return dx;
}

const b64 = (arr, shape) => ({
  shape, datatype: "FP32",
  b64: Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength).toString("base64"), // little-endian on x86/ARM
});

const body = {
  x: b64(x, [N, C]), dy: b64(dy, [N, C]), gamma: b64(gamma, [C]),
  variant: "qianfeng", dtype: "FP32",
  candidate: { dx: b64(backward(x, dy, gamma), [N, C]) },
};
const response = await fetch(`${url}/v1/check`, {
  method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
});
const report = await response.json();
if (!response.ok) {
  console.error(`${response.status} ${report.title}: ${report.detail}`);
  process.exit(2);
}
const dx = report.checks.candidate.dx;
console.log(`candidate dx: ${dx.passed ? "PASSED" : "FAILED"} (max abs ${dx.max_abs_err.toExponential(2)}, ` +
            `${dx.max_ulp === null ? "n/a" : dx.max_ulp.toFixed(1)} ulp, worst at [${dx.worst_index}])`);
console.log(`overall: ${report.passed ? "PASSED" : "FAILED"}`);
process.exit(report.passed ? 0 : 1);
