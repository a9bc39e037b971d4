#!/usr/bin/env bash
# The rate-limit tests start a real redis-server (limits shared by several instances);
# install Debian's package when it is not on PATH yet.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "redis-server is not installed and this user cannot install it: install the 'redis-server' package" >&2
    exit 1
fi
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }; then
    echo "could not install redis-server with apt-get: install the 'redis-server' package" >&2
    exit 1
fi
command -v redis-server >/dev/null 2>&1 || {
    echo "redis-server was installed but is not on PATH" >&2
    exit 1
}
