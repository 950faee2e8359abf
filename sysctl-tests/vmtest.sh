#!/bin/sh
# Tier 3: vtballoonrs in a real FreeBSD kernel under QEMU (design.md §3).
#   sh sysctl-tests/vmtest.sh test     the in-guest checks, every test boot (make vmtest)
#   sh sysctl-tests/vmtest.sh test NAME...  only the test boots named (basic, pressure, ...)
#   sh sysctl-tests/vmtest.sh bench    throughput, ours against the in-tree driver (make vmbench)
#   sh sysctl-tests/vmtest.sh intree   the in-tree virtio_balloon.ko only (no vtballoonrs.ko needed)
#   sh sysctl-tests/vmtest.sh PHASE... one boot running these guest phases (e.g. report)
# Input: FREEBSD_BOOT, a FreeBSD amd64 /boot directory (default /opt/freebsd-boot):
# kernel/kernel, loader (or loader_simp), cdboot, optionally modules/virtio_balloon.ko.
# VTB_KVM=1 uses KVM instead of TCG. Console logs: target/vmtest/<boot>/console.log.
set -eu
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- test
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
if [ "$1" != intree ]; then
	sh kmod/build-kld.sh
	if [ ! -f target/kld/vtballoonrs.ko ]; then
		echo "skipped: the module could not be built here (see above)"
		exit 0
	fi
fi
sh sysctl-tests/guest/build.sh
cargo run -q --release -p vmharness -- "$@"
