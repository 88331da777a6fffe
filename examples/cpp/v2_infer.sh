#!/usr/bin/env sh
# Build the C++ KServe v2 example and run it twice against a server: the kernel as written,
# then with a planted bug (dx of channel 3 zeroed).
# Usage: examples/cpp/v2_infer.sh [SERVER_URL] [--shm]   (default http://127.0.0.1:8000, as make serve;
# --shm: the tensors through POSIX shared memory, for a server on this host started with
# BNCHECK_CLIENT_SHM=true)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
url=${1:-http://127.0.0.1:8000}
[ $# -gt 0 ] && shift
g++ -O2 -std=c++17 -o "$work/v2_infer" "$here/v2_infer.cpp" -lrt
"$work/v2_infer" "$url" "$@"
"$work/v2_infer" "$url" --bug "$@"
