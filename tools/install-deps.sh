#!/bin/sh
# Installs what the test tiers need on Debian 12 (run as root). Idempotent:
# apt is only touched when something is missing.
#   tier 1 (host tests): the rustup stable toolchain already on the machine
#   tier 2 (kernel build, lint + audit): Debian's rustc-web/cargo-web/
#          rust-web-src (rustc 1.96 with its library source) and
#          rust-web-clippy (its clippy, for the kernel glue), clang, lld,
#          libclang for bindgen
#   tier 3 (FreeBSD under QEMU): qemu-system-x86, xorriso
set -eu
pkgs="rustc-web cargo-web rust-web-src rust-web-clippy clang libclang-dev lld-19 llvm-19 qemu-system-x86 xorriso"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
	echo "install-deps: all present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing:$missing (run as root)" >&2
	exit 1
fi
echo "install-deps: installing$missing"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
