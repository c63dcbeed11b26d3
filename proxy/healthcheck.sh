#!/bin/bash
# Healthcheck of the edge proxy: both listeners accept a connection. The HAProxy image has no HTTP
# client; bash's /dev/tcp needs none. HAProxy checks the tasks behind it itself (haproxy.cfg).
set -eu
exec 3<>"/dev/tcp/127.0.0.1/${API_PORT}"
exec 4<>"/dev/tcp/127.0.0.1/${FRONTEND_PORT}"
