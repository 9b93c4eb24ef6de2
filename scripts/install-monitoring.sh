#!/usr/bin/env bash
# Installs what the chart and monitoring checks need on a Debian machine:
# promtool and prometheus (Debian's `prometheus` package ships both), used by
# scripts/check-chart.sh (promtool check/test rules) and by the checks that
# scrape real nodes. Idempotent: installs nothing when promtool is on PATH.
# helm and kubectl come from the Kubernetes build (~/.cache/raftkv/k8s/*/bin).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-monitoring: promtool is missing and apt-get is not available; install Prometheus (promtool) >= 2.42" >&2
  exit 1
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# The package's postinst would start a Prometheus daemon (init script) on
# :9090; the checks start their own. Deny service starts for this install
# only, unless the machine already has a policy (e.g. in a container image).
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# install-monitoring.sh: no service starts during this install\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  made_policy=1
fi
cleanup() { if [ -n "$made_policy" ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT

echo "install-monitoring: installing prometheus (promtool)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null 2>&1 || { echo "install-monitoring: promtool still missing after installing prometheus" >&2; exit 1; }
