#!/usr/bin/env bash
# Does outside Docker exactly what the container does -- docker/entrypoint.sh `serve` with the
# runtime image's environment, on the service-only venv (no torch, as in the image) -- then checks
# /ready and one embedding call. Needs `make model install-serve` first (docker-check does both).
set -euo pipefail
cd "$(dirname "$0")/.."
serve_bin=${SERVE_VENV:-$PWD/.venv-serve}/bin
[ -x "$serve_bin/tessera" ] || { echo "smoke: $serve_bin/tessera missing: make install-serve" >&2; exit 1; }
if "$serve_bin/python" -c 'import torch' 2>/dev/null; then
    echo "smoke: the service venv has torch; the runtime image must not" >&2
    exit 1
fi
port=$("$serve_bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data_dir=$(mktemp -d)
log=$(mktemp)
# The image's ENV (docker/Dockerfile, runtime stage), with paths of this checkout.
env -i HOME="$HOME" PATH="$serve_bin:/usr/bin:/bin" \
    TESSERA_HOST=127.0.0.1 TESSERA_PORT="$port" TESSERA_API_KEYS=smoke=smoke-test-key-1234 \
    TESSERA_MODELS_DIR="$PWD/models" TESSERA_DATA_DIR="$data_dir/data" \
    docker/entrypoint.sh serve >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data_dir" "$log"; }
trap cleanup EXIT
"$serve_bin/python" - "$port" "$pid" "$log" <<'PY'
import json, os, sys, time, urllib.error, urllib.request

port, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"smoke: server exited:\n{open(log).read()[-3000:]}")
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
            if response.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"smoke: /ready not 200 after 120 s:\n{open(log).read()[-3000:]}")
    time.sleep(0.25)
request = urllib.request.Request(
    f"{base}/v1/embeddings",
    data=json.dumps({"input": ["A man is playing a guitar."], "model": "minilm-l6"}).encode(),
    headers={"content-type": "application/json", "authorization": "Bearer smoke-test-key-1234"},
)
try:  # without the key: 401 with a JSON body
    urllib.request.urlopen(
        urllib.request.Request(f"{base}/v1/embeddings", data=b'{"input": "x"}', headers={"content-type": "application/json"}),
        timeout=30,
    )
    sys.exit("smoke: /v1/embeddings answered without an API key")
except urllib.error.HTTPError as error:
    assert error.code == 401 and json.load(error)["error"]["code"] == "missing_api_key", error.code
with urllib.request.urlopen(request, timeout=30) as response:
    body = json.load(response)
vector = body["data"][0]["embedding"]
norm = sum(x * x for x in vector) ** 0.5
assert len(vector) == 384 and abs(norm - 1) < 1e-3, (len(vector), norm)
print(f"smoke: /ready 200, one embedding of dim {len(vector)} (norm {norm:.4f}) from {base}")
PY
