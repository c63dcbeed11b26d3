#!/bin/sh
# db-provision: the one-shot job that owns the database's roles, grants and schema.
#
# It runs in the Postgres image (root, every capability but CHOWN dropped) once the server accepts connections
# and before any app container starts, and again whenever a password it carries changes. Idempotent,
# and safe to stop at any point: every step below leaves a state the next run completes.
#
#   login         log in as the superuser: the current password, else the one recorded as the server's,
#                 else one recorded as pending (a crash mid-rotation), else the bootstrap password that
#                 initialised a new data directory
#   su_known      record the password that worked: it is what the server has now
#   su_pending    rotation only: record the new superuser password as pending ...
#   su_altered    ... set it (a SCRAM verifier, see set_password) ...
#   su_recorded   ... and record it as the server's
#   guard         refuse to touch any role with superuser rights (guard.sql)
#   roles         the app's idle login role, its group, grants and schema (provision.sql), then the new
#                 password on the idle role; the backup role (backup_role.sql) and its password
#   swap          the credential file the app reads on every connection names the new role (atomic)
#   drain         wait until no other app role has sessions (bounded)
#   disable       the other login role loses its login; roles left over from a renamed dbAppUser lose
#                 login, memberships and grants, and are dropped when nothing depends on them (retire.sql)
#   record        the job's own record, last
#
# Which role the app uses is read from the credential file itself, never from the job's record, so a run
# after a crash sees the truth; no role is disabled before the app has moved off it.
set -eu
umask 077

log() { echo "provision: $*"; }
die() { echo "provision: error: $*" >&2; exit 1; }

# Fault injection for the crash-safety tests: PROVISION_FAIL_AFTER=<step> ends the job right after that
# step, as a crash would. Never set in a deployment.
step_done() {
  if [ "${PROVISION_FAIL_AFTER:-}" = "$1" ]; then
    echo "provision: injected failure after step $1" >&2
    exit 99
  fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A crash leaves the old file or the new one, never half of one. Mode and owner are set on the copy
# before the rename (mode first: once the file is another uid's, root without FOWNER may not chmod it).
write_atomic() {  # $1 source file, $2 destination, [$3 mode, $4 owner]
  rm -f "$2.tmp"
  cp "$1" "$2.tmp"
  if [ -n "${3:-}" ]; then chmod "$3" "$2.tmp"; fi
  if [ -n "${4:-}" ]; then chown "$4" "$2.tmp"; fi
  sync "$2.tmp"
  mv -f "$2.tmp" "$2"
  sync "$(dirname "$2")"
}

sql() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# The server gets a SCRAM verifier computed here by psql's \password, never the password itself: a failing
# statement is logged with its text, and the text holds no password.
set_password() {  # $1 role, $2 password file
  pw=$(cat "$2")
  if ! printf '%s\n%s\n' "$pw" "$pw" | psql -X -q -c "\\password \"$1\"" >/dev/null 2>"$tmp/err"; then
    grep -v '^Enter ' "$tmp/err" >&2 || true
    die "could not set the password of role $1"
  fi
}

login_with() {  # $1 password file; 0 when the superuser logs in with it
  [ -s "$1" ] || return 1
  if PGPASSWORD="$(cat "$1")" psql -X -q -c 'SELECT 1' >/dev/null 2>"$tmp/err"; then
    return 0
  fi
  if grep -q 'password authentication failed' "$tmp/err"; then
    return 1
  fi
  cat "$tmp/err" >&2
  die "cannot reach the database as $PGUSER"
}

# The job starts with the server and waits (bounded) until it accepts connections over the network: the
# probe of the server's own healthcheck, TCP (the temporary server that initialises a new data directory
# listens on its socket only, so it never counts). Compose starts the job as soon as the server started,
# which saves its half-second polling of the server's health; on a swarm nothing orders them at all.
if [ -n "${PROVISION_WAIT_S:-}" ]; then
  deadline=$(( $(date +%s) + PROVISION_WAIT_S ))
  until pg_isready -q -t 2 >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] \
      || die "the database at $PGHOST:$PGPORT did not accept connections within ${PROVISION_WAIT_S}s"
    sleep 0.1
  done
