#!/usr/bin/env bash
# Builds the Debian package libapache2-mod-stapling with dpkg-buildpackage and debhelper
# (dh_apache2), and prints the path of the .deb it made under target/debian/.
#
#   scripts/package-deb.sh                              # builds the module with cargo first
#   DEB_VERSION=0.1.0+local1 scripts/package-deb.sh     # another version, e.g. to try an upgrade
#   MOD_STAPLING_SO=path/to/libmod_stapling.so scripts/package-deb.sh   # package a built .so
#
# Honors CARGO_TARGET_DIR as cargo does. The build log goes to stderr; only the path goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac

for tool in dpkg-buildpackage dh dh_apache2; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/deps.sh" >&2; exit 1; }
done

so=${MOD_STAPLING_SO:-}
if [ -z "$so" ]; then
  # The same command as scripts/test.sh and CI: nothing is compiled twice.
  cargo build --release --locked >&2
  so=$target/release/libmod_stapling.so
fi
so=$(realpath "$so")

version=${DEB_VERSION:-$(dpkg-parsechangelog -l debian/changelog -S Version)}
arch=$(dpkg-architecture -q DEB_HOST_ARCH)
out=$target/debian
stage=$out/build-$version
rm -rf "$stage"
mkdir -p "$stage"
# The package needs only these: the module itself is the .so built above.
cp -a debian apache-conf README.md "$stage/"

if [ -n "${DEB_VERSION:-}" ]; then
  # A changelog entry for the requested version, on top of the shipped ones.
  maint=$(sed -n 's/^Maintainer: //p' debian/control)
  { printf 'libapache2-mod-stapling (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Local build %s.\n\n' "$version"
    printf ' -- %s  %s\n\n' "$maint" "$(date -R)"
    cat debian/changelog; } > "$stage/debian/changelog"
fi

(
  cd "$stage"
  MOD_STAPLING_SO=$so dpkg-buildpackage -b -us -uc \
    --buildinfo-file="$out/libapache2-mod-stapling_${version}_${arch}.buildinfo" \
    --changes-file="$out/libapache2-mod-stapling_${version}_${arch}.changes"
) >&2

deb=$out/libapache2-mod-stapling_${version}_${arch}.deb
[ -f "$deb" ] || { echo "dpkg-buildpackage made no $deb" >&2; exit 1; }
rm -rf "$stage"
echo "$deb"
