#!/bin/sh
# Patroni's post_init (patroni/patroni.yml): once, on the first leader, after Patroni made the superuser and
# before its other roles. $1 is a connection string to the new cluster.
set -eu
db="${POSTGRES_DB:?POSTGRES_DB is not set}"
rewind="${PATRONI_REWIND_USER:?PATRONI_REWIND_USER is not set}"
# The stack's database, as the official image creates POSTGRES_DB.
exists=$(printf "SELECT 1 FROM pg_database WHERE datname = :'db'\n" | psql -d "$1" -v db="$db" -Atq)
[ "$exists" = 1 ] || createdb --maintenance-db="$1" -- "$db"
# The rewind role's way in to the `postgres` database (patroni/rewind-role.sql).
psql -d "$1" -v rewind="$rewind" -v ON_ERROR_STOP=1 -q -f "$(dirname "$0")/rewind-role.sql"