fi

state="$PROVISION_STATE_DIR"
su_known="$state/postgres_password"
su_pending="$state/postgres_password.pending"

# --- backup directory ------------------------------------------------------------------------------
# A new volume's directory is root's: hand it to the backup container's uid (once; not a step of its own).
if [ -n "${BACKUP_DIR:-}" ] && [ "$(stat -c %u "$BACKUP_DIR")" != "${BACKUP_UID:?}" ]; then
  chmod 0711 "$BACKUP_DIR"
  chown "$BACKUP_UID:$BACKUP_UID" "$BACKUP_DIR"
fi

# --- superuser -------------------------------------------------------------------------------------
login=""
for candidate in "$POSTGRES_PASSWORD_FILE" "$su_known" "$su_pending" "$POSTGRES_BOOTSTRAP_PASSWORD_FILE"; do
  if login_with "$candidate"; then
    login="$candidate"
    break
  fi
done
[ -n "$login" ] || die "the superuser $PGUSER refused the current, the recorded and the bootstrap passwords"
PGPASSWORD="$(cat "$login")"
export PGPASSWORD
step_done login

if [ "$login" != "$su_known" ] && ! cmp -s "$login" "$su_known"; then
  write_atomic "$login" "$su_known"
fi
step_done su_known

if [ "$login" != "$POSTGRES_PASSWORD_FILE" ] && ! cmp -s "$login" "$POSTGRES_PASSWORD_FILE"; then
  write_atomic "$POSTGRES_PASSWORD_FILE" "$su_pending"
  step_done su_pending
  set_password "$PGUSER" "$POSTGRES_PASSWORD_FILE"
  PGPASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
  step_done su_altered
  write_atomic "$POSTGRES_PASSWORD_FILE" "$su_known"
  log "superuser password rotated"
fi
rm -f "$su_pending"
step_done su_recorded

# --- app roles -------------------------------------------------------------------------------------
slot_a="$APP_DB_USER"
slot_b="${APP_DB_USER}_b"
group="${APP_DB_USER}_rw"
creds="$APP_CREDENTIALS_FILE"
cur_user=""
cur_pw=""
rewrite=""
legacy="$state/app_credentials"
if [ -s "$creds" ]; then
  if cur_user=$(sed -n 1p "$creds" 2>/dev/null); then
    cur_pw=$(sed -n 2p "$creds")
  elif [ -s "$legacy" ]; then
    # Left by an older job version: the file is 0400 and the app's, unreadable here; that version kept the
    # same two lines in its record. Rewrite the file readable (same content) below.
    cur_user=$(sed -n 1p "$legacy")
    cur_pw=$(sed -n 2p "$legacy")
    rewrite=1
  else
    die "cannot read $creds and no record says which role the app uses"
  fi
fi
new_pw=$(cat "$APP_DB_PASSWORD_FILE")
given=""
if [ "${PROVISION_MODE:-}" = swarm ]; then given=1; fi
if [ -n "$given" ]; then
  # Swarm: the credential file is a Swarm secret (read-only, the same in every app task on every node) in
  # which the deployment chose the role and its password; this job makes the database agree with it.
  new_pw="$cur_pw"
  printf '%s' "$new_pw" > "$tmp/app_pw"
  APP_DB_PASSWORD_FILE="$tmp/app_pw"
  [ "$cur_user" = "$slot_a" ] || [ "$cur_user" = "$slot_b" ] \
    || die "the credential file names role '$cur_user'; allowed: $slot_a or $slot_b"
  [ -n "$new_pw" ] || die "the credential file holds no password on its second line"
  active="$cur_user"
  # A run with the credentials the previous run already applied comes after the app tasks rolled onto
  # them (the Pulumi program orders db-retire after the apps; by hand: docs/swarm.md): only then may the
  # other role lose its login.
  given_record="$state/app_credentials.sha256"
  given_sum=$(sha256sum < "$creds" | cut -d' ' -f1)
  settled=""
  if [ -s "$given_record" ] && [ "$(cat "$given_record")" = "$given_sum" ]; then settled=1; fi
