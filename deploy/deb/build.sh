#!/usr/bin/env bash
# Builds the Debian package tagbridge_<version>-<revision>_<arch>.deb with dpkg-deb.
#
#   deploy/deb/build.sh                                  # cargo build --release, then package
#   deploy/deb/build.sh --binary target/debug/tagbridge  # package a binary built already
#   deploy/deb/build.sh --revision 2 --out /tmp/debs     # a rebuilt package (upgrade tests)
#   deploy/deb/build.sh --compression none ...           # fast, large (tests; default xz)
#
# Needs bash, dpkg-deb and gzip (all in Debian's base system); dpkg-shlibdeps (dpkg-dev), when
# installed, computes the library dependencies, otherwise the glibc version the binary needs is
# read from its symbol versions. No root and no fakeroot: files are owned by root in the archive
# (--root-owner-group). The man pages and completions come from the packaged binary itself
# (`tagbridge generate`), so they always describe its flags. Prints the path of the package.
#
# What goes where (the systemd unit expects exactly this; tests/it/deb.rs checks it):
#   /usr/bin/tagbridge                      the binary
#   /usr/lib/systemd/system/tagbridge.service
#   /etc/tagbridge/gateway.yaml             conffile: upgrades never overwrite an edited copy
#   /etc/tagbridge/tag-maps/*.yaml          conffiles (examples to edit)
#   /etc/tagbridge/credentials/eventhub     root-only (0700/0600), created empty by postinst
#   /var/lib/tagbridge/                     the state directory (spool, OPC UA PKI), created by
#                                           postinst for the tagbridge system user
#   /usr/share/tagbridge/schema/*.json      JSON Schemas (the YAML files point at them)
#   /usr/share/doc/tagbridge/               README, docs/, changelog, copyright, examples/
#   /usr/share/man/man1/tagbridge*.1.gz     man pages
#   /usr/share/{bash-completion,zsh,fish}/  completions
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
binary=""
revision=1
out="$repo/target/deb"
arch=""
strip=auto
compression=xz

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --revision) revision="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --no-strip) strip=no; shift ;;
    --compression) compression="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
case "$revision" in
  ''|*[!0-9A-Za-z.+~]*) echo "error: --revision must be like 1 or 2~rc1, got '$revision'" >&2; exit 2 ;;
esac

if [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release --locked)
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/tagbridge"
fi
if [ ! -x "$binary" ]; then
  echo "error: no executable tagbridge at $binary" >&2
  exit 1
fi
arch="${arch:-$(dpkg --print-architecture)}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)"
if [ -z "$version" ]; then
  echo "error: no version in $repo/Cargo.toml" >&2
  exit 1
fi
full="$version-$revision"
# Reproducible archives: file times are clamped to the commit's time when there is one.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

# The binary (stripped for release: debug symbols are a third of its size).
install -D -m 0755 "$binary" "$root/usr/bin/tagbridge"
if [ "$strip" = auto ] && command -v strip >/dev/null; then
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/tagbridge"
fi

install -D -m 0644 "$repo/deploy/systemd/tagbridge.service" \
  "$root/usr/lib/systemd/system/tagbridge.service"

