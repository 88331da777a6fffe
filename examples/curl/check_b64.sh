#!/usr/bin/env sh
# POST a check with b64 tensors: exact bits, and the only way to send NaN or Inf.
# The payloads are float32, little-endian, row-major; made with
#   python3 -c "import numpy as np, base64; print(base64.b64encode(np.array(V, '<f4').tobytes()).decode())"
# x = [[1, 2], [3, 5], [0, -1]], dy = [[0.5, -1], [0.25, 2], [-1, 0.5]]
# candidate dx holds a NaN at [1, 0]: reported as a non-finite mismatch, not refused.
set -eu
URL=${1:-http://127.0.0.1:8000}
X=$(printf '\000\000\200\077\000\000\000\100\000\000\100\100\000\000\240\100\000\000\000\000\000\000\200\277' | base64 | tr -d '\n')
DY=$(printf '\000\000\000\077\000\000\200\277\000\000\200\076\000\000\000\100\000\000\200\277\000\000\000\077' | base64 | tr -d '\n')
DX=$(printf '\000\000\000\000\000\000\000\000\000\000\300\177\000\000\000\000\000\000\000\000\000\000\000\000' | base64 | tr -d '\n')
curl -sS --fail-with-body -H 'content-type: application/json' "$URL/v1/check" -d "{
  \"x\":  {\"shape\": [3, 2], \"datatype\": \"FP32\", \"b64\": \"$X\"},
  \"dy\": {\"shape\": [3, 2], \"datatype\": \"FP32\", \"b64\": \"$DY\"},
  \"candidate\": {\"dx\": {\"shape\": [3, 2], \"datatype\": \"FP32\", \"b64\": \"$DX\"}},
  \"finite_difference\": {\"method\": \"brute\"}
}"
echo
