#!/usr/bin/env bash
# Syntax checks for what cannot run on the development machines (no container
# engine): the Dockerfile (dockerfile-utils, the parser behind VS Code's
# Dockerfile support), the kind cluster config (YAML, kind's kind/apiVersion,
# every node on the pinned 1.36 image) and the kind scripts (bash -n and
# the linter). Run by `make lint`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${RAFTKV_CACHE_DIR:-$HOME/.cache/raftkv}/npm"
DOCKERFILE_UTILS_VERSION=0.16.3

if [[ ! -x "$tools/node_modules/.bin/dockerfile-utils" ]]; then
	mkdir -p "$tools"
	npm install --silent --no-fund --no-audit --prefix "$tools" "dockerfile-utils@$DOCKERFILE_UTILS_VERSION" >/dev/null
fi
"$tools/node_modules/.bin/dockerfile-utils" lint "$repo/Dockerfile"
# Both image targets the scripts and DESIGN.md name must exist.
for target in node operator; do
	grep -Eq "^FROM .* AS $target\$" "$repo/Dockerfile" || { echo "Dockerfile: no target '$target'" >&2; exit 1; }
done

python3 - "$repo/e2e/kind/kind-config.yaml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
# PyYAML is not guaranteed; the config is flat enough to check line by line.
assert re.search(r"^kind: Cluster$", text, re.M), "kind-config: kind must be Cluster"
assert re.search(r"^apiVersion: kind\.x-k8s\.io/v1alpha4$", text, re.M), "kind-config: apiVersion"
images = re.findall(r"^\s+image: (\S+)$", text, re.M)
roles = re.findall(r"^\s+- role: (\S+)$", text, re.M)
assert roles and len(images) == len(roles), "kind-config: every node names its image"
for image in images:
    assert re.fullmatch(r"kindest/node:v1\.36\.\d+@sha256:[0-9a-f]{64}", image), f"kind-config: {image} is not a pinned 1.36 node image"
PY

bash -n "$repo/e2e/kind/e2e-kind.sh"
if command -v shellcheck >/dev/null; then
	shellcheck "$repo/e2e/kind/e2e-kind.sh" "$repo/e2e/kind/check.sh"
else
	echo "check.sh: shellcheck not installed (scripts/install-deps.sh installs it); skipped" >&2
fi
echo "kind and Dockerfile checks passed"
