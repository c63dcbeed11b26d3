#!/usr/bin/env bash
# Deploy a stack (default: dev) to the Docker engine in DOCKER_HOST, or the local socket:
#
#   ./deploy.sh [STACK]
#
# Sets up .venv (the program's dependencies, again only when requirements.txt changes). With the Pulumi
# CLI: keeps state in the project (.pulumi-state/, a local file backend) and a generated secrets
# passphrase in .pulumi-passphrase (0600, ignored by git), unless you already chose a backend (logged in,
# or PULUMI_BACKEND_URL) or a passphrase; selects or creates the stack; `pulumi up`. Without the CLI: the
# same stack through the compose export (.stack/STACK/), `docker compose up --wait`; for a stack whose
# target is swarm (DOCKER_HOST: a manager), the stack file with `docker stack deploy`, then the
# provisioning job once more (it retires an app role a rotation replaced; docs/swarm.md). Set
# SWARM_RESOLVE_IMAGE=never where no registry answers. Idempotent: a second run changes nothing that is
# already in place. Prints where state and secrets live.
set -euo pipefail
cd "$(dirname "$0")"
stack="${1:-dev}"
say() { printf 'deploy: %s\n' "$*"; }
fail() { printf 'deploy: error: %s\n' "$*" >&2; exit 1; }

[[ "$stack" =~ ^[a-z0-9][a-z0-9-]*$ ]] || fail "stack name '$stack': lower-case letters, digits and -"
if [ ! -f "Pulumi.$stack.yaml" ]; then
  known=$(for f in Pulumi.*.yaml; do f=${f#Pulumi.}; printf '%s ' "${f%.yaml}"; done)
  fail "no Pulumi.$stack.yaml; known stacks: $known"
fi
command -v docker >/dev/null || fail "no docker command: install Docker Engine (README: Prerequisites)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers at ${DOCKER_HOST:-the local socket}: start it (or set DOCKER_HOST)"
command -v python3 >/dev/null || fail "no python3 (3.11 or later) on PATH"

# --- the program's virtual environment -------------------------------------------------------------
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "setting up .venv (requirements.txt)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

# --- an operation holds the stack: deploying now could start a server on a volume it is filling ----
lock=$(.venv/bin/python -c 'import sys; from model.stack_yaml import settings_from_file
print(settings_from_file(sys.argv[1]).ops_lock)' "$stack")
holder=$(docker container inspect -f '{{index .Config.Labels "stock-analyzer.ops-lock.command"}}' "$lock" 2>/dev/null || true)
[ -z "$holder" ] || fail "stack $stack is held by \`python -m ops $holder\` (docker container inspect $lock): wait until it ends, then deploy"

if command -v pulumi >/dev/null; then
  # --- Pulumi: state and secrets in the project unless chosen already ------------------------------
  if [ -z "${PULUMI_BACKEND_URL:-}" ] && ! pulumi whoami >/dev/null 2>&1; then
    mkdir -p .pulumi-state
    export PULUMI_BACKEND_URL="file://$PWD/.pulumi-state"
  fi
  if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
    if [ ! -s .pulumi-passphrase ]; then
      (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .pulumi-passphrase)
      say "generated the secrets passphrase in .pulumi-passphrase (keep it: it decrypts this stack's secrets)"
    fi
    export PULUMI_CONFIG_PASSPHRASE_FILE="$PWD/.pulumi-passphrase"
  fi
  say "state: ${PULUMI_BACKEND_URL:-$(pulumi whoami --verbose 2>/dev/null | sed -n 's/^Backend URL: //p')}"
  say "secrets passphrase: ${PULUMI_CONFIG_PASSPHRASE_FILE:-from PULUMI_CONFIG_PASSPHRASE}"
  pulumi stack select --create "$stack" --non-interactive
  pulumi up --yes --stack "$stack" --non-interactive
  say "done: pulumi stack output --stack $stack (URLs); passwords: pulumi stack output --stack $stack --show-secrets admin_password"
else
  # --- no Pulumi CLI: the same stack through the compose export ------------------------------------
  say "no Pulumi CLI on PATH: bringing $stack up through the compose export instead (README: Prerequisites)"
  out=".stack/$stack"
  mkdir -p -m 0700 .stack
  target=$(.venv/bin/python -c 'import sys; from model.stack_yaml import settings_from_file
print(settings_from_file(sys.argv[1]).target)' "$stack")
  if [ "$target" = swarm ]; then
    .venv/bin/python -m exporters.compose --stack "$stack" --out "$out" --target swarm
    docker stack deploy --detach=false --resolve-image "${SWARM_RESOLVE_IMAGE:-always}" \
      -c "$out/compose.yaml" "stock-analyzer-$stack"
    docker service update --force --detach=false "stock-analyzer-${stack}_db-provision" >/dev/null
    # Secrets and configs a change replaced (they are named by content): the engine refuses to remove one
    # that a task still uses, so only the unused go; a later run removes the rest.
    keep=$(awk '$1 == "name:" {print $2}' "$out/compose.yaml")
    for kind in secret config; do
      for name in $(docker "$kind" ls --format '{{.Name}}' --filter "name=stock-analyzer-${stack}_"); do
        if ! grep -qxF "$name" <<<"$keep"; then
          docker "$kind" rm "$name" >/dev/null 2>&1 && say "removed the replaced $kind $name" || true
        fi
      done
    done
    say "state: the swarm (docker stack services stock-analyzer-$stack); the database volume on the labelled node"
    say "secrets: $out/secrets/ (0700; generated once, never printed), in the swarm as content-named secrets"
    exit 0
  fi
  .venv/bin/python -m exporters.compose --stack "$stack" --out "$out"
  docker compose -f "$out/compose.yaml" up -d --build --wait --wait-timeout 300
  say "state: the Docker engine (containers and volumes named stock-analyzer-$stack-*)"
  say "secrets: $out/secrets/ (0700; generated once, never printed)"
  say "done: docker compose -f $out/compose.yaml ps"
fi
