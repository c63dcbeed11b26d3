#!/bin/sh
# Logical backups of the stack's database, run in the db-backup container (the stack's Postgres image,
# uid 999, the backup role's password as a file; `restore` is given the superuser by ops). POSIX sh (dash).
#
#   backup.sh loop            back up now, then every BACKUP_INTERVAL_S seconds; a failed attempt is
#                             retried with back-off, and the loop never exits (the container's command)
#   backup.sh now [KIND]      one backup (KIND on-demand, scheduled or pre-restore); prints its ID
#   backup.sh list            one line per backup: ID, bytes, UTC time, kind, checksum state; then the status
#   backup.sh verify ID       size and SHA-256 against the record, then a full read-back of the archive
#   backup.sh rows            exact row counts of the live database, one `table<TAB>rows` line each
#   backup.sh restore ID      verify, take a pre-restore safety copy, then replace the database's contents
#                             in one transaction that commits only when everything succeeded
#   backup.sh prune           apply the retention tiers (run after every good backup)
#   backup.sh health          exit 0 while the last attempt succeeded and the last good backup is recent
#
# Every command that writes backups or restores one holds one lock (flock on .lock in the backups volume),
# so two runs never interleave; each run writes its own partial file, and only a run that holds the lock removes a
# partial (then it can only be a dead run's). A backup is `pg_dump -Fc` into its partial file, read back
# in full (`pg_restore -f /dev/null` decodes every block; `--list` reads only the table of contents),
# checksummed, flushed, recorded in ID.meta and only then renamed to ID.dump: a half-written dump never
# counts. Files are 0600 in a 0711 directory; the status file (0644) is for the admin UI. pg_dump takes
# only ACCESS SHARE locks: the app keeps writing.
set -eu

dir="$BACKUP_DIR"
status="$dir/status"
here=$(dirname "$0")
keep_last="${BACKUP_KEEP:-7}"
keep_daily="${BACKUP_KEEP_DAILY:-7}"
keep_weekly="${BACKUP_KEEP_WEEKLY:-4}"
keep_monthly="${BACKUP_KEEP_MONTHLY:-6}"
interval="${BACKUP_INTERVAL_S:-86400}"
# How long a run waits for another run's lock, for a table lock (pg_dump), and in all (pg_dump, read-back).
lock_wait="${BACKUP_LOCK_WAIT_S:-900}"
dump_lock_wait="${BACKUP_DUMP_LOCK_WAIT_S:-120}"
run_limit="${BACKUP_TIMEOUT_S:-$interval}"
# The restore's own lock wait: an app transaction that holds a table longer makes the restore fail
# (nothing changed) instead of stalling every write queued behind it.
restore_lock_wait="${RESTORE_LOCK_WAIT_S:-30}"
umask 077

log() { printf '%s backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# The backup role's password file; a restore is given the superuser for its one run: PGUSER and PGPASSWORD
# (single host, in its exec), or PGUSER and RESTORE_PASSWORD_FILE (swarm, a secret of its one-shot job).
password() {
  if [ -z "${PGPASSWORD:-}" ]; then
    PGPASSWORD=$(cat "${RESTORE_PASSWORD_FILE:-$BACKUP_DB_PASSWORD_FILE}")
    export PGPASSWORD
  fi
}

lock() {
  exec 9>>"$dir/.lock"
  flock -w "$lock_wait" 9 || die "another backup or restore held the lock for more than ${lock_wait}s; nothing done"
}

field() {  # $1 key, $2 key=value file; empty when absent
  sed -n "s/^$1=//p" "$2" 2>/dev/null | head -n 1
}

# key=value lines for the admin UI and `list`. Replaced only when the new file was written whole: on a
# full disk the old file stays and the reason goes to the log.
write_status() {  # $1 result (ok|failed), $2 detail
  last_good=$(field last_good "$status")
  last_good_id=$(field last_good_id "$status")
  last_good_epoch=$(field last_good_epoch "$status")
  if [ "$1" = ok ]; then
    last_good=$(now_utc)
    last_good_id=$2
    last_good_epoch=$(date +%s)
  fi
  tmp="$dir/.status.tmp.$$"
  if printf 'last_attempt=%s\nlast_result=%s\nlast_detail=%s\nlast_good=%s\nlast_good_id=%s\nlast_good_epoch=%s\n' \
       "$(now_utc)" "$1" "$2" "$last_good" "$last_good_id" "$last_good_epoch" > "$tmp" 2>/dev/null \
     && chmod 0644 "$tmp" && mv -f "$tmp" "$status"; then
    return 0
  fi
  rm -f "$tmp"
  log "could not write the status file (disk full?); it still says what it said before. This attempt: $1 $2"
}

# The backups' IDs, newest first (the name sorts by time).
ids() {
  for f in "$dir/$PGDATABASE"-*.dump; do
    f=${f##*/}
    if printf '%s' "$f" | grep -Eq "^${PGDATABASE}-[0-9]{8}T[0-9]{6}Z\.dump$"; then printf '%s\n' "${f%.dump}"; fi
  done | sort -r
}

valid_id() {
  printf '%s' "$1" | grep -Eq "^${PGDATABASE}-[0-9]{8}T[0-9]{6}Z$"
}

kind_of() {  # a backup without a record (taken before records existed) counts as scheduled
  k=$(field kind "$dir/$1.meta")
  printf '%s' "${k:-scheduled}"
}

# Retention by age tiers, as in borg and restic: keep the newest $keep_last backups, plus the newest of each
# of the last $keep_daily days, $keep_weekly ISO weeks and $keep_monthly months that have one; pre-restore
# safety copies are never pruned here. A burst of on-demand backups fills only the first tier.
# POSIX sh has no local variables: the names here are prune's alone.
prune() {
  n=0 days="" weeks="" months="" nd=0 nw=0 nm=0
  for old in $(ids); do
    n=$((n + 1))
    ts=${old#"$PGDATABASE"-}
    day=$(printf '%s' "$ts" | cut -c1-8)
    week=$(date -u -d "$day" +%G%V)
    month=$(printf '%s' "$ts" | cut -c1-6)
    keep=no
    [ "$n" -gt "$keep_last" ] || keep=yes
    [ "$(kind_of "$old")" != pre-restore ] || keep=yes
    case " $days " in *" $day "*) ;; *) if [ "$nd" -lt "$keep_daily" ]; then days="$days $day"; nd=$((nd + 1)); keep=yes; fi ;; esac
    case " $weeks " in *" $week "*) ;; *) if [ "$nw" -lt "$keep_weekly" ]; then weeks="$weeks $week"; nw=$((nw + 1)); keep=yes; fi ;; esac
    case " $months " in *" $month "*) ;; *) if [ "$nm" -lt "$keep_monthly" ]; then months="$months $month"; nm=$((nm + 1)); keep=yes; fi ;; esac
    if [ "$keep" = no ]; then
      rm -f "$dir/$old.dump" "$dir/$old.meta"
      log "pruned $old"
    fi
  done
}

