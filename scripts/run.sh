#!/usr/bin/env bash
# `make run`: the whole stack in the foreground; Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
mkdir -p var/log

REDIS_URL="$(scripts/ensure-redis.sh)"
export REDIS_URL DJANGO_SETTINGS_MODULE=llmproject.settings PYTHONUNBUFFERED=1
if [ -z "${SECRET_KEY:-}" ]; then
  [ -f var/secret_key ] || "$PY" -c "import secrets; print(secrets.token_urlsafe(50))" > var/secret_key
  SECRET_KEY="$(cat var/secret_key)"; export SECRET_KEY
fi

"$PY" manage.py migrate --noinput -v0
"$PY" manage.py collectstatic --noinput -v0
# The default registry serves the tiny local checkpoint on vLLM: make it once.
"$PY" manage.py create_tiny_model >/dev/null
demo="$("$PY" manage.py bootstrap_demo)"
field() { "$PY" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$demo" "$1"; }
user="$(field username)"; password="$(field password)"; key="$(field api_key)"

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

"$PY" -m uvicorn llmproject.asgi:application --host 127.0.0.1 --port "$PORT" --log-level warning \
  > var/log/web.log 2>&1 & pids+=($!)
"$PY" manage.py run_workers > var/log/workers.log 2>&1 & pids+=($!)
"$PY" -m celery -A llmproject flower --address=127.0.0.1 --port="$FLOWER_PORT" \
  --basic-auth="${FLOWER_BASIC_AUTH:-$user:$password}" > var/log/flower.log 2>&1 & pids+=($!)
"$PY" manage.py reconcile > var/log/reconciler.log 2>&1 & pids+=($!)

for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/schema/" && break
  sleep 0.2
done
echo "waiting for the model workers (vLLM takes about half a minute to load)..."
for _ in $(seq 300); do
  "$PY" manage.py shell -v 0 -c "
from inference.registry import models
from llmproject.celery import app
names = {r.split('@')[0].rsplit('-', 1)[0] for reply in app.control.ping(timeout=1) for r in reply}
raise SystemExit(0 if set(models()) <= names else 1)" 2>/dev/null && break
  kill -0 "${pids[1]}" 2>/dev/null || break
  sleep 1
done

cat <<MSG

  LLM serving platform is up (Redis: $REDIS_URL, database: ${DATABASE_URL:-sqlite var/db.sqlite3})

  API              http://127.0.0.1:$PORT/api/        (docs: http://127.0.0.1:$PORT/api/docs/)
  Admin            http://127.0.0.1:$PORT/admin/      user: $user  password: $password
  Flower           http://127.0.0.1:$FLOWER_PORT/     same user and password
  API key          $key
  Logs             var/log/{web,workers,flower}.log

  Try it:
    curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \\
      -d '{"title": "hello"}' http://127.0.0.1:$PORT/api/conversations/

  Ctrl-C stops everything.
MSG

# Exit (and stop the rest) as soon as any part dies.
wait -n "${pids[@]}"
echo "a process exited; see var/log/" >&2
exit 1
