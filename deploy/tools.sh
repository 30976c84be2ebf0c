#!/usr/bin/env bash
# The tools the deployment checks use, from Debian's packages, installed only when missing:
#   docker-compose  (docker-compose config -q: the compose file is valid)
#   promtool        (package prometheus: promtool check config deploy/prometheus.yml)
#   initdb/pg_ctl   (package postgresql: the compose stack as local processes, on a private cluster)
# Idempotent: with every tool present it changes nothing and needs no network. Exits 1 naming
# what it could not install; tests/test_deploy.py and tests/test_compose_processes.py then fail
# saying so.
set -uo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "deploy/tools.sh: missing ${missing[*]}, and not root (nor passwordless sudo) to apt-get them" >&2
    exit 1
fi

echo "deploy/tools.sh: installing ${missing[*]} (Debian packages)" >&2
# Installing a package must not start its service here (prometheus, postgresql): the tests start
# what they need themselves. policy-rc.d answering 101 is Debian's way to say so.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null && "${as_root[@]}" chmod 755 "$policy" && made_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq \
    && "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
status=$?
if [ "$made_policy" -eq 1 ]; then
    "${as_root[@]}" rm -f "$policy"
fi

still=()
command -v docker-compose >/dev/null 2>&1 || still+=(docker-compose)
command -v promtool >/dev/null 2>&1 || still+=(promtool)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || still+=(postgresql)
if [ ${#still[@]} -ne 0 ]; then
    echo "deploy/tools.sh: still missing after apt-get (exit $status): ${still[*]}" >&2
    exit 1
fi
