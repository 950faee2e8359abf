#!/bin/sh
# `make test`: every tier this machine can run (design.md §3).
#   1. host: fmt, clippy, cargo test (logic against the simulated device,
#      the object audit's own tests, the VM harness's parsers)
#   2. kernel: build vtballoonrs.ko against FreeBSD headers at SYSDIR, lint the
#      kernel glue (clippy of the kernel toolchain, for x86_64-unknown-none)
#      and audit the object; the same for arm64 against SYSDIR_ARM64's arm64
#      headers (aarch64-unknown-none-softfloat); and the amd64 module built
#      and audited against a second tree's headers (SYSDIR_ALT: 14.0 where
#      SYSDIR is 14.2), as the KPI it uses is the same across 14.x
#   3. VM: the in-guest tests under QEMU, given FreeBSD boot files
#      (FREEBSD_BOOT); then on arm64 (FREEBSD_BOOT_ARM64), over virtio-pci
#      and virtio-mmio
# A tier that cannot run says so; none pretends to be another.
set -eu
cd "$(dirname "$0")/.."
SYSDIR=${SYSDIR:-/usr/src/sys}
FREEBSD_BOOT=${FREEBSD_BOOT:-/opt/freebsd-boot}
FREEBSD_BOOT_ARM64=${FREEBSD_BOOT_ARM64:-/opt/freebsd-boot-arm64}
# arm64 headers: SYSDIR's when it has them (a FreeBSD/arm64 machine), else
# the 14.0 tree this project's arm64 kernels are built from.
if [ -z "${SYSDIR_ARM64:-}" ]; then
	SYSDIR_ARM64=/usr/src-14.0/sys
	[ ! -d "$SYSDIR/arm64/include" ] || SYSDIR_ARM64=$SYSDIR
fi
SYSDIR_ALT=${SYSDIR_ALT:-/usr/src-14.0/sys}
export SYSDIR FREEBSD_BOOT FREEBSD_BOOT_ARM64 SYSDIR_ARM64
nm=$(command -v llvm-nm-19 || command -v nm)

# audit KO KERNEL: koaudit, against the kernel's symbols when it exists.
audit() {
	if [ -f "$2" ]; then
		syms="${1%.ko}-kernel-symbols.txt"
		"$nm" -g --defined-only "$2" > "$syms"
		cargo run -q -p koaudit -- --kernel-symbols "$syms" "$1"
	else
		echo "note: no kernel at $2: undefined symbols listed, not checked"
		cargo run -q -p koaudit -- "$1"
	fi
}

echo "== tier 1: host tests"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

echo "== tier 2: kernel build and object audit"
if [ ! -f "$SYSDIR/sys/param.h" ]; then
	echo "skipped: no FreeBSD headers at $SYSDIR (set SYSDIR)"
	tier2=skipped
else
	sh kmod/build-kld.sh
	# The kernel glue (FFI, every `unsafe`) is only compiled for the kernel
	# target: lint it there, with the kernel toolchain's clippy (a missing
	# clippy fails the tier, as a lint warning does).
	sh kmod/build-kld.sh --lint
	audit target/kld/vtballoonrs.ko "${FREEBSD_KERNEL:-$FREEBSD_BOOT/kernel/kernel}"
	tier2=passed
fi
echo "== tier 2: arm64 kernel build and object audit"
if [ ! -d "$SYSDIR_ARM64/arm64/include" ]; then
	echo "skipped: no FreeBSD arm64 headers at $SYSDIR_ARM64 (set SYSDIR_ARM64)"
	tier2_arm64=skipped
else
	ARCH=arm64 SYSDIR=$SYSDIR_ARM64 sh kmod/build-kld.sh
	ARCH=arm64 SYSDIR=$SYSDIR_ARM64 sh kmod/build-kld.sh --lint
	audit target/kld-arm64/vtballoonrs.ko "$FREEBSD_BOOT_ARM64/kernel/kernel"
	tier2_arm64=passed
fi
echo "== tier 2: amd64 module against a second tree's headers ($SYSDIR_ALT)"
if [ ! -f "$SYSDIR_ALT/sys/param.h" ] || [ ! -d "$SYSDIR_ALT/amd64/include" ]; then
	echo "skipped: no FreeBSD amd64 headers at $SYSDIR_ALT (set SYSDIR_ALT)"
	tier2_alt=skipped
elif [ "$(realpath "$SYSDIR_ALT")" = "$(realpath "$SYSDIR")" ]; then
	echo "skipped: SYSDIR_ALT is SYSDIR"
	tier2_alt=skipped
else
	KLD_OUT=target/kld-alt SYSDIR=$SYSDIR_ALT sh kmod/build-kld.sh
	# No kernel of that tree at hand for amd64: the symbols are those of
	# the kernel tier 3 boots, whose KPI the module was checked against.
	audit target/kld-alt/vtballoonrs.ko "${FREEBSD_KERNEL:-$FREEBSD_BOOT/kernel/kernel}"
	tier2_alt=passed
fi

# Both VM tiers run even when the first fails; make test fails after them.
echo "== tier 3: FreeBSD under QEMU"
vm=passed
sh sysctl-tests/vmtest.sh test || vm=failed
echo "== tier 3: FreeBSD/arm64 under QEMU (virt, virtio-pci and virtio-mmio)"
vm_arm64=passed
sh sysctl-tests/vmtest.sh arm64 test || vm_arm64=failed
echo "== tiers: host passed, kernel $tier2 (arm64 $tier2_arm64, amd64 on $SYSDIR_ALT $tier2_alt), VM amd64 $vm, arm64 $vm_arm64 (skips: see above)"
[ "$vm" = passed ] && [ "$vm_arm64" = passed ]
