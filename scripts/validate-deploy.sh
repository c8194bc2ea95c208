#!/usr/bin/env bash
# Validates the deployment files: docker-compose.yml against the Compose Specification
# schema (check-jsonschema's bundled copy; no Docker engine or compose plugin needed) and
# deploy/k8s/ against the Kubernetes API schemas bundled with kubernetes-validate (strict:
# unknown fields fail), the ServiceMonitor against deploy/k8s/schemas/. The validators are
# installed once from PyPI into a venv under ~/.cache/backupd-test-servers. Each check is
# also run on a broken copy, which must fail, so a validator that accepts anything is caught.
# Usage: scripts/validate-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${BACKUPD_VALIDATORS_VENV:-$HOME/.cache/backupd-test-servers/validators}"
# Pinned; bump deliberately.
CHECK_JSONSCHEMA="check-jsonschema==0.39.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
K8S_VERSION="1.32.0"
STAMP="$VENV/.backupd-validators"

if [ "$(cat "$STAMP" 2>/dev/null)" != "$CHECK_JSONSCHEMA $KUBERNETES_VALIDATE" ] \
  || ! [ -x "$VENV/bin/check-jsonschema" ] || ! [ -x "$VENV/bin/kubernetes-validate" ]; then
  echo "installing the deployment validators into $VENV" >&2
  [ -x "$VENV/bin/python" ] || { mkdir -p "$(dirname "$VENV")"; python3 -m venv "$VENV"; }
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "$CHECK_JSONSCHEMA" "$KUBERNETES_VALIDATE"
  echo "$CHECK_JSONSCHEMA $KUBERNETES_VALIDATE" >"$STAMP"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

compose() { "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$@"; }
k8s() { "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$@"; }
monitor() { "$VENV/bin/check-jsonschema" --schemafile deploy/k8s/schemas/servicemonitor-v1.json "$@"; }
must_fail() {
  if "$@" >"$tmp/out" 2>&1; then
    echo "error: the validator accepted a broken file: $*" >&2
    cat "$tmp/out" >&2
    exit 1
  fi
}

echo "== docker-compose.yml (Compose Specification schema)"
compose docker-compose.yml
sed 's/^    healthcheck:/    healthchek:/' docker-compose.yml >"$tmp/docker-compose.yml"
must_fail compose "$tmp/docker-compose.yml"

echo "== deploy/k8s (Kubernetes $K8S_VERSION schemas, strict)"
builtin=()
for f in deploy/k8s/*.yaml; do
  case "$f" in
    */kustomization.yaml | */servicemonitor.yaml) ;;
    *) builtin+=("$f") ;;
  esac
done
k8s "${builtin[@]}"
sed 's/readinessProbe:/readinesProbe:/' deploy/k8s/deployment.yaml >"$tmp/deployment.yaml"
must_fail k8s "$tmp/deployment.yaml"
echo "ok -- ${#builtin[@]} manifests valid"

echo "== deploy/k8s/servicemonitor.yaml (deploy/k8s/schemas/servicemonitor-v1.json)"
monitor deploy/k8s/servicemonitor.yaml
sed 's/scrapeTimeout:/scrapeTimeOut:/' deploy/k8s/servicemonitor.yaml >"$tmp/servicemonitor.yaml"
must_fail monitor "$tmp/servicemonitor.yaml"

if command -v kubectl >/dev/null; then
  echo "== kubectl kustomize deploy/k8s"
  kubectl kustomize deploy/k8s >/dev/null
fi
echo "deployment files: 3 passed, 0 failed"
