#!/usr/bin/env bash
# Install pg_cron for the adoption tests (tests/adoption): Debian's postgresql-<ver>-cron
# package, matching the Debian PostgreSQL server it loads into. Idempotent: a no-op (a few
# dpkg queries) when both are already installed. Debian/Ubuntu only; needs root or sudo.
#
#   scripts/install-pg-cron.sh [PG_MAJOR]    # default: the newest installed server, else 15
#
# pg_net (net.http_post) has no Debian package: the tests stub its schema instead.
set -euo pipefail

if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

major="${1:-}"
if [[ -z "$major" ]]; then
    # The newest server already installed, so pg_cron matches the binaries the tests find.
    major=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1 || true)
    major="${major:-15}"
fi
packages=("postgresql-${major}" "postgresql-${major}-cron")

missing=()
for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "pg_cron: ${packages[*]} already installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
test -f "/usr/lib/postgresql/${major}/lib/pg_cron.so" \
    || { echo "pg_cron.so missing after install of ${missing[*]}" >&2; exit 1; }
echo "pg_cron: installed ${missing[*]}"
