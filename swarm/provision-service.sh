#!/bin/sh
# db-provision on a Swarm cluster. Swarm cannot order one service after another, and the Pulumi provider
# has no job mode, so the job runs as a one-task service: it provisions, then stays up idle and healthy.
# `pulumi up` (converge) and `docker stack deploy --detach=false` both wait for that health, and the app
# services are created after it. A failed run exits non-zero: Swarm retries it, then the deploy fails.
set -eu
marker="${PROVISION_DONE_FILE:?}"
rm -f "$marker"
sh /provision/provision.sh
: > "$marker"
echo "provision: idle until the next deploy changes this service"
trap 'exit 0' TERM INT
while :; do
  sleep 3600 &
  wait $! || true
done