elif [ "$cur_user" = "$slot_a" ] || [ "$cur_user" = "$slot_b" ]; then
  if [ "$cur_pw" = "$new_pw" ]; then active="$cur_user"
  elif [ "$cur_user" = "$slot_a" ]; then active="$slot_b"
  else active="$slot_a"
  fi
else
  # First run, or dbAppUser was renamed: the app is on no role of the current pair.
  active="$slot_a"
fi
if [ "$active" = "$slot_a" ]; then idle="$slot_b"; else idle="$slot_a"; fi

sqlv() {
  sql -v su="$PGUSER" -v active="$active" -v idle="$idle" -v app_group="$group" -v previous="$cur_user" \
    -v schemas="${APP_SCHEMAS:-}" "$@"
}
sqlv -f /provision/guard.sql
step_done guard

sqlv -f /provision/provision.sql
set_password "$active" "$APP_DB_PASSWORD_FILE"
if [ -n "${BACKUP_DB_USER:-}" ]; then
  sql -v backup="$BACKUP_DB_USER" -v su="$PGUSER" -f /provision/backup_role.sql
  set_password "$BACKUP_DB_USER" "$BACKUP_DB_PASSWORD_FILE"
fi
step_done roles

if [ -n "$given" ]; then
  :  # nothing to swap: every app task already reads the role and password chosen by the deployment
elif [ -n "$rewrite" ] || [ "$cur_user" != "$active" ] || [ "$cur_pw" != "$new_pw" ]; then
  printf '%s\n%s\n' "$active" "$new_pw" > "$tmp/creds"
  # Owner: the app's uid; group root, so that this job (root without DAC_OVERRIDE) can read it next time.
  write_atomic "$tmp/creds" "$creds" 0440 "$APP_UID:0"
  if [ -n "$cur_user" ] && [ "$cur_user" != "$active" ]; then
    log "app role moves from $cur_user to $active"
  fi
fi
step_done swap

# Roles the app may still be on: any other managed role that can log in.
others=$(sqlv -At -f /provision/others.sql)
if [ -n "$given" ] && [ -z "$settled" ]; then
  # Swarm, new credentials: the app tasks on the other role are replaced only after this run (rolling
  # update), so it keeps its login until the next run with these credentials (db-retire).
  if [ -n "$others" ]; then
    log "swarm: $(echo "$others" | tr '\n' ' ')keeps its login until the app tasks have moved to $active"
  fi
  others=""
  skip_retire=1
fi
if [ -n "$others" ]; then
  log "waiting for the sessions of $(echo "$others" | tr '\n' ' ')to end"
  # A request may have read the credential file just before the swap: give it time to connect and finish.
  sleep "${PROVISION_DRAIN_GRACE_S:-3}"
  i=0
  while [ "$i" -lt 60 ] && [ "$(sqlv -At -f /provision/sessions.sql)" != "0" ]; do
    i=$((i + 1))
    sleep 0.5
  done
fi
step_done drain

if [ -z "${skip_retire:-}" ]; then
  sqlv -f /provision/retire.sql
fi
step_done disable

printf '%s\n%s\n' "$APP_DB_USER" "$active" > "$tmp/record"
write_atomic "$tmp/record" "$state/app_role"
if [ -n "$given" ]; then
  printf '%s\n' "$given_sum" > "$tmp/given"
  write_atomic "$tmp/given" "$given_record"
fi
# The record of an older job version held a copy of the app's password: no longer needed.
rm -f "$legacy"
step_done record
log "done; the app connects as $active"
