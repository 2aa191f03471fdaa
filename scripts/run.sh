#!/usr/bin/env bash
# `make run`: the whole stack in the foreground; Ctrl-C stops all of it.
#
# Exit status: 0 once stopped by Ctrl-C (SIGINT) or SIGTERM; 1 if a part (web,
# workers, flower, reconciler) did not come up or exited by itself, named with its log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT="${PORT:-8000}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
# Seconds the web server lets open requests and WebSockets finish on Ctrl-C
# before it cancels them: unbounded, a browser's session once kept it waiting
# for its background tasks for good.
WEB_STOP_GRACE=5
mkdir -p var/log

REDIS_URL="$(scripts/ensure-redis.sh)"
export REDIS_URL DJANGO_SETTINGS_MODULE=llmproject.settings PYTHONUNBUFFERED=1
if [ -z "${SECRET_KEY:-}" ]; then
  [ -f var/secret_key ] || "$PY" -c "import secrets; print(secrets.token_urlsafe(50))" > var/secret_key
  SECRET_KEY="$(cat var/secret_key)"; export SECRET_KEY
fi

# Two things the settings decide (environment, then .env, as the app reads
# them): whether the registry serves the tiny local checkpoint and it is not
# made yet (making it imports torch: seconds, for nothing when the registry
# does not use it), and how long a stopping worker lets answers finish.
settings_line="$("$PY" -c '
import math
from pathlib import Path
from django.conf import settings
tiny = Path(settings.LLM_TINY_MODEL_PATH).resolve()
served = any(
    Path(str((spec.get("options") or {}).get("model", ""))).resolve() == tiny
    for spec in settings.LLM_MODELS.values() if isinstance(spec, dict)
)
print(int(served and not (tiny / "config.json").is_file()), math.ceil(settings.LLM_SHUTDOWN_GRACE))
')"
read -r need_tiny shutdown_grace <<< "$settings_line"

"$PY" manage.py migrate --noinput -v0
"$PY" manage.py collectstatic --noinput -v0
if [ "$need_tiny" = 1 ]; then
  echo "making the tiny local checkpoint (once)..."
  "$PY" manage.py create_tiny_model >/dev/null
fi
demo="$("$PY" manage.py bootstrap_demo)"
field() { "$PY" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$demo" "$1"; }
user="$(field username)"; password="$(field password)"; key="$(field api_key)"

# The parts: names[i] runs as pids[i], logs to var/log/<name>.log, and is
# killed if still running stop_limits[i] seconds after the stop began.
names=(); pids=(); stop_limits=()
start() {  # start NAME STOP_LIMIT COMMAND...
  local name="$1" limit="$2"; shift 2
  "$@" > "var/log/$name.log" 2>&1 &
  names+=("$name"); pids+=("$!"); stop_limits+=("$limit")
}

# A part and everything it started, children first. run_workers' workers lead
# their own process groups (their engines' processes in them), so a killed
# launcher would leave them running: they are found here before it dies.
tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null || true); do tree "$child"; done
  echo "$1"
}

