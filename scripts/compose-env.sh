#!/usr/bin/env bash
# Write .env for docker-compose.yml: a random value for each secret it needs
# that .env does not set yet (kept if set). The compose file has no defaults
# for them, so nothing public is ever a password.
#
#   scripts/compose-env.sh && docker compose up -d
set -euo pipefail
cd "$(dirname "$0")/.."
touch .env
chmod 600 .env
random() { python3 -c 'import secrets, sys; print(secrets.token_urlsafe(int(sys.argv[1])))' "$1"; }
add() {  # add NAME VALUE, unless .env has NAME
  grep -q "^$1=" .env || { echo "$1=$2" >> .env; echo "  $1 generated"; }
}
echo "secrets in .env:"
add SECRET_KEY "$(random 50)"
add POSTGRES_PASSWORD "$(random 24)"
add METRICS_TOKEN "$(random 32)"
add FLOWER_BASIC_AUTH "admin:$(random 18)"
add GRAFANA_ADMIN_PASSWORD "$(random 18)"
