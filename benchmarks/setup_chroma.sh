#!/usr/bin/env bash
# The peer for benchmarks/vs_chroma.py: Chroma in its own venv (.peer-chroma), its server run as
# `chroma run --path DIR --port P`. The benchmark feeds it precomputed vectors only (never its
# default embedding function, which downloads a model).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || [ -x .venv/bin/wrk ] || { echo "wrk missing: make wrk (or apt-get install -y wrk)" >&2; exit 1; }
if [ ! -x .peer-chroma/bin/chroma ]; then
    python3 -m venv .peer-chroma
    .peer-chroma/bin/pip install -q 'chromadb==1.5.9'
fi
echo "peer ready: .peer-chroma/bin/chroma"
