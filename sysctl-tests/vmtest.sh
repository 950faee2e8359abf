#!/bin/sh
# Tier 3: vtballoonrs in a real FreeBSD kernel under QEMU (design.md §3).
#   sh sysctl-tests/vmtest.sh test     the in-guest checks, every test boot (make vmtest)
#   sh sysctl-tests/vmtest.sh test NAME...  only the test boots named (basic, pressure, ...)
#   sh sysctl-tests/vmtest.sh bench    throughput, ours against the in-tree driver (make vmbench)
#   sh sysctl-tests/vmtest.sh soak     the soak, VTB_SOAK_S seconds (default 1200; make vmsoak)
#   sh sysctl-tests/vmtest.sh intree   the in-tree virtio_balloon.ko only (no vtballoonrs.ko needed)
#   sh sysctl-tests/vmtest.sh PHASE... one boot running these guest phases (e.g. report)
#   sh sysctl-tests/vmtest.sh arm64 [test [NAME...]]
#                                      FreeBSD/arm64 on QEMU virt (UEFI): basic, pressure,
#                                      report, lifecycle over virtio-pci, then virtio-mmio
#   sh sysctl-tests/vmtest.sh arm64 [--transport mmio] PHASE...
# Input: FREEBSD_BOOT, a FreeBSD amd64 /boot directory (default /opt/freebsd-boot):
# kernel/kernel, loader (or loader_simp), cdboot, optionally modules/virtio_balloon.ko.
# arm64: FREEBSD_BOOT_ARM64 (default /opt/freebsd-boot-arm64): kernel/kernel,
# loader.efi, optionally modules/virtio_balloon.ko (tools/build-test-kernel.sh
# -a arm64 makes one); the module is built against SYSDIR_ARM64 (default
# SYSDIR when it has arm64 headers, else /usr/src-14.0/sys).
# The bench takes FREEBSD_BOOT_GENERIC (default /opt/freebsd-boot-generic) when
# FREEBSD_BOOT is not set; VTB_BENCH_REPS, VTB_BENCH_SIZES, VTB_BENCH_VARIANTS,
# VTB_BENCH_EXTRAS choose what it runs (see the sysctl-tests README).
# VTB_KVM=1 uses KVM instead of TCG; VTB_CPUS sets the vCPUs (default 2). Console logs: target/vmtest/<boot>/console.log
# (arm64: target/vmtest-arm64/<boot>/console.log).
set -eu
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- test
if [ "$1" = arm64 ]; then
	shift
	[ $# -gt 0 ] || set -- test
	FREEBSD_BOOT_ARM64=${FREEBSD_BOOT_ARM64:-/opt/freebsd-boot-arm64}
	export FREEBSD_BOOT_ARM64
	if [ ! -f "$FREEBSD_BOOT_ARM64/kernel/kernel" ] || [ ! -f "$FREEBSD_BOOT_ARM64/loader.efi" ]; then
		echo "skipped: no FreeBSD/arm64 boot files at $FREEBSD_BOOT_ARM64 (kernel/kernel, loader.efi)"
		exit 0
	fi
	for tool in qemu-system-aarch64 xorriso mkfs.fat mmd mcopy; do
		if ! command -v "$tool" >/dev/null; then
			echo "error: $tool is needed (sh tools/install-deps.sh)" >&2
			exit 1
		fi
	done
	SYSDIR=${SYSDIR:-/usr/src/sys}
	if [ -z "${SYSDIR_ARM64:-}" ]; then
		SYSDIR_ARM64=/usr/src-14.0/sys
		[ ! -d "$SYSDIR/arm64/include" ] || SYSDIR_ARM64=$SYSDIR
	fi
	if [ "$1" != intree ]; then
		ARCH=arm64 SYSDIR=$SYSDIR_ARM64 sh kmod/build-kld.sh
		if [ ! -f target/kld-arm64/vtballoonrs.ko ]; then
			echo "skipped: the arm64 module could not be built here (see above)"
			exit 0
		fi
	fi
	ARCH=arm64 sh sysctl-tests/guest/build.sh
	exec cargo run -q --release -p vmharness -- --arch arm64 "$@"
fi
# The bench runs on a GENERIC kernel when there is one (the default test
# kernel has INVARIANTS and WITNESS, which is not what users run).
GENERIC=${FREEBSD_BOOT_GENERIC:-/opt/freebsd-boot-generic}
if [ "$1" = bench ] && [ -z "${FREEBSD_BOOT:-}" ] && [ -f "$GENERIC/kernel/kernel" ]; then
	FREEBSD_BOOT=$GENERIC
	echo "bench: GENERIC kernel at $FREEBSD_BOOT (set FREEBSD_BOOT for another)"
fi
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