# Configuration. The editor hint in each YAML file points at the installed schema.
schema_hint='s|\$schema=\.\./schema/|$schema=/usr/share/tagbridge/schema/|'
install -d -m 0755 "$root/etc/tagbridge/tag-maps"
sed "$schema_hint" "$repo/deploy/gateway.yaml" >"$root/etc/tagbridge/gateway.yaml"
for map in "$repo"/tag-maps/*.yaml; do
  sed "$schema_hint" "$map" >"$root/etc/tagbridge/tag-maps/$(basename "$map")"
done
chmod 0644 "$root/etc/tagbridge/gateway.yaml" "$root"/etc/tagbridge/tag-maps/*.yaml

install -d -m 0755 "$root/usr/share/tagbridge/schema"
install -m 0644 "$repo"/schema/*.json "$root/usr/share/tagbridge/schema/"

doc="$root/usr/share/doc/tagbridge"
install -d -m 0755 "$doc/docs" "$doc/examples/tag-maps"
install -m 0644 "$repo/README.md" "$doc/"
install -m 0644 "$repo"/docs/*.md "$doc/docs/"
gzip -9n <"$repo/CHANGELOG.md" >"$doc/changelog.gz"
commit="$(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
gzip -9n >"$doc/changelog.Debian.gz" <<CHANGES
tagbridge ($full) unstable; urgency=medium

  * Built from commit $commit; see changelog.gz for what changed.

 -- tagbridge maintainers <tagbridge@users.noreply.github.com>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
CHANGES
install -m 0644 "$here/copyright" "$doc/copyright"
# Pristine copies of the shipped configuration, to compare with an edited /etc/tagbridge.
cp "$root/etc/tagbridge/gateway.yaml" "$doc/examples/"
cp "$root"/etc/tagbridge/tag-maps/*.yaml "$doc/examples/tag-maps/"

gen="$stage/gen"
"$root/usr/bin/tagbridge" generate man --dir "$gen/man" >/dev/null
"$root/usr/bin/tagbridge" generate completions --dir "$gen/completions" >/dev/null
install -d -m 0755 "$root/usr/share/man/man1"
for page in "$gen"/man/*.1; do
  gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
install -D -m 0644 "$gen/completions/tagbridge.bash" "$root/usr/share/bash-completion/completions/tagbridge"
install -D -m 0644 "$gen/completions/_tagbridge" "$root/usr/share/zsh/vendor-completions/_tagbridge"
install -D -m 0644 "$gen/completions/tagbridge.fish" "$root/usr/share/fish/vendor_completions.d/tagbridge.fish"

# Control area.
install -d -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"

# glibc's version from the binary's symbol versions: the fallback when dpkg-shlibdeps is missing
# or cannot read the binary (another architecture).
glibc_depends() {
  local v
  v="$( (grep -ao 'GLIBC_2\.[0-9.]*' "$root/usr/bin/tagbridge" || true) | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
  echo "libc6${v:+ (>= $v)}"
  if grep -q 'libgcc_s\.so\.1' "$root/usr/bin/tagbridge"; then echo ", libgcc-s1"; fi
}
depends=""
if command -v dpkg-shlibdeps >/dev/null; then
  # dpkg-shlibdeps wants a debian/control beside the binary it reads.
  mkdir -p "$stage/src/debian"
  printf 'Source: tagbridge\n\nPackage: tagbridge\nArchitecture: any\n' >"$stage/src/debian/control"
  if shlibs="$(cd "$stage/src" && dpkg-shlibdeps -O "$root/usr/bin/tagbridge" 2>"$stage/shlibdeps.err")"; then
    depends="$(printf '%s\n' "$shlibs" | sed -n 's/^shlibs:Depends=//p')"
  else
    echo "warning: dpkg-shlibdeps failed; depending on glibc only:" >&2
    cat "$stage/shlibdeps.err" >&2
  fi
fi
depends="${depends:-$(glibc_depends | tr -d '\n')}"
# useradd and groupadd (passwd) are Priority: required, on every Debian and Ubuntu.
depends="$depends, passwd"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"

cat >"$root/DEBIAN/control" <<CONTROL
Package: tagbridge
Version: $full
Architecture: $arch
Maintainer: tagbridge maintainers <tagbridge@users.noreply.github.com>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/tagbridge/tagbridge
Description: industrial gateway: PLC tags over OPC UA and Modbus to Azure Event Hubs
 tagbridge reads PLC tags over OPC UA (subscriptions) and Modbus (TCP, RTU),
 maps them through YAML tag maps, keeps them in a durable on-disk spool and
 delivers them to Azure Event Hubs over AMQP 1.0 (TLS or WebSockets) or HTTPS.
 .
 This package runs it as a hardened systemd service under the tagbridge system
 user: configuration in /etc/tagbridge, the spool in /var/lib/tagbridge.
 Purging the package deletes both, including readings not yet delivered.
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/tagbridge_${full}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compression" --build "$root" "$deb" >/dev/null
echo "$deb"
