#!/usr/bin/env bash
# Installs the system packages the tests need, when missing. Idempotent;
# needs root for apt-get (CI runs as root). Go modules come via `go test`.
set -euo pipefail
need=()
# Add packages here as features need them: "binary:package".
for pair in "$@"; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
