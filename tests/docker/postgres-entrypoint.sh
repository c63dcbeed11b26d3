#!/bin/bash
# Stand-in for the official postgres image's entrypoint, honouring the contract the stack relies on:
# POSTGRES_USER/DB/PASSWORD and their _FILE forms, initdb only on an empty data directory, a
# socket-only temporary server during init, then the real server on all addresses; runs as `postgres`.
set -euo pipefail
file_env() {
  local var=$1 fvar="${1}_FILE"
  if [ -n "${!fvar:-}" ]; then export "$var"="$(< "${!fvar}")"; fi
}
if [ "${1:-}" = "postgres" ]; then
  if [ "$(id -u)" = "0" ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
  fi
  file_env POSTGRES_PASSWORD
  : "${POSTGRES_USER:=postgres}"
  : "${POSTGRES_DB:=$POSTGRES_USER}"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "stand-in: POSTGRES_PASSWORD(_FILE) is required" >&2; exit 1; }
    pwfile=$(mktemp)
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    # As the official image: remote logins with the server's default password method (md5 up to 13,
    # scram-sha-256 from 14).
    auth=$(postgres -D "$PGDATA" -C password_encryption)
    echo "host all all all $auth" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != "postgres" ]; then
      psql -v ON_ERROR_STOP=1 -q -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "stand-in: database initialised"
  fi
  shift
  exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
