#!/usr/bin/env bash
# Creates bench/.peer-venv (django-webhook and its deps), the PostgreSQL database bench_peer,
# and its tables. Idempotent: run it again at any time.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/../.peer-venv"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
PSQL=(psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA)
if [ "$("${PSQL[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'bench_peer'")" != "1" ]; then
  "${PSQL[@]}" -c "CREATE DATABASE bench_peer"
fi
cd "$HERE"
PYTHONWARNINGS=ignore::RuntimeWarning "$VENV/bin/python" manage.py migrate --noinput -v 0
echo "peer ready: $VENV"
