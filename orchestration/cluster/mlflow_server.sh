#!/usr/bin/env bash
# The sweep's shared MLflow tracking server: PostgreSQL backend store, artifacts on a shared
# filesystem or an object store (proxied by the server: trials need no storage credentials),
# MLflow's basic-auth app, bound to 127.0.0.1 unless told otherwise.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://mlflow@db-host:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/mlflow-artifacts \
#   MLFLOW_AUTH_ADMIN_USERNAME=admin MLFLOW_AUTH_ADMIN_PASSWORD=... MLFLOW_FLASK_SERVER_SECRET_KEY=... \
#   bash orchestration/cluster/mlflow_server.sh
#
# Every setting comes from the environment, secrets included: none is written to a file or put on
# a command line (where `ps` would show it).
#   MLFLOW_BACKEND_STORE_URI      required. The database, without a password (PGPASSWORD or ~/.pgpass
#                                 holds it). postgresql+psycopg2:// (SQLAlchemy 2 reads a bare
#                                 postgresql:// as psycopg 3, which requirements.txt does not install).
#   MLFLOW_ARTIFACTS_DESTINATION  required. A folder every server replica mounts, or s3://, gs://, ...
#   MLFLOW_HOST                   127.0.0.1 (this machine only). 0.0.0.0 to serve the cluster: then
#   MLFLOW_ALLOWED_HOSTS          the host names clients use (the server refuses others: DNS rebinding).
#   MLFLOW_PORT                   5000
#   MLFLOW_WORKERS                4 server processes
#   MLFLOW_AUTH                   1: basic auth on; it then needs
#     MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD   the admin created on first start
#     MLFLOW_FLASK_SERVER_SECRET_KEY                           the same on every replica
#     MLFLOW_AUTH_DATABASE_URI    where users and permissions live (default: the backend store; its
#                                 tables have their own migration history)
#     MLFLOW_AUTH_DEFAULT_PERMISSION   READ: every user reads every experiment, edits only its own or
#                                 those granted (the sweep's user creates its experiments)
#     MLFLOW_AUTH_CACHE_TTL_S     60: a checked password is trusted that long (each check is a
#                                 deliberately slow hash; a sweep sends thousands of requests)
#   MLFLOW_BIN                    the mlflow command (default: mlflow on PATH)
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow@db-host:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. /shared/mlflow-artifacts or s3://bucket/path}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-4}"
MLFLOW="${MLFLOW_BIN:-mlflow}"

case "$MLFLOW_BACKEND_STORE_URI" in
  *://*:*@*)
    echo "error: MLFLOW_BACKEND_STORE_URI holds a password; put it in PGPASSWORD or ~/.pgpass instead" >&2
    exit 2 ;;
  postgresql://*)
    echo "error: MLFLOW_BACKEND_STORE_URI: write postgresql+psycopg2://... (a bare postgresql:// needs psycopg 3)" >&2
    exit 2 ;;
esac

args=(server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
      --host "$HOST" --port "$PORT" --workers "$WORKERS")
if [ "$HOST" != "127.0.0.1" ] && [ "$HOST" != "localhost" ]; then
  : "${MLFLOW_ALLOWED_HOSTS:?the server listens on $HOST: set MLFLOW_ALLOWED_HOSTS to the host names clients use}"
fi
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi
# The GenAI job runner (an extra process per server) has nothing to do for a sweep.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

if [ "${MLFLOW_AUTH:-1}" = "1" ]; then
  : "${MLFLOW_AUTH_ADMIN_USERNAME:?basic auth: set MLFLOW_AUTH_ADMIN_USERNAME (or MLFLOW_AUTH=0)}"
  : "${MLFLOW_AUTH_ADMIN_PASSWORD:?basic auth: set MLFLOW_AUTH_ADMIN_PASSWORD (or MLFLOW_AUTH=0)}"
  : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?basic auth: set MLFLOW_FLASK_SERVER_SECRET_KEY, the same on every replica}"
  # The auth app's settings file: no secret in it (the admin comes from the variables above).
  config="$(mktemp "${TMPDIR:-/tmp}/mlflow-auth.XXXXXX.ini")"
  cat > "$config" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_S:-60}
EOF
  export MLFLOW_AUTH_CONFIG_PATH="$config"
  args+=(--app-name basic-auth)
fi

exec "$MLFLOW" "${args[@]}"
