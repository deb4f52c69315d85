#!/usr/bin/env bash
# Install dovecot for the bounce-mailbox IMAP tests (tests/feedback/test_imap.py): Debian's
# dovecot-imapd (it pulls dovecot-core, the `dovecot` binary). The tests start their own
# dovecot with their own configuration; the system service is not used (and need not run).
# Idempotent: a no-op (one dpkg query) when it is already installed. Debian/Ubuntu only; needs
# root or sudo.
#
#   scripts/install-dovecot.sh
set -euo pipefail

if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

package=dovecot-imapd
if installed "$package"; then
    echo "dovecot: $package already installed"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "$package"
command -v dovecot >/dev/null || test -x /usr/sbin/dovecot \
    || { echo "dovecot binary missing after install of $package" >&2; exit 1; }
echo "dovecot: installed $package ($(/usr/sbin/dovecot --version))"
