#!/usr/bin/env bash
# Start a local PostgreSQL for the tests and print its URL (install it with apt when missing and
# we are root). Prints nothing when PostgreSQL cannot be had: the PostgreSQL tests then skip.
set -uo pipefail
log() { echo "ensure_postgres: $*" >&2; }
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing postgresql with apt-get"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
      || { log "apt-get install postgresql failed"; exit 0; }
  else
    log "PostgreSQL is not installed and we cannot install it; PostgreSQL tests will skip"; exit 0
  fi
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null 2>&1 || { log "pg_createcluster failed"; exit 0; }
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  su postgres -c "psql -tAc 'SELECT 1'" >/dev/null 2>&1 && break
  sleep 0.5
done
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='synth_test'\"" 2>/dev/null | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE synth_test LOGIN PASSWORD 'synth_test' CREATEDB\"" >/dev/null 2>&1 \
  || { log "could not create the test role"; exit 0; }
# A second role whose password is a canary: the tests grep every output for it (it must never show).
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='synth_canary'\"" 2>/dev/null | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE synth_canary LOGIN PASSWORD 'canary-pw-5e1f0c' CREATEDB\"" >/dev/null 2>&1 \
  || log "could not create the canary role; the redaction test will skip"
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
echo "postgresql://synth_test:synth_test@127.0.0.1:${port:-5432}/postgres"
