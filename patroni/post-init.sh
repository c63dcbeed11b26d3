#!/bin/sh
# Patroni's post_init (patroni/patroni.yml): once, on the first leader, after Patroni made its roles. $1 is a
# connection string to the new cluster.
set -eu
db="${POSTGRES_DB:?POSTGRES_DB is not set}"
rewind="${PATRONI_REWIND_USER:?PATRONI_REWIND_USER is not set}"
# The stack's database, as the official image creates POSTGRES_DB.
exists=$(printf "SELECT 1 FROM pg_database WHERE datname = :'db'\n" | psql -d "$1" -v db="$db" -Atq)
[ "$exists" = 1 ] || createdb --maintenance-db="$1" -- "$db"
# pg_rewind logs in to the leader's `postgres` database, whose CONNECT the provisioning job takes from PUBLIC
# (provision/provision.sql): without this grant an old leader never rejoins.
printf 'GRANT CONNECT ON DATABASE postgres TO :"rewind";\n' | psql -d "$1" -v rewind="$rewind" -q -v ON_ERROR_STOP=1
