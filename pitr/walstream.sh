#!/bin/sh
# walstream.sh - the synchronous WAL receiver (pitrSyncReceiver, docs/recovery.md): PostgreSQL's own
# pg_receivewal, streaming into a volume of its own through a physical slot, with --synchronous so that it
# reports each flush at once and the server (synchronous_standby_names) acknowledges a commit only once the
# receiver has its WAL on disk. A lost data volume then loses no acknowledged write: `ops restore` adds this
# directory's WAL to what the repositories hold.
#
#   walstream.sh run             db-walreceiver: stream, reconnecting after every failure (bounded pause)
#   walstream.sh once            one attempt of `run` (what the tests call)
#   walstream.sh health          0 when the server names this receiver its synchronous standby
#   walstream.sh collect STAMP   (a restore, server stopped) history files, completed segments and the
#                                partial one into the repositories, the segments into the restored pg_wal
#                                (the partial one under its full name), then everything set aside into
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

set_aside() {  # $1 why: the top-level files into $1-<now> (kept: only a person removes it)
  aside="$dir/$1-$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$aside"
  find "$dir" -mindepth 1 -maxdepth 1 -type f -exec mv -t "$aside" {} +
  log "set the stream aside into $aside ($1); streaming again from the slot"
}

# One attempt. The directory's newest WAL decides where streaming starts; when that point is not in the
# server's history (a safety copy was put back after a restore, or a restore ran while the receiver was off),
# the server says so, and the directory is set aside: the server's own history is the truth, the rest is kept.
once() {
  same_cluster || return 0
  pg_receivewal -d "$conninfo" --slot="$slot" --create-slot --if-not-exists >/dev/null 2>&1 || true
  err="${TMPDIR:-/tmp}/walstream.err"
  pg_receivewal -d "$conninfo" -D "$dir" --slot="$slot" --synchronous --no-loop --no-password 2>"$err" &
  child=$!
  wait "$child" || true
  child=""
  cat "$err" >&2
  if grep -q -e "is not in this server's history" -e "ahead of the WAL flush position" "$err"; then
    set_aside diverged
  fi
}

run() {
  child=""
  trap 'if [ -n "$child" ]; then kill "$child" 2>/dev/null || true; fi; exit 0' TERM INT
  while :; do
    once
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
wal_history() { echo "$1" | grep -Eqx '[0-9A-F]{8}\.history'; }

# pgBackRest keeps what a repository already has: the same file (a warning) or, [045], the server's own copy
# of a segment (its bytes past the last record may differ from the stream's).
push() {
  if ! out=$(sh "$here/pgbackrest.sh" --stanza=main archive-push "$1" 2>&1); then
    case "$out" in
      *"[045]"*) log "${1##*/}: the repository has the server's own copy (kept)" ;;
      *) echo "$out" >&2; log "archive-push of ${1##*/} failed"; exit 1 ;;
    esac
  fi
}

# Into the restored pg_wal too, so that this recovery never depends on a repository having it (restore_command
# is asked first; a segment it has wins).
into_pg_wal() {
  [ ! -e "$PGDATA/pg_wal/$2" ] || return 0
  cp "$1" "$PGDATA/pg_wal/$2.tmp"
  mv "$PGDATA/pg_wal/$2.tmp" "$PGDATA/pg_wal/$2"
}

collect() {
  stamp="$1"
  aside="$dir/superseded-$stamp"
  mkdir "$aside"
  pushed=0 partial=""
  # History files first (without them a recovery cannot follow the timelines the segments are on), then the
  # segments in WAL order, then the partial one (pgBackRest keeps .partial files as they are).
  for f in "$dir"/*.history; do
    if [ -f "$f" ] && wal_history "${f##*/}"; then push "$f"; fi
  done
  for f in "$dir"/*; do
    [ -f "$f" ] || continue
    base=${f##*/}
    if wal_name "$base"; then
      push "$f"
      into_pg_wal "$f" "$base"
      pushed=$((pushed + 1))
    elif [ "$base" != "${base%.partial}" ] && wal_name "${base%.partial}"; then
      partial="$base"
    fi
  done
  if [ -n "$partial" ]; then
    push "$dir/$partial"
    into_pg_wal "$dir/$partial" "${partial%.partial}"
  fi
  find "$dir" -mindepth 1 -maxdepth 1 -type f -exec mv -t "$aside" {} +
  # The oldest streams a restore set aside go (each is in the repositories, and was replayed by its restore).
  find "$dir" -mindepth 1 -maxdepth 1 -type d -name 'superseded-*' | sort | head -n "-$keep_superseded" \
    | while read -r old; do
    rm -rf "$old"
  done
  echo "collected: $pushed completed segment(s) and partial ${partial:-none} into the repositories and pg_wal"
}

uncollect() {
  aside="$dir/superseded-$1"
  [ -d "$aside" ] || exit 0
  find "$aside" -mindepth 1 -maxdepth 1 -type f -exec mv -t "$dir" {} +
  rmdir "$aside"
}

case "${1:-run}" in
  run) run ;;
  once) child=""; once ;;
  health) health ;;
  collect) collect "${2:?stamp}" ;;
  uncollect) uncollect "${2:?stamp}" ;;
  *) echo "usage: walstream.sh run|once|health|collect STAMP|uncollect STAMP" >&2; exit 2 ;;
esac
