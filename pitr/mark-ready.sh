#!/bin/sh
# mark-ready.sh TIMELINE CURRENT: the commit of a live point-in-time restore, run by ops on the stopped data
# directory. The recovery server ran with archiving off, so that a failed attempt leaves the repositories
# untouched; now mark for archiving what the live server must archive first when it starts: the new timeline's
# history file and every segment of that timeline the recovery server completed (those before CURRENT, the
# segment it was writing). POSIX sh (dash).
set -eu
tli="$1"; current="$2"
wal="$PGDATA/pg_wal"
[ -s "$wal/$tli.history" ] || { echo "mark-ready: no $tli.history in pg_wal" >&2; exit 1; }
: > "$wal/archive_status/$tli.history.ready"
for f in "$wal/$tli"*; do
  name=$(basename "$f")
  case "$name" in *.*) continue ;; esac
  if [ "$(printf '%s\n%s\n' "$name" "$current" | LC_ALL=C sort | head -n 1)" = "$name" ] \
      && [ "$name" != "$current" ] && [ ! -e "$wal/archive_status/$name.done" ]; then
    : > "$wal/archive_status/$name.ready"
  fi
done
echo "marked $tli.history and the completed segments before $current"
