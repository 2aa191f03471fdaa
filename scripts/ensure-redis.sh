#!/usr/bin/env bash
# Print a Redis URL that answers: $REDIS_URL (default localhost:6379) if it
# does, otherwise a Redis this script starts itself (installing it if needed),
# keeping its files under var/redis.
set -euo pipefail
cd "$(dirname "$0")/.."
url="${REDIS_URL:-redis://127.0.0.1:6379/0}"
ping() { timeout 3 "$VENV_PY" -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()" "$1" 2>/dev/null; }
VENV_PY="${VENV_PY:-.venv/bin/python}"
if ping "$url"; then echo "$url"; exit 0; fi

port="${EMBEDDED_REDIS_PORT:-6390}"
own="redis://127.0.0.1:${port}/0"
if ping "$own"; then echo "$own"; exit 0; fi
if ! command -v redis-server >/dev/null; then
  echo "no Redis at $url; installing redis-server" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
fi
mkdir -p var/redis
echo "no Redis at $url; starting one on port $port (var/redis)" >&2
redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --dir "$PWD/var/redis" \
  --pidfile "$PWD/var/redis/redis.pid" --logfile "$PWD/var/redis/redis.log" --save "" --appendonly no >&2
for _ in $(seq 50); do ping "$own" && { echo "$own"; exit 0; }; sleep 0.1; done
echo "could not start Redis on port $port" >&2
exit 1
