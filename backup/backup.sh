#!/bin/sh
# Logical backups of the stack's database, run in the db-backup container (the stack's Postgres image,
# uid 999, the superuser password as a file). POSIX sh.
#
#   backup.sh loop            back up now, then every BACKUP_INTERVAL_S seconds (the container's command)
#   backup.sh now             one backup; prints its ID
#   backup.sh list            one line per backup: ID, bytes, UTC time (newest first); then the status
#   backup.sh restore ID      replace the database's contents with backup ID, in one transaction
#   backup.sh health          exit 0 when the last attempt succeeded (the container's healthcheck)
#
# A backup is `pg_dump -Fc` into a hidden partial file, checked (`pg_restore --list` reads the whole
# archive's table of contents), flushed to disk and only then renamed to DB-YYYYmmddTHHMMSSZ.dump: a
# half-written dump never counts. Files are 0600 in a 0711 directory: only uid 999 reads them; the
# status file (0644) is for the admin UI. pg_dump takes only ACCESS SHARE locks: the app keeps writing.
set -eu

dir="$BACKUP_DIR"
status="$dir/status"
keep="${BACKUP_KEEP:-7}"
interval="${BACKUP_INTERVAL_S:-86400}"
umask 077

log() { printf '%s backup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

password() {
  PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
  export PGPASSWORD
}

# key=value lines, replaced atomically; readable by the admin UI (0644).
write_status() {  # $1 result (ok|failed), $2 detail
  last_good=$(sed -n 's/^last_good=//p' "$status" 2>/dev/null || true)
  last_good_id=$(sed -n 's/^last_good_id=//p' "$status" 2>/dev/null || true)
  if [ "$1" = ok ]; then
    last_good=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    last_good_id=$2
  fi
  printf 'last_attempt=%s\nlast_result=%s\nlast_detail=%s\nlast_good=%s\nlast_good_id=%s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$last_good" "$last_good_id" > "$dir/.status.tmp"
  chmod 0644 "$dir/.status.tmp"
  mv -f "$dir/.status.tmp" "$status"
}

# The backups' file names, newest first (the name sorts by time).
dumps() {
  for f in "$dir/$PGDATABASE"-*.dump; do
    f=${f##*/}
    if printf '%s' "$f" | grep -Eq "^${PGDATABASE}-[0-9]{8}T[0-9]{6}Z\.dump$"; then printf '%s\n' "$f"; fi
  done | sort -r
}

prune() {
  # Everything after the newest $keep goes.
  dumps | tail -n +"$((keep + 1))" |
    while read -r old; do
      rm -f "$dir/$old"
      log "pruned $old"
    done
}

backup_now() {
  password
  rm -f "$dir"/.partial-*
  id="${PGDATABASE}-$(date -u +%Y%m%dT%H%M%SZ)"
  [ ! -e "$dir/$id.dump" ] || { sleep 1; id="${PGDATABASE}-$(date -u +%Y%m%dT%H%M%SZ)"; }
  partial="$dir/.partial-$id.dump"
  started=$(date +%s)
  if ! pg_dump -Fc -f "$partial" 2>"$dir/.partial-err"; then
    detail=$(head -c 300 "$dir/.partial-err" | tr '\n' ' ')
    rm -f "$partial" "$dir/.partial-err"
    write_status failed "pg_dump: $detail"
    die "pg_dump failed: $detail"
  fi
  rm -f "$dir/.partial-err"
  if ! pg_restore --list "$partial" >/dev/null 2>&1; then
    rm -f "$partial"
    write_status failed "the archive did not read back"
    die "the new archive does not read back; discarded"
  fi
  sync "$partial"
  mv "$partial" "$dir/$id.dump"
  sync "$dir"
  write_status ok "$id"
  log "$id: $(wc -c < "$dir/$id.dump") bytes in $(( $(date +%s) - started )) s"
  prune
  echo "$id"
}

case "${1:-}" in
  loop)
    trap 'exit 0' TERM INT
    # The directory is handed to this uid by the provisioning job; 0711: others may reach the status
    # file by name, never list or read the dumps.
    chmod 0711 "$dir"
    while :; do
      backup_now >/dev/null || true
      sleep "$interval" &
      wait $! || true
    done
    ;;
  now)
    backup_now
    ;;
  list)
    dumps | while read -r f; do
      printf '%s\t%s\t%s\n' "${f%.dump}" "$(wc -c < "$dir/$f")" "$(date -u -r "$dir/$f" +%Y-%m-%dT%H:%M:%SZ)"
    done
    [ ! -f "$status" ] || sed 's/^/# /' "$status"
    ;;
  restore)
    id="${2:-}"
    printf '%s' "$id" | grep -Eq "^${PGDATABASE}-[0-9]{8}T[0-9]{6}Z$" || die "no such backup ID: '$id' (see: list)"
    file="$dir/$id.dump"
    [ -f "$file" ] || die "no such backup ID: '$id' (see: list)"
    pg_restore --list "$file" >/dev/null 2>&1 || die "$id does not read back; not restored"
    password
    # One transaction: the old contents stay until the new ones and the app's grants are all in place.
    {
      pg_restore --clean --if-exists --no-owner --no-acl -f - "$file"
      printf 'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO "%s";\n' "$APP_GROUP"
      printf 'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "%s";\n' "$APP_GROUP"
    } | psql -X -q -v ON_ERROR_STOP=1 --single-transaction -o /dev/null
    log "restored $id"
    ;;
  health)
    grep -qx 'last_result=ok' "$status"
    ;;
  *)
    die "usage: backup.sh loop|now|list|restore ID|health"
    ;;
esac
