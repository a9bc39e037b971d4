#!/usr/bin/env bash
# The monitoring tests run promtool (the alert rules' unit tests) and a real prometheus
# (every rule and dashboard expression evaluated against a scraped service); install
# Debian's package, which ships both, when they are not on PATH yet.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "prometheus is not installed and this user cannot install it: install the 'prometheus' package" >&2
    exit 1
fi
# --no-install-recommends: the package recommends node exporters the tests do not need.
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
    echo "could not install prometheus with apt-get: install the 'prometheus' package" >&2
    exit 1
fi
for tool in promtool prometheus; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "$tool was installed but is not on PATH" >&2
        exit 1
    }
done
