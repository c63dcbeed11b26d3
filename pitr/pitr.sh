#!/bin/sh
# Point-in-time recovery: base backups and restore drills, run in the db-pitr container (the stack's Postgres
# image with pgBackRest, uid 999, beside the server: its data volume read-only, its socket, the local
# repository). WAL is archived by the server itself (archive_command). POSIX sh (dash).
#
#   pitr.sh loop              the schedule: a full backup when the newest is older than PITR_FULL_INTERVAL_S, a
#                             differential when the newest backup is older than PITR_DIFF_INTERVAL_S, a drill
#                             when the last one is older than PITR_DRILL_INTERVAL_S; checks every minute
#   pitr.sh backup TYPE       one base backup (full, diff or incr) into every repository, then a mark
#   pitr.sh drill [REPO]      restore the newest backup of REPO (default 1) into a scratch server, check it starts
#                             and that every table's rows and checksum equal the mark, remove the scratch
#   pitr.sh status            the status files and the archive queue, key=value lines
#   pitr.sh health            exit 0 while archiving works and the last backup and the last drill succeeded
#
# Status files (0644, for ops and the admin UI) live in $PITR_STATUS_DIR: backup-repoN, drill, archive. One
# lock (flock) serialises backups and drills; pgBackRest holds its own locks besides.
set -eu

here=$(dirname "$0")
status_dir="$PITR_STATUS_DIR"
marks="$PITR_MARKS_DIR"
repos="${PITR_REPOS:-1}"
scratch="${PITR_SCRATCH_DIR:-/var/lib/pitr-scratch}/data"
scratch_port="${PITR_SCRATCH_PORT:-5499}"
pgbr() { sh "$here/pgbackrest.sh" "$@"; }
umask 022

log() { printf '%s pitr: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date -u +%s; }

lock() {
  exec 8>>"$marks/.lock"
  flock -w "${PITR_LOCK_WAIT_S:-3600}" 8 || die "another backup or drill held the lock too long; nothing done"
}

write_status() {  # $1 file name, then key=value pairs; written whole (rename), so readers never see half
  f="$status_dir/$1"; shift
  printf '%s\n' "$@" > "$f.tmp"
  mv -f "$f.tmp" "$f"
}

field() { sed -n "s/^$1=//p" "$2" 2>/dev/null | head -n 1; }

sql() { psql -X -A -t -q -v ON_ERROR_STOP=1 -h "$PITR_SOCKET_DIR" "$@"; }

newest_label() {  # $1 repo: label of its newest backup, empty when none
  pgbr --stanza=main --repo="$1" info --output=json 2>/dev/null \
    | tr ',' '\n' | sed -n 's/.*"label":"\([^"]*\)".*/\1/p' | tail -n 1
}

stanza() {
  i=0
  until pg_isready -q -h "$PITR_SOCKET_DIR"; do
    i=$((i + 1)); [ "$i" -lt 120 ] || die "the server did not accept connections within 120 s"
    sleep 1
  done
  pgbr --stanza=main stanza-create >/dev/null
  pgbr --stanza=main check >/dev/null
}

mark() {  # $1 repo, $2 label: the counts at a restore point named after the backup
  out="$marks/repo$1-$2.tsv"
  sql -F "$(printf '\t')" -v point="mark-repo$1-$2" -f "$here/mark.sql" > "$out.tmp"
  grep -v '^#' "$out.tmp" > "$out.rows"
  mv -f "$out.rows" "$out"; rm -f "$out.tmp"
}

backup() {  # $1 type
  type="$1"
  case "$type" in full|diff|incr) ;; *) die "backup type $type: full, diff or incr" ;; esac
  lock
  stanza
  rc=0
  for repo in $repos; do
    started=$(now)
    if pgbr --stanza=main --repo="$repo" --type="$type" backup >&2 && label=$(newest_label "$repo") \
        && [ -n "$label" ] && mark "$repo" "$label"; then
      write_status "backup-repo$repo" result=ok "label=$label" "type=$type" "time=$(now)" \
        "seconds=$(( $(now) - started ))"
      log "backup $type into repo$repo: $label"
      echo "repo$repo $label"
    else
      rc=1
      prev=$(field label "$status_dir/backup-repo$repo")
      write_status "backup-repo$repo" result=failed "label=$prev" "type=$type" "time=$(now)" \
        "seconds=$(( $(now) - started ))"
      log "backup $type into repo$repo FAILED"
    fi
  done
  # Marks of backups that retention removed go with them.
  for m in "$marks"/repo*-*.tsv; do
    [ -e "$m" ] || continue
    base=$(basename "$m" .tsv); repo=${base%%-*}; repo=${repo#repo}; label=${base#repo*-}
    pgbr --stanza=main --repo="$repo" --set="$label" info >/dev/null 2>&1 || rm -f "$m"
  done
  return "$rc"
}