kill_tree() {  # SIGKILL a part with all it started, process groups its children lead included
  local pid pgid
  for pid in $(tree "$1"); do
    pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
    if [ "$pgid" = "$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    kill -KILL "$pid" 2>/dev/null || true
  done
}

stopping=0
stop_parts() {
  [ "$stopping" = 0 ] || return 0
  stopping=1
  local force=0 started=$SECONDS i running
  # A second Ctrl-C: kill what is left at once.
  trap 'force=1' INT TERM
  echo "stopping... (Ctrl-C again to kill at once)"
  # SIGTERM is each part's graceful stop: uvicorn cancels what is still open
  # after --timeout-graceful-shutdown; run_workers passes it on to its workers,
  # which finish their answers for LLM_SHUTDOWN_GRACE seconds, and kills those
  # left after its --stop-timeout; Flower just exits. (On a terminal's Ctrl-C
  # web and run_workers have had SIGINT too: the same stop for them.)
  kill -TERM "${pids[@]}" 2>/dev/null || true
  while :; do
    running=0
    for i in "${!pids[@]}"; do
      kill -0 "${pids[$i]}" 2>/dev/null || continue
      if [ "$force" = 1 ] || [ $((SECONDS - started)) -ge "${stop_limits[$i]}" ]; then
        echo "${names[$i]} still running after $((SECONDS - started)) s: killed" >&2
        kill_tree "${pids[$i]}"
        wait "${pids[$i]}" 2>/dev/null || true  # reaped here: no "Killed" line from bash
      else
        running=1
      fi
    done
    [ "$running" = 1 ] || break
    sleep 0.1 || true  # a second Ctrl-C ends the sleep too
  done
  echo "stopped"
}

# A part that exited by itself: say which and where its log is, and exit 1
# (the EXIT trap stops the rest).
part_died() {  # part_died INDEX STATUS
  # A terminal's Ctrl-C reaches every part too, and one (the reconciler) may
  # exit on it before this shell has run its INT trap: give the trap its turn
  # (it runs once this sleep ends, and exits 0) before calling it a death.
  sleep 0.5 || true
  local log="var/log/${names[$1]}.log" how="status $2"
  if [ "$2" -gt 128 ]; then how="killed by SIG$(kill -l "$(($2 - 128))")"; fi
  echo "${names[$1]} exited by itself ($how); the end of its log, $log:" >&2
  tail -n 5 "$log" | sed 's/^/  | /' >&2
  exit 1
}

check_parts() {  # part_died for the first part no longer running
  local i status
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      status=0; wait "${pids[$i]}" 2>/dev/null || status=$?
      part_died "$i" "$status"
    fi
  done
}

trap 'echo; stop_parts; exit 0' INT TERM
trap 'stop_parts' EXIT

# run_workers kills the workers still running after --stop-timeout: their
# grace, then a few seconds to abort the rest (requeued) and exit.
workers_stop=$((shutdown_grace + 10))
start web $((WEB_STOP_GRACE + 5)) "$PY" -m uvicorn llmproject.asgi:application \
  --host 127.0.0.1 --port "$PORT" --log-level warning --timeout-graceful-shutdown "$WEB_STOP_GRACE"
start workers $((workers_stop + 5)) "$PY" manage.py run_workers --stop-timeout "$workers_stop"
start flower 5 "$PY" -m celery -A llmproject flower --address=127.0.0.1 --port="$FLOWER_PORT" \
  --basic-auth="${FLOWER_BASIC_AUTH:-$user:$password}"
start reconciler 5 "$PY" manage.py reconcile

# wait_for PART SECONDS INTERVAL COMMAND...: run COMMAND until it succeeds,
# while every part runs; give up after SECONDS.
wait_for() {
  local part="$1" limit="$2" interval="$3" started=$SECONDS; shift 3
  until "$@"; do
    check_parts
    if [ $((SECONDS - started)) -ge "$limit" ]; then
      echo "$part did not come up within $limit s; see var/log/$part.log" >&2
      exit 1
    fi
    sleep "$interval" || true  # Ctrl-C: the INT trap takes over
  done
}
workers_up() {  # every model of the registry has a worker that answers a ping
  "$PY" manage.py shell -v 0 -c "
from django.conf import settings
from llmproject.celery import app
names = {r.split('@')[0].rsplit('-', 1)[0] for reply in app.control.ping(timeout=1) for r in reply}
raise SystemExit(0 if set(settings.LLM_MODELS) <= names else 1)" 2>/dev/null
}
wait_for web 60 0.2 curl -sf -o /dev/null "http://127.0.0.1:$PORT/api/schema/"
# Any answer will do (401 without the password): Flower listens.
wait_for flower 60 0.2 curl -s -o /dev/null "http://127.0.0.1:$FLOWER_PORT/"
echo "waiting for the model workers (vLLM takes about half a minute to load)..."
# Each try starts Django (a second of CPU): not too often beside a loading vLLM.
wait_for workers 600 1 workers_up

cat <<MSG

  LLM serving platform is up (Redis: $REDIS_URL, database: ${DATABASE_URL:-sqlite var/db.sqlite3})

  Chat             http://127.0.0.1:$PORT/            log in as user: $user  password: $password
  API docs         http://127.0.0.1:$PORT/api/docs/
  REST API         http://127.0.0.1:$PORT/api/conversations/   (header Authorization: Bearer <API key>)
  OpenAI API       http://127.0.0.1:$PORT/v1/models            (same key; clients take the URL up to /v1)
  Admin            http://127.0.0.1:$PORT/admin/      same user and password
  Flower           http://127.0.0.1:$FLOWER_PORT/     same user and password
  API key          $key
  Logs             var/log/{web,workers,flower,reconciler}.log

  Try it:
    curl -s -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \\
      -d '{"title": "hello"}' http://127.0.0.1:$PORT/api/conversations/

  Ctrl-C stops everything.
MSG

# Until Ctrl-C (the INT trap exits) or a part exits by itself.
status=0
# (Its stderr: bash's own "Killed" line for a part killed by a signal.)
wait -n -p ended "${pids[@]}" 2>/dev/null || status=$?
for i in "${!pids[@]}"; do
  if [ "${pids[$i]}" = "${ended:-}" ]; then part_died "$i" "$status"; fi
done
check_parts
exit 1
