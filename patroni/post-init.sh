#!/bin/sh
# Patroni's post_init (patroni/patroni.yml): once, on the first leader, create the stack's database, as the
# official image does for POSTGRES_DB. $1 is a connection string to the new cluster.
set -eu
db="${POSTGRES_DB:?POSTGRES_DB is not set}"
exists=$(printf "SELECT 1 FROM pg_database WHERE datname = :'db'\n" | psql -d "$1" -v db="$db" -Atq)
[ "$exists" = 1 ] || createdb --maintenance-db="$1" -- "$db"
