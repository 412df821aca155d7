#!/usr/bin/env bash
# Builds the RPM from packaging/rpm/mod_stapling.spec and prints the path of the .rpm it made
# under target/rpm/. It makes the source tarball from the working tree (the files git tracks,
# plus new ones it does not ignore), builds the module with cargo once (CARGO_TARGET_DIR is
# honored) and hands the .so to rpmbuild -bb, which then compiles nothing.
#
#   MOD_STAPLING_SO=path scripts/package-rpm.sh   # package a module built beforehand
#   RPM_FROM_SOURCE=1 scripts/package-rpm.sh      # let the spec's %build run cargo itself
#
# On Debian, rpmbuild (package rpm) cannot see the BuildRequires, which are RHEL package
# names, so it runs with --nodeps there.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
command -v rpmbuild >/dev/null || { echo "rpmbuild is missing: run scripts/deps.sh" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
top=$target/rpm
rm -rf "$top"
mkdir -p "$top/SOURCES"

# The source tarball, as rpmbuild's %setup expects it: mod_stapling-VERSION/...
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - --transform "s,^,mod_stapling-$version/," -czf "$top/SOURCES/mod_stapling-$version.tar.gz"
else
  tar --exclude=./target --exclude=./.git --transform "s,^\.,mod_stapling-$version," \
    -czf "$top/SOURCES/mod_stapling-$version.tar.gz" .
fi

args=(--define "_topdir $top" --define "pkg_version $version")
if [ -z "${RPM_FROM_SOURCE:-}" ]; then
  so=${MOD_STAPLING_SO:-}
  if [ -z "$so" ]; then
    cargo build --release --locked >&2
    so=$target/release/libmod_stapling.so
  fi
  args+=(--define "prebuilt_so $(realpath "$so")")
fi
# RHEL's httpd-devel defines _httpd_mmn; elsewhere take it from the headers the module was
# built against, in the form RHEL's httpd provides (20120211x8664).
if [ -z "$(rpm --eval '%{?_httpd_mmn}')" ] && command -v apxs >/dev/null; then
  mmn=$(sed -n 's/^#define MODULE_MAGIC_NUMBER_MAJOR \([0-9]*\).*/\1/p' "$(apxs -q INCLUDEDIR)/ap_mmn.h")
  [ -n "$mmn" ] && args+=(--define "_httpd_mmn $mmn$(rpm --eval '%{__isa_name}%{__isa_bits}')")
fi
if [ -n "${RPM_FROM_SOURCE:-}" ]; then
  # The spec builds in its own unpacked copy, into its own target/: never over this tree's .so.
  unset CARGO_TARGET_DIR
fi
nodeps=()
[ -e /etc/debian_version ] && nodeps=(--nodeps)

rpmbuild -bb "${nodeps[@]}" "${args[@]}" packaging/rpm/mod_stapling.spec >&2
rpm=$(find "$top/RPMS" -name "mod_stapling-$version-*.rpm" | head -1)
[ -n "$rpm" ] || { echo "rpmbuild made no package" >&2; exit 1; }
echo "$rpm"
