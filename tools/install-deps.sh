#!/bin/sh
# Installs what the test tiers need on Debian 12 (run as root). Idempotent:
# apt is only touched when something is missing.
#   tier 1 (host tests): the rustup stable toolchain already on the machine;
#          mandoc (mandoc -Tlint of the manual page, makewhatis)
#   tier 2 (kernel build, lint + audit): Debian's rustc-web/cargo-web/
#          rust-web-src (rustc 1.96 with its library source) and
#          rust-web-clippy (its clippy, for the kernel glue), clang, lld,
#          libclang for bindgen
#   tier 3 (FreeBSD under QEMU): qemu-system-x86, xorriso; for arm64
#          qemu-system-arm (qemu-system-aarch64), qemu-efi-aarch64 (the UEFI
#          firmware of QEMU's virt), dosfstools and mtools (the FAT image
#          holding loader.efi); for the boot
#          driven by libvirt, libvirtd (libvirt-daemon with its QEMU driver)
#          and virsh (libvirt-clients), without recommends: the harness runs
#          its own libvirtd, and libvirt-daemon-system, which would enable
#          system services, is not wanted
set -eu
pkgs="rustc-web cargo-web rust-web-src rust-web-clippy clang libclang-dev lld-19 llvm-19 qemu-system-x86 xorriso mandoc qemu-system-arm qemu-efi-aarch64 dosfstools mtools"
bare="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients"
installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}
missing=""
for p in $pkgs; do
	installed "$p" || missing="$missing $p"
done
missing_bare=""
for p in $bare; do
	installed "$p" || missing_bare="$missing_bare $p"
done
if [ -z "$missing$missing_bare" ]; then
	echo "install-deps: all present"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing:$missing$missing_bare (run as root)" >&2
	exit 1
fi
echo "install-deps: installing$missing$missing_bare"
apt-get update -q
if [ -n "$missing" ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
fi
if [ -n "$missing_bare" ]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing_bare
fi
