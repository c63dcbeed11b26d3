#!/usr/bin/env bash
# The project's own Docker engine for tests and CI: installs (once) and starts (if none answers) Docker
# Engine 26 or later with Compose v2 and buildx, from Debian's packages through the machine's own apt
# mirror: the machine's suite when it carries them, else Debian trixie's packages from the same mirror.
# Run as root. Idempotent.
#
#   tools/docker-engine.sh [start|stop|status]    (default: start)
#
# `stop` ends only the dockerd this script started (pid in /run/stock-analyzer-dockerd.pid); an engine
# that was already running is used as it is and never stopped.
set -euo pipefail
cmd="${1:-start}"
pidfile=/run/stock-analyzer-dockerd.pid
log=/var/log/stock-analyzer-dockerd.log

say() { printf 'docker-engine: %s\n' "$*" >&2; }

installed() {
  [ -x /usr/sbin/dockerd ] || return 1
  /usr/sbin/dockerd --version 2>/dev/null | grep -qE 'version (2[6-9]|[3-9][0-9])\.' || return 1
  docker compose version >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1
}

# The first Debian mirror the machine uses (deb822 or one-line sources); never a name written here.
mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { say "error: no Debian mirror in /etc/apt/sources.list(.d)"; exit 1; }
  printf '%s\n' "$uri"
}

install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends containerd runc tini iptables adduser ca-certificates >/dev/null
  local candidate
  candidate=$(apt-cache policy docker.io 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [[ "$candidate" =~ ^(2[6-9]|[3-9][0-9])\. ]]; then
    apt-get install -y -qq --no-install-recommends docker.io docker-compose docker-buildx >/dev/null
    installed && return 0
  fi
  # The machine's suite is older (bookworm has Engine 20): trixie's packages from the same mirror, in a
  # private apt state so that the machine's own sources stay as they are.
  say "installing Docker Engine from Debian trixie (the machine's suite has no Engine 26)"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/parts" "$work/lists/partial" "$work/archives/partial" "$work/debs"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$(mirror)" > "$work/parts/trixie.sources"
  local opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$work/parts"
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives"
              -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq >/dev/null
  (cd "$work/debs" && apt-get "${opts[@]}" download docker.io docker-compose docker-buildx >/dev/null)
  dpkg -i "$work"/debs/*.deb >/dev/null || { say "error: dpkg -i of the trixie packages failed"; exit 1; }
  installed || { say "error: Docker Engine 26+, Compose v2 and buildx are still not all there"; exit 1; }
}

running() { docker info >/dev/null 2>&1; }

case "$cmd" in
  start)
    if running; then
      say "an engine already answers: using it"
    else
      installed || install
      nohup /usr/sbin/dockerd >"$log" 2>&1 &
      echo $! > "$pidfile"
      for _ in $(seq 1 60); do running && break; sleep 0.5; done
      running || { say "error: dockerd did not answer within 30 s; see $log"; exit 1; }
    fi
    echo "docker engine $(docker version -f '{{.Server.Version}}'), compose $(docker compose version --short), buildx $(docker buildx version | awk '{print $2}')"
    ;;
  stop)
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      rm -f "$pidfile"
    fi
    ;;
  status)
    if running; then docker version -f '{{.Server.Version}}'; else echo "not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
