#!/usr/bin/env sh
# Build the naive C++ kernel, run it on a bncheck test vector, and verify its raw outputs.
# Usage: examples/cpp/verify.sh [SERVER_URL]   (without a URL, bncheck checks in-process)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# bncheck: $BNCHECK, else on PATH, else the repository's .venv (what `make serve` and `make test` create)
BNCHECK=${BNCHECK:-$(command -v bncheck || true)}
if [ -z "$BNCHECK" ] && [ -x "$here/../../.venv/bin/bncheck" ]; then BNCHECK="$here/../../.venv/bin/bncheck"; fi
if [ -z "$BNCHECK" ]; then
    echo "verify.sh: bncheck not found: run 'make serve' (or 'pip install .') in the repository," \
         "or set BNCHECK=/path/to/bncheck" >&2
    exit 2
fi
g++ -O2 -o "$work/bn_backward" "$here/bn_backward.cpp"
"$BNCHECK" vectors --case normal --shape 8,16,6,6 --out "$work/vectors" 2>"$work/vectors.log" || {
    cat "$work/vectors.log" >&2; exit 2; }
d="$work/vectors/normal"
"$work/bn_backward" "$d" 8 16 6 6 1e-5
server=""
if [ $# -ge 1 ]; then server="--server $1"; fi
# shellcheck disable=SC2086
"$BNCHECK" check $server --shape 8,16,6,6 --x "$d/x.bin" --dy "$d/dy.bin" --gamma "$d/gamma.bin" \
    --dx "$d/dx.bin" --dgamma "$d/dgamma.bin" --dbeta "$d/dbeta.bin" --fd stats