# Reads every block of the archive (the data too), as a restore would.
reads_back() {  # $1 file
  timeout "$run_limit" pg_restore -f /dev/null "$1" 2>/dev/null
}

backup_now() {  # $1 kind; the lock is held
  kind=$1
  password
  # Holding the lock, any partial file is a dead run's.
  rm -f "$dir"/.partial-* "$dir"/.status.tmp.*
  id="${PGDATABASE}-$(date -u +%Y%m%dT%H%M%SZ)"
  while [ -e "$dir/$id.dump" ]; do sleep 1; id="${PGDATABASE}-$(date -u +%Y%m%dT%H%M%SZ)"; done
  partial="$dir/.partial-$id-$$.dump"
  started=$(date +%s)
  # The error text is kept in memory: on a full disk a file for it could not be written either.
  if ! err=$(timeout "$run_limit" pg_dump -Fc --lock-wait-timeout="${dump_lock_wait}s" -f "$partial" 2>&1); then
    rm -f "$partial"
    detail=$(printf '%s' "${err:-pg_dump: stopped after ${run_limit}s}" | head -c 300 | tr '\n' ' ')
    write_status failed "$detail"
    die "$detail"
  fi
  if ! reads_back "$partial"; then
    rm -f "$partial"
    write_status failed "the new archive did not read back in full; discarded"
    die "the new archive did not read back in full; discarded"
  fi
  bytes=$(wc -c < "$partial")
  sum=$(sha256sum "$partial" | cut -d' ' -f1)
  meta="$dir/.partial-$id-$$.meta"
  if ! printf 'id=%s\nkind=%s\ntaken=%s\nbytes=%s\nsha256=%s\n' "$id" "$kind" "$(now_utc)" "$bytes" "$sum" \
       > "$meta" 2>/dev/null; then
    rm -f "$partial" "$meta"
    write_status failed "could not write the backup's record (disk full?); discarded"
    die "could not write the backup's record (disk full?); discarded"
  fi
  sync "$partial" "$meta"
  mv "$meta" "$dir/$id.meta"
  mv "$partial" "$dir/$id.dump"
  sync "$dir"
  write_status ok "$id"
  log "$id ($kind): $bytes bytes in $(( $(date +%s) - started )) s, sha256 $sum"
  echo "$id"
  # Not before a restore: the backup about to be restored may be one that the tiers would drop.
  [ "$kind" = pre-restore ] || prune
}