scratch_stop() {
  if [ -s "$scratch/postmaster.pid" ]; then pg_ctl -D "$scratch" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$scratch"
}

drill() {  # $1 repo
  repo="${1:-1}"
  lock
  started=$(now)
  label=$(newest_label "$repo")
  detail=""
  if [ -z "$label" ]; then
    detail="no backup in repo$repo"
  elif [ ! -s "$marks/repo$repo-$label.tsv" ]; then
    detail="no mark recorded for $label"
  else
    detail=$(drill_one "$repo" "$label" 2>&1 | tail -n 1) || true
  fi
  scratch_stop
  secs=$(( $(now) - started ))
  if [ "$detail" = "ok" ]; then
    write_status drill result=ok "repo=$repo" "label=$label" "time=$(now)" "seconds=$secs" "detail=rows and checksums match"
    log "drill of repo$repo $label: ok in ${secs}s"
  else
    write_status drill result=failed "repo=$repo" "label=$label" "time=$(now)" "seconds=$secs" "detail=$detail"
    log "drill of repo$repo $label FAILED: $detail"
    return 1
  fi
}

drill_one() {  # restore, start, compare; the last line says ok or what went wrong
  repo="$1"; label="$2"
  scratch_stop
  mkdir -p "$scratch"; chmod 700 "$scratch"
  pgbr --stanza=main --repo="$repo" --set="$label" --pg1-path="$scratch" --type=name \
    --target="mark-repo$repo-$label" --target-action=promote --archive-mode=off restore >&2 \
    || { echo "restore of $label failed"; return 1; }
  sock=$(mktemp -d)
  pg_ctl -D "$scratch" -w -t 300 -l "$sock/log" -o "-p $scratch_port -c listen_addresses='' -c unix_socket_directories=$sock -c archive_mode=off" start >/dev/null \
    || { tail -n 3 "$sock/log"; echo "the scratch server did not start"; return 1; }
  i=0
  while [ "$(sql -h "$sock" -p "$scratch_port" -d "$PGDATABASE" -c 'SELECT pg_is_in_recovery()')" != "f" ]; do
    i=$((i + 1)); [ "$i" -lt 600 ] || { echo "recovery did not finish within 600 s"; return 1; }
    sleep 1
  done
  sql -h "$sock" -p "$scratch_port" -d "$PGDATABASE" -F "$(printf '\t')" -f "$here/checksums.sql" > "$sock/got"
  if ! cmp -s "$sock/got" "$marks/repo$repo-$label.tsv"; then
    diff "$marks/repo$repo-$label.tsv" "$sock/got" | sed -n 2p >&2 || true
    echo "rows or checksums differ from the mark of $label"; return 1
  fi
  echo ok
}

