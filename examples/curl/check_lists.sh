#!/usr/bin/env sh
# POST a check with plain nested lists. Usage: examples/curl/check_lists.sh [URL]
set -eu
URL=${1:-http://127.0.0.1:8000}
curl -sS --fail-with-body -H 'content-type: application/json' "$URL/v1/check" -d '{
  "x":     [[1.0, 2.0, 3.0, 4.0], [2.0, 0.5, -1.0, 3.0], [0.0, 1.0, 2.0, -2.0]],
  "dy":    [[0.1, -0.2, 0.3, 0.4], [0.5, 0.6, -0.7, 0.8], [0.9, 1.0, 1.1, -1.2]],
  "gamma": [1.0, 0.5, -2.0, 1.5],
  "variant": "qianfeng",
  "candidate": {"dbeta": [1.5, 1.4, 0.7, 0.0]}
}'
echo