verify() {  # $1 ID; the lock is held
  file="$dir/$1.dump"
  [ -f "$file" ] || die "no such backup ID: '$1' (see: list)"
  # Fault injection for the tests: BACKUP_FAULT_SKIP_CHECKS=1 hands a damaged archive to the restore's
  # transaction, to prove that it alone also changes nothing. Never set in a deployment.
  if [ "${BACKUP_FAULT_SKIP_CHECKS:-}" = 1 ]; then
    log "fault injection: the checks of $1 are skipped"
    return 0
  fi
  want_bytes=$(field bytes "$dir/$1.meta")
  want_sum=$(field sha256 "$dir/$1.meta")
  if [ -n "$want_sum" ]; then
    bytes=$(wc -c < "$file")
    [ "$bytes" = "$want_bytes" ] || die "$1 is $bytes bytes, its record says $want_bytes: damaged or cut; not used"
    [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$want_sum" ] || die "$1 does not match its SHA-256: damaged; not used"
  else
    log "$1 has no checksum record (taken before records existed): relying on the full read-back"
  fi
  reads_back "$file" || die "$1 does not read back in full: damaged; not used"
}

# The stream psql runs: BEGIN, the archive as SQL, the privilege model, COMMIT. COMMIT is written only once
# pg_restore has exited 0; when it fails (a cut or damaged archive, a kill, a full disk), psql reaches the end
# of its input inside the open transaction and the server rolls it back.
restore_stream() {  # $1 file, $2 where pg_restore's exit status goes
  printf 'BEGIN;\nSET LOCAL lock_timeout = %s;\n' "'${restore_lock_wait}s'"
  if ! pg_restore --clean --if-exists --no-owner --no-acl -f - "$1"; then
    echo failed > "$2"
    return 0
  fi
  printf '\\set app_group %s\n\\set schemas %s\n\\i %s/privileges.sql\nCOMMIT;\n' "$APP_GROUP" "'${APP_SCHEMAS:-}'" "$here"
  echo ok > "$2"
}

restore() {  # $1 ID; the lock is held
  verify "$1"
  password
  safety=$(backup_now pre-restore) || die "the safety copy of the current database failed; nothing restored"
  log "safety copy $safety taken; going back to it: restore $safety"
  work=$(mktemp -d)
  # ON_ERROR_STOP: the first failing statement ends psql, and with it the transaction.
  if restore_stream "$dir/$1.dump" "$work/producer" | psql -X -q -v ON_ERROR_STOP=1 -o /dev/null \
     && [ "$(cat "$work/producer")" = ok ]; then
    rm -rf "$work"
    log "restored $1; the previous contents are backup $safety"
    echo "$safety"
    return 0
  fi
  rm -rf "$work"
  die "restore of $1 failed and was rolled back: the database is unchanged; safety copy $safety"
}

case "${1:-}" in
  loop)
    trap 'exit 0' TERM INT
    # The directory is handed to this uid by the provisioning job; 0711: others may reach the status
    # file by name, never list or read the dumps.
    chmod 0711 "$dir"
    first_retry="${BACKUP_RETRY_S:-60}"
    retry=$first_retry
    while :; do
      # A subshell: a failed attempt ends it, never the loop.
      if ( lock; backup_now scheduled >/dev/null ); then
        pause=$interval retry=$first_retry
      else
        pause=$retry
        retry=$((retry * 2))
        [ "$retry" -le "$interval" ] || retry=$interval
        log "next attempt in ${pause}s"
      fi
      sleep "$pause" &
      wait $! || true
    done
    ;;
  now)
    case "${2:-on-demand}" in on-demand|scheduled|pre-restore) ;; *) die "kind: on-demand, scheduled or pre-restore" ;; esac
    lock
    backup_now "${2:-on-demand}"
    ;;
  list)
    # No lock: a dump is renamed into place only after its record, so a listing never sees half of one,
    # and it answers while a long backup runs.
    for id in $(ids); do
      sum=$(field sha256 "$dir/$id.meta")
      printf '%s\t%s\t%s\t%s\t%s\n' "$id" "$(wc -c < "$dir/$id.dump")" \
        "$(date -u -r "$dir/$id.dump" +%Y-%m-%dT%H:%M:%SZ)" "$(kind_of "$id")" "${sum:+sha256}"
    done
    [ ! -f "$status" ] || sed 's/^/# /' "$status"
    ;;
  verify)
    valid_id "${2:-}" || die "no such backup ID: '${2:-}' (see: list)"
    lock
    verify "$2"
    echo "$2 verified"
    ;;
  rows)
    password
    psql -X -q -A -t -F "$(printf '\t')" -v ON_ERROR_STOP=1 -f "$here/rows.sql"
    ;;
  restore)
    valid_id "${2:-}" || die "no such backup ID: '${2:-}' (see: list)"
    lock
    restore "$2"
    ;;
  prune)
    lock
    prune
    ;;
  health)
    [ "$(field last_result "$status")" = ok ] || exit 1
    good=$(field last_good_epoch "$status")
    # Unhealthy when the newest good backup is older than twice the interval (a loop that stopped working).
    [ -n "$good" ] && [ $(( $(date +%s) - good )) -le $(( 2 * interval )) ]
    ;;
  *)
    die "usage: backup.sh loop|now [KIND]|list|verify ID|rows|restore ID|prune|health"
    ;;
esac
