#!/bin/sh
# The container's entrypoint. docker/smoke.sh runs this same file outside Docker.
#   serve              the API (default)
#   index build ...    a batch index build against the same volumes (the index-builder job)
#   anything else      run as a command
set -eu

: "${TESSERA_MODELS_DIR:=/app/models}"
: "${TESSERA_DATA_DIR:=/data}"
: "${TESSERA_HOST:=0.0.0.0}"
export TESSERA_MODELS_DIR TESSERA_DATA_DIR TESSERA_HOST

# Fail fast, with the reason, when the models volume holds no model folder.
if ! ls "$TESSERA_MODELS_DIR"/*/manifest.json >/dev/null 2>&1; then
    echo "entrypoint: no model folder (*/manifest.json) in $TESSERA_MODELS_DIR" >&2
    exit 1
fi
if [ "${TESSERA_READ_ONLY:-false}" != "true" ]; then
    mkdir -p "$TESSERA_DATA_DIR"
fi

case "${1:-serve}" in
    serve)
        [ "$#" -gt 0 ] && shift
        exec tessera serve "$@"
        ;;
    index)
        exec tessera "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
