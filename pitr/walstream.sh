#!/bin/sh
# walstream.sh - the synchronous WAL receiver (pitrSyncReceiver, docs/recovery.md): PostgreSQL's own
# pg_receivewal, streaming into a volume of its own through a physical slot, with --synchronous so that it
# reports each flush at once and the server (synchronous_standby_names) acknowledges a commit only once the
# receiver has its WAL on disk. A lost data volume then loses no acknowledged write: `ops restore` adds this
# directory's WAL to what the repositories hold.
#
#   walstream.sh run             db-walreceiver: stream, reconnecting after every failure (bounded pause)
#   walstream.sh health          0 when the server names this receiver its synchronous standby
#   walstream.sh collect STAMP   (a restore, server stopped) completed segments into the repositories, the
#                                partial one into the restored pg_wal, then everything set aside into
#                                superseded-STAMP (the new timeline starts a new stream)
#   walstream.sh uncollect STAMP the set-aside files back (the restore failed and was undone)
# Environment: WALSTREAM_DIR, PITR_SOCKET_DIR, PGUSER, PGDATABASE, WALSTREAM_NAME, WALSTREAM_SLOT, PGDATA.
set -eu
dir="${WALSTREAM_DIR:?}"
name="${WALSTREAM_NAME:-walreceiver}"
slot="${WALSTREAM_SLOT:-stock_walreceiver}"
conninfo="host=${PITR_SOCKET_DIR:-/var/run/postgresql} user=${PGUSER:-postgres} application_name=$name"
keep_superseded=3
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "walstream: $*" >&2; }

system_id() {
  psql -X -A -t -q -d "$conninfo dbname=${PGDATABASE:-postgres}" \
    -c "SELECT system_identifier FROM pg_control_system()" 2>/dev/null
}

# The directory belongs to one cluster: WAL of another (a new cluster initialised on a lost volume) is never
# mixed in. Until `ops restore` has collected it, the receiver refuses to stream (and commits wait).
same_cluster() {
  id=$(system_id) || return 1
  [ -n "$id" ] || return 1
  if [ -s "$dir/.system" ]; then
    if [ "$(cat "$dir/.system")" != "$id" ]; then
      log "$dir holds WAL of cluster $(cat "$dir/.system"), the server is cluster $id: restore it with" \
        "python -m ops restore --to-latest (which collects this WAL); not streaming"
      return 1
    fi
  else
    echo "$id" > "$dir/.system.tmp" && mv "$dir/.system.tmp" "$dir/.system"
  fi
}

run() {
  child=""
  trap 'if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi; exit 0' TERM INT
  while :; do
    if same_cluster; then
      pg_receivewal -d "$conninfo" --slot="$slot" --create-slot --if-not-exists >/dev/null 2>&1 || true
      pg_receivewal -d "$conninfo" -D "$dir" --slot="$slot" --synchronous --no-loop --no-password &
      child=$!
      wait "$child" || true
      child=""
    fi
    sleep 1 &
    child=$!
    wait "$child" || true
    child=""
  done
}

health() {
  state=$(psql -X -A -t -q -d "$conninfo dbname=${PGDATABASE:-postgres}" \
    -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$name'" 2>/dev/null) || exit 1
  [ "$state" = "sync" ]
}

wal_name() { echo "$1" | grep -Eqx '[0-9A-F]{24}'; }

collect() {
  stamp="$1"
  aside="$dir/superseded-$stamp"
  mkdir "$aside"
  pushed=0 partial=""
  for f in "$dir"/*; do
    [ -f "$f" ] || continue
    base=${f##*/}
    if wal_name "$base"; then
      # pgBackRest keeps what a repository already has (a segment the server archived itself, its copy).
      if ! out=$(sh "$here/pgbackrest.sh" --stanza=main archive-push "$f" 2>&1); then
        case "$out" in
          *"[045]"*) log "$base: the repository has the server's own copy (kept)";;
          *) echo "$out" >&2; log "archive-push of $base failed"; exit 1;;
        esac
      fi
      pushed=$((pushed + 1))
    elif wal_name "${base%.partial}" && [ "$base" != "${base%.partial}" ]; then
      partial="$base"
    fi
  done
  if [ -n "$partial" ] && [ ! -e "$PGDATA/pg_wal/${partial%.partial}" ]; then
    cp "$dir/$partial" "$PGDATA/pg_wal/${partial%.partial}.tmp"
    mv "$PGDATA/pg_wal/${partial%.partial}.tmp" "$PGDATA/pg_wal/${partial%.partial}"
  fi
  find "$dir" -mindepth 1 -maxdepth 1 -type f -exec mv -t "$aside" {} +
  # The oldest set-aside streams go (each was in the repositories or replayed by its restore).
  ls -1d "$dir"/superseded-* 2>/dev/null | sort | head -n "-$keep_superseded" | while read -r old; do
    rm -rf "$old"
  done
  echo "collected: $pushed completed segment(s) into the repositories, partial ${partial:-none} into pg_wal"
}

uncollect() {
  aside="$dir/superseded-$1"
  [ -d "$aside" ] || exit 0
  find "$aside" -mindepth 1 -maxdepth 1 -type f -exec mv -t "$dir" {} +
  rmdir "$aside"
}

case "${1:-run}" in
  run) run ;;
  health) health ;;
  collect) collect "${2:?stamp}" ;;
  uncollect) uncollect "${2:?stamp}" ;;
  *) echo "usage: walstream.sh run|health|collect STAMP|uncollect STAMP" >&2; exit 2 ;;
esac
