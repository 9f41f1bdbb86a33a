#!/usr/bin/env bash
# `nginx -t` on docker/nginx.conf without Docker: the upstream names (api, api-replica) resolve
# through a private /etc/hosts bind-mounted in a new mount namespace (nothing on the machine changes).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nginx >/dev/null || { echo "nginx missing: apt-get install -y nginx-light" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '127.0.0.1 localhost\n127.0.0.2 api\n127.0.0.3 api-replica\n' >"$work/hosts"
unshare --mount sh -c "mount --bind '$work/hosts' /etc/hosts && \
    nginx -t -q -c '$PWD/docker/nginx.conf' -g 'pid $work/nginx.pid;'"
echo "nginx config ok"