archive_status() {
  ready=0; oldest=""
  for f in "$PGDATA"/pg_wal/archive_status/*.ready; do
    [ -e "$f" ] || continue
    ready=$((ready + 1))
    t=$(stat -c %Y "$f"); if [ -z "$oldest" ] || [ "$t" -lt "$oldest" ]; then oldest=$t; fi
  done
  lag=0; [ -z "$oldest" ] || lag=$(( $(now) - oldest ))
  stats=$(sql -d "$PGDATABASE" -F ' ' -c "SELECT failed_count, coalesce(extract(epoch FROM last_archived_time)::bigint, 0),
    coalesce(extract(epoch FROM last_failed_time)::bigint, 0) FROM pg_stat_archiver" 2>/dev/null || echo "- - -")
  read -r failed archived last_failed <<EOF
$stats
EOF
  # With the synchronous receiver: the state the server sees it in (sync, or none while commits wait).
  receiver=-
  if [ -n "${PITR_RECEIVER:-}" ]; then
    receiver=$(sql -d "$PGDATABASE" -c "SELECT coalesce((SELECT sync_state FROM pg_stat_replication
      WHERE application_name = '$PITR_RECEIVER' LIMIT 1), 'none')" 2>/dev/null || echo unknown)
  fi
  write_status archive "ready=$ready" "lag_seconds=$lag" "failed_count=$failed" "last_archived=$archived" \
    "last_failed=$last_failed" "receiver=$receiver" "time=$(now)"
}

due() {  # $1 status file, $2 interval: never done, done longer ago than the interval, or failed and due a retry
  t=$(field time "$status_dir/$1"); [ -n "$t" ] || return 0
  age=$(( $(now) - t ))
  if [ "$(field result "$status_dir/$1")" = ok ]; then [ "$age" -ge "$2" ]; else [ "$age" -ge "${PITR_RETRY_S:-300}" ]; fi
}

full_due() {  # no full backup yet, or the last is older than the interval; not while a failure waits its retry
  t=$(field full_time "$status_dir/schedule")
  [ -z "$t" ] || [ $(( $(now) - t )) -ge "$PITR_FULL_INTERVAL_S" ] || return 1
  [ ! -e "$status_dir/backup-repo1" ] || [ "$(field result "$status_dir/backup-repo1")" = ok ] \
    || due backup-repo1 0
}

# The bound on what a lost volume costs: every PITR_SWITCH_S seconds the current WAL segment is closed (a no-op
# when nothing was written since the last switch) and so archived. The server's archive_timeout says the same,
# but PostgreSQL 17.12 never acted on it in our tests (docs/recovery.md, Measured); this runs beside the
# schedule, so a long base backup does not hold it up.
switcher() {
  while :; do
    sleep "${PITR_SWITCH_S:-60}"
    sql -d "$PGDATABASE" -c "SELECT pg_switch_wal()" >/dev/null 2>&1 || true
  done
}

# A step of the loop in the background, waited for: the shell runs its TERM trap at once (a foreground child
# would hold the trap until it ends: a `check` waiting for a stopping server held `docker stop` for 60 s).
run() {
  "$@" & child=$!
  wait "$child" && rc=0 || rc=$?
  child=""
  return "$rc"
}

# A receiver turned off (pitrSyncReceiver: false) leaves its slot behind: inactive, it would make the server
# keep every WAL segment from then on, until the disk is full. Dropped here when no receiver is configured.
drop_abandoned_slot() {
  [ -z "${PITR_RECEIVER:-}" ] && [ -n "${PITR_RECEIVER_SLOT:-}" ] || return 0
  dropped=$(sql -d "$PGDATABASE" -c "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
    WHERE slot_name = '$PITR_RECEIVER_SLOT' AND NOT active" 2>/dev/null) || return 0
  [ "$dropped" = 0 ] || log "dropped the replication slot $PITR_RECEIVER_SLOT of a receiver no longer configured"
}

loop() {
  mkdir -p "$status_dir" "$marks"
  switcher & switcher_pid=$!
  until run stanza; do log "waiting for the server and the repositories"; run sleep 10; done
  while :; do
    run archive_status || log "archive status unavailable"
    run drop_abandoned_slot
    if full_due; then
      if run backup full; then write_status schedule "full_time=$(now)"; fi
    elif due backup-repo1 "$PITR_DIFF_INTERVAL_S"; then
      run backup diff || true
    fi
    if due drill "$PITR_DRILL_INTERVAL_S"; then run drill 1 || true; fi
    run sleep "${PITR_TICK_S:-60}"
  done
}

status() {
  archive_status 2>/dev/null || true
  for f in "$status_dir"/backup-repo* "$status_dir"/drill "$status_dir"/archive; do
    [ -e "$f" ] || continue
    sed "s/^/$(basename "$f")./" "$f"
  done
}

health() {
  for repo in $repos; do
    [ "$(field result "$status_dir/backup-repo$repo")" != failed ] || exit 1
  done
  [ "$(field result "$status_dir/drill")" != failed ] || exit 1
  [ "$(field failed_count "$status_dir/archive")" = "" ] || [ "$(field ready "$status_dir/archive")" -lt 16 ]
}

switcher_pid="" child=""
stop() {
  [ -z "$child" ] || kill "$child" 2>/dev/null || true
  [ -z "$switcher_pid" ] || kill "$switcher_pid" 2>/dev/null || true
  exit 143
}
trap stop TERM INT
cmd="${1:-}"; [ $# -eq 0 ] || shift
case "$cmd" in
  loop) loop ;;
  backup) backup "${1:-diff}" ;;
  drill) drill "${1:-1}" ;;
  status) status ;;
  health) health ;;
  *) die "usage: pitr.sh loop|backup TYPE|drill [REPO]|status|health" ;;
esac
