#!/bin/sh
# `make test`: every tier this machine can run (design.md §3).
#   1. host: fmt, clippy, cargo test (logic against the simulated device,
#      the object audit's own tests, the VM harness's parsers)
#   2. kernel: build vtballoonrs.ko against FreeBSD headers at SYSDIR, lint the
#      kernel glue (clippy of the kernel toolchain, for x86_64-unknown-none)
#      and audit the object
#   3. VM: the in-guest tests under QEMU, given FreeBSD boot files (FREEBSD_BOOT)
# A tier that cannot run says so; none pretends to be another.
set -eu
cd "$(dirname "$0")/.."
SYSDIR=${SYSDIR:-/usr/src/sys}
FREEBSD_BOOT=${FREEBSD_BOOT:-/opt/freebsd-boot}
export SYSDIR FREEBSD_BOOT

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
	ko=target/kld/vtballoonrs.ko
	kernel=${FREEBSD_KERNEL:-$FREEBSD_BOOT/kernel/kernel}
	if [ -f "$kernel" ]; then
		syms=target/kld/kernel-symbols.txt
		nm=$(command -v llvm-nm-19 || command -v nm)
		"$nm" -g --defined-only "$kernel" > "$syms"
		cargo run -q -p koaudit -- --kernel-symbols "$syms" "$ko"
	else
		echo "note: no kernel at $kernel: undefined symbols listed, not checked"
		cargo run -q -p koaudit -- "$ko"
	fi
	tier2=passed
fi

echo "== tier 3: FreeBSD under QEMU"
sh sysctl-tests/vmtest.sh test
echo "== tiers: host passed, kernel $tier2, VM see above"
