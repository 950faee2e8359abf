#!/bin/sh
# Tier 3: vtballoonrs in a real FreeBSD kernel under QEMU.
#   sh sysctl-tests/vmtest.sh test    the in-guest checks (make vmtest)
#   sh sysctl-tests/vmtest.sh bench   throughput, ours against the in-tree driver (make vmbench)
# Input: FREEBSD_BOOT, a FreeBSD amd64 /boot directory (default /opt/freebsd-boot).
set -eu
cd "$(dirname "$0")/.."
mode=${1:-test}
FREEBSD_BOOT=${FREEBSD_BOOT:-/opt/freebsd-boot}
export FREEBSD_BOOT
if [ ! -f "$FREEBSD_BOOT/kernel/kernel" ] || [ ! -f "$FREEBSD_BOOT/cdboot" ]; then
	echo "skipped: no FreeBSD boot files at $FREEBSD_BOOT (kernel/kernel, loader, cdboot)"
	exit 0
fi
for tool in qemu-system-x86_64 xorriso; do
	if ! command -v "$tool" >/dev/null; then
		echo "error: $tool is needed (sh tools/install-deps.sh)" >&2
		exit 1
	fi
done
sh kmod/build-kld.sh
if [ ! -f target/kld/vtballoonrs.ko ]; then
	echo "skipped: the module could not be built here (see above)"
	exit 0
fi
sh sysctl-tests/guest/build.sh
cargo run -q --release -p vmharness -- "$mode"
