#!/usr/bin/env bash
# Installs tagbridge as a systemd service on a Debian/Ubuntu box.
#
#   sudo deploy/install.sh [path/to/tagbridge]     # default: target/release/tagbridge
#
# DESTDIR=/some/dir installs into a staging tree instead of / (packaging, and CI's test of this
# script); then nothing is started.
#
# What it does: copies the binary to /usr/bin, the unit to /etc/systemd/system, and creates
# /etc/tagbridge with an example gateway.yaml, tag-maps/ and credentials/ (root-only) unless they
# exist, and the `tagbridge` system user the unit runs as. It never overwrites a configuration
# you edited. On Debian and Ubuntu prefer the package (docs/install.md): it does the same, and
# upgrades and removal too.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
binary="${1:-$repo/target/release/tagbridge}"
dest="${DESTDIR:-}"

if [ ! -x "$binary" ]; then
  echo "error: no tagbridge binary at $binary; build it with: cargo build --release" >&2
  exit 1
fi
if [ -z "$dest" ] && [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (or set DESTDIR to stage the files)" >&2
  exit 1
fi

install -D -m 0755 "$binary" "$dest/usr/bin/tagbridge"
install -D -m 0644 "$here/systemd/tagbridge.service" "$dest/etc/systemd/system/tagbridge.service"

etc="$dest/etc/tagbridge"
install -d -m 0755 "$etc" "$etc/tag-maps"
install -d -m 0700 "$etc/credentials"
if [ ! -e "$etc/gateway.yaml" ]; then
  install -m 0644 "$here/gateway.yaml" "$etc/gateway.yaml"
fi
if [ -z "$(ls -A "$etc/tag-maps")" ]; then
  install -m 0644 "$repo/tag-maps/"*.yaml "$etc/tag-maps/"
fi
if [ ! -e "$etc/credentials/eventhub" ]; then
  install -m 0600 /dev/null "$etc/credentials/eventhub"
fi

if [ -n "$dest" ]; then
  echo "Staged into $dest."
  exit 0
fi

if ! getent passwd tagbridge >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /var/lib/tagbridge \
    --shell /usr/sbin/nologin --comment "tagbridge gateway" tagbridge
fi
install -d -m 0700 -o tagbridge -g tagbridge /var/lib/tagbridge
systemctl daemon-reload
cat <<TXT
Installed. Next:
  1. Put the hub's send-only connection string into /etc/tagbridge/credentials/eventhub
  2. Edit /etc/tagbridge/tag-maps/*.yaml, then: tagbridge check /etc/tagbridge
  3. tagbridge send-test -c /etc/tagbridge/gateway.yaml   (as root, reads the credential file)
  4. systemctl enable --now tagbridge && journalctl -u tagbridge -f
TXT
