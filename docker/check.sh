#!/usr/bin/env bash
# Deployment checks without a Docker engine (CI runs them): the compose file with every profile,
# the Dockerfile linter, and the smoke test of the container's entrypoint.
set -euo pipefail
cd "$(dirname "$0")/.."
compose=docker/docker-compose.yml
command -v docker-compose >/dev/null || { echo "docker-compose missing: apt-get install -y docker-compose" >&2; exit 1; }
for profile in "" index-builder replicas ray prometheus training; do
    docker-compose -f "$compose" --env-file docker/.env.example ${profile:+--profile "$profile"} config -q
    echo "compose config ok: ${profile:-default}"
done
.venv/bin/hadolint docker/Dockerfile && echo "hadolint ok"
bash docker/nginx-check.sh
make -s install-serve
bash docker/smoke.sh
