#!/bin/sh
# Builds vtballoonrs.ko: the driver crate as a staticlib for the kernel
# target, linked with the C shim into the kld the FreeBSD kernel linker
# loads (design.md §2). Called by `make build` with SYSDIR (and ARCH).
#
# ARCH (or TARGET_ARCH, as in FreeBSD's `make TARGET=arm64
# TARGET_ARCH=aarch64`) picks the kernel: amd64 or arm64 (x86_64 and
# aarch64 are taken too); default the machine's own. SYSDIR must hold that
# architecture's headers ($SYSDIR/<arch>/include). Output: target/kld/ for
# amd64, target/kld-arm64/ for arm64 (KLD_OUT overrides; the cargo build
# directory is KLD_OUT-build). `build-kld.sh --ko` prints the path of the
# module it would build.
#
# Toolchain: rustc with its library source and RUSTC_BOOTSTRAP=1, because
# core/alloc must be rebuilt for the kernel target with -Z build-std. On
# Debian: rustc-web cargo-web rust-web-src (rustc 1.96, /usr/bin/cargo and
# /usr/bin/rustc). On FreeBSD the same build works with `pkg install rust`
# (its sysroot ships the library source) or with rustup (`rustup component
# add rust-src`, then KLD_CARGO/KLD_RUSTC pointing at the toolchain's
# cargo/rustc); clang and ld.lld come with the base system, SYSDIR is the
# usual /usr/src/sys.
#
# amd64: target x86_64-unknown-none (soft-float, no red zone); the kld is an
# `ld -r` relocatable object (kmod.mk with __KLD_SHARED=no).
#   -C code-model=kernel          the kernel lives in the top 2 GiB
#   -C relocation-model=static    no GOT: the kernel linker has no GOT support
#   -Z plt=yes                    calls to kernel functions as PLT32, not GOTPCREL
# arm64: target aarch64-unknown-none-softfloat (no FP/SIMD registers, as
# kern.mk's -mgeneral-regs-only); the kld is a shared object (kmod.mk with
# __KLD_SHARED=yes: `ld -r`, then `ld -Bshareable -znotext -znorelro`), whose
# RELATIVE, ABS64, GLOB_DAT and JUMP_SLOT relocations the kernel linker
# applies (sys/arm64/arm64/elf_machdep.c).
#   -C relocation-model=pic       kernel symbols through the GOT/PLT of the
#                                 shared object, as kmod.mk's -fPIC
#   -Z fixed-x18                  x18 is the kernel's per-CPU pointer
#                                 (kern.mk's -ffixed-x18): never allocated
#   --no-relax (link)             as kmod.mk: lld's adrp relaxation breaks VNET
# Both:
#   -C force-frame-pointers=yes   stack traces in ddb/kgdb
#   -C force-unwind-tables=no     no .eh_frame: the kernel never unwinds
# The C shim (module metadata, newbus method table, wrappers for kernel
# macros) is compiled by bindings/build.rs with the kernel's flags and ends
# up inside the staticlib: this script has one archive to link.
#
# `build-kld.sh --lint` instead lints the kernel glue (the only code with
# FFI and `unsafe`, compiled for the kernel target alone) with the clippy of
# the same toolchain: -D warnings, undocumented_unsafe_blocks denied. Debian:
# rust-web-clippy (/usr/bin/cargo-clippy, clippy-driver); elsewhere
# KLD_CLIPPY names the toolchain's cargo-clippy. No clippy, or one built for
# another rustc, is an error: the lint is part of the kernel tier.
set -eu
cd "$(dirname "$0")/.."
SYSDIR=${SYSDIR:-/usr/src/sys}
export SYSDIR
arch=${ARCH:-${TARGET_ARCH:-}}
[ -n "$arch" ] || arch=$(uname -m)
case $arch in
amd64 | x86_64)
	arch=amd64
	target=x86_64-unknown-none
	rustflags="-C code-model=kernel -C relocation-model=static -Z plt=yes"
	;;
arm64 | aarch64)
	arch=arm64
	target=aarch64-unknown-none-softfloat
	rustflags="-C relocation-model=pic -Z fixed-x18"
	;;
*)
	echo "error: ARCH=$arch: the module builds for amd64 or arm64" >&2
	exit 1
	;;
esac
rustflags="$rustflags -C force-frame-pointers=yes -C panic=abort -C force-unwind-tables=no"
if [ "$arch" = amd64 ]; then
	out=${KLD_OUT:-target/kld}
else
	out=${KLD_OUT:-target/kld-$arch}
fi
build=$out-build
ko="$out/vtballoonrs.ko"
if [ "${1:-}" = --ko ]; then
	echo "$ko"
	exit 0
fi
if [ ! -f "$SYSDIR/sys/param.h" ] || [ ! -d "$SYSDIR/$arch/include" ]; then
	echo "skipped: no FreeBSD $arch headers at $SYSDIR ($SYSDIR/$arch/include; set SYSDIR); vtballoonrs.ko for $arch not built"
	exit 0
fi
CARGO=${KLD_CARGO:-/usr/bin/cargo}
RUSTC=${KLD_RUSTC:-/usr/bin/rustc}
if [ ! -x "$CARGO" ] || [ ! -x "$RUSTC" ]; then
	echo "error: need cargo and rustc with library source at $CARGO, $RUSTC (Debian: rustc-web cargo-web rust-web-src; FreeBSD: pkg install rust; set KLD_CARGO/KLD_RUSTC)" >&2
	exit 1
fi
sysroot=$("$RUSTC" --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
	echo "error: $RUSTC has no library source in $sysroot/lib/rustlib/src (Debian: rust-web-src; rustup: rustup component add rust-src)" >&2
	exit 1
fi
if [ "${1:-}" = --lint ]; then
	CLIPPY=${KLD_CLIPPY:-$(dirname "$CARGO")/cargo-clippy}
	driver=$(dirname "$CLIPPY")/clippy-driver
	if [ ! -x "$CLIPPY" ] || [ ! -x "$driver" ]; then
		echo "error: no clippy for $RUSTC at $CLIPPY (Debian: apt-get install rust-web-clippy; or set KLD_CLIPPY): kernel glue not linted" >&2
		exit 1
	fi
	if [ "$("$driver" --rustc --version)" != "$("$RUSTC" --version)" ]; then
		echo "error: $driver is for $("$driver" --rustc --version), not $("$RUSTC" --version) (set KLD_CLIPPY)" >&2
		exit 1
	fi
	# cargo-clippy runs $CARGO with its own clippy-driver as the wrapper, so
	# no rustup proxy earlier in PATH takes part.
	clippy_dir=target/kld-clippy
	[ "$arch" = amd64 ] || clippy_dir=target/kld-clippy-$arch
	CARGO="$CARGO" RUSTC="$RUSTC" RUSTC_BOOTSTRAP=1 RUSTFLAGS="$rustflags" \
		"$CLIPPY" clippy -p vtballoon --lib --features kernel \
		--target "$target" -Z build-std=core,alloc \
		--target-dir "$clippy_dir" -- -D warnings -D clippy::undocumented_unsafe_blocks
	echo "kernel glue linted: clippy $("$driver" --version | awk '{print $2}') for $target"
	exit 0
fi
tool() {
	for t in "$@"; do
		if command -v "$t" >/dev/null 2>&1; then
			command -v "$t"
			return 0
		fi
	done
	echo "error: none of $* found" >&2
	exit 1
}
LD=$(tool ld.lld-19 ld.lld)
AR=$(tool llvm-ar-19 llvm-ar ar)
NM=$(tool llvm-nm-19 llvm-nm nm)
OBJCOPY=$(tool llvm-objcopy-19 llvm-objcopy objcopy)
READELF=$(tool llvm-readelf-19 llvm-readelf readelf)

mkdir -p "$out"
# Fat LTO over our code, core and alloc: only what the exported entry points
# reach is kept (a -r link cannot garbage-collect sections).
# compiler_builtins stays out of LTO; one function per codegen unit (as in
# Rust's own sysroot build) lets the archive link pull single builtins
# instead of the whole library (libm, f128 arithmetic).
CARGO_PROFILE_RELEASE_LTO=fat \
RUSTC="$RUSTC" RUSTC_BOOTSTRAP=1 \
RUSTFLAGS="$rustflags" \
	"$CARGO" rustc -p vtballoon --lib --features kernel --release \
	--target "$target" -Z build-std=core,alloc \
	--config 'profile.release.package.vtballoon.codegen-units=1' \
	--config 'profile.release.package.compiler_builtins.codegen-units=10000' \
	--target-dir "$build" --crate-type staticlib
lib="$build/$target/release/libvtballoon.a"
work="$out/link"
rm -rf "$work"
mkdir -p "$work"
cp "$lib" "$work/libvtballoon.a"
# compiler_builtins defines weak memcpy & co. for targets without a libc.
# The kernel exports these (libkern, tuned for it): drop the archive
# members that define them, so the module's references stay undefined and
# the kernel linker binds them to the kernel's. (The kernel has no bcmp
# symbol; compiler_builtins' bcmp stays available should LLVM emit a call.)
kernel_mem='^(memcpy|memmove|memset|memcmp|strlen)$'
"$NM" -A --defined-only "$work/libvtballoon.a" 2>/dev/null |
	awk -v re="$kernel_mem" '$NF ~ re { n = split($1, f, ":"); print f[n - 1] }' |
	sort -u > "$work/kernel-provided.txt"
while read -r member; do
	"$AR" d "$work/libvtballoon.a" "$member"
done < "$work/kernel-provided.txt"
# A plain -r link pulls from the archive only what the shim (forced in by
# its anchor symbol) references, transitively: not all of core. On amd64
# with the ldscript kmod.mk uses there; arm64 has none.
case $arch in
amd64) "$LD" -m elf_x86_64_fbsd -r -d -T "$SYSDIR/conf/ldscript.kmod.amd64" \
	-u vtbrs_module_anchor -o "$work/vtballoonrs.full" "$work/libvtballoon.a" ;;
arm64) "$LD" -m aarch64elf --no-relax -r \
	-u vtbrs_module_anchor -o "$work/vtballoonrs.full" "$work/libvtballoon.a" ;;
esac
# Like kmod.mk with EXPORT_SYMS=NO (kmod_syms.awk with an empty export list,
# then objcopy -L): every symbol the module defines becomes local, so none
# clashes with the kernel's or another module's (the kernel linker finds the
# module through its linker sets, not by name). Debug info, unwind tables
# (only hand-written assembly could still emit them) and LLVM's embedded
# bitcode are of no use in the kernel.
"$NM" -g --defined-only "$work/vtballoonrs.full" | awk '{print $3}' | sort -u > "$work/localize.txt"
kld="$ko"
[ "$arch" = amd64 ] || kld="$work/vtballoonrs.kld"
"$OBJCOPY" --localize-symbols="$work/localize.txt" --strip-debug \
	--remove-section=.eh_frame --remove-section=.rela.eh_frame \
	--remove-section=.llvmbc --remove-section=.llvmcmd \
	--remove-section=.llvm_addrsig \
	"$work/vtballoonrs.full" "$kld"
# arm64: the shared object, as kmod.mk links it. Its dynamic symbols are the
# kernel's functions and data it uses (undefined) and the linker sets'
# __start_/__stop_ bounds, which the kernel linker looks up by name.
if [ "$arch" = arm64 ]; then
	"$LD" -m aarch64elf -Bshareable -znotext -znorelro --no-relax --build-id=sha1 \
		-o "$ko" "$kld"
	"$OBJCOPY" --strip-debug "$ko"
fi
# Fail fast on what kldload would refuse (tools/koaudit does the full audit).
case $arch in
amd64) allowed='^R_X86_64_(NONE|64|PC32|PLT32|32S)$' ;;
arm64) allowed='^R_AARCH64_(NONE|ABS64|GLOB_DAT|JUMP_SLOT|RELATIVE|IRELATIVE)$' ;;
esac
bad=$("$READELF" -r -W "$ko" | awk -v ok="$allowed" '$3 ~ /^R_(X86_64|AARCH64)_/ && $3 !~ ok {print $3}' | sort -u)
if [ -n "$bad" ]; then
	echo "error: $ko has relocations the kernel linker refuses: $bad" >&2
	exit 1
fi
for set in set_modmetadata_set set_sysinit_set set_sysuninit_set; do
	if ! "$READELF" -S -W "$ko" | grep -q " $set "; then
		echo "error: $ko has no $set section (module metadata missing)" >&2
		exit 1
	fi
done
echo "built $ko ($(wc -c < "$ko") bytes)"
echo "undefined symbols (the kernel must export them; __start_/__stop_set_* are the kernel linker's):"
case $arch in
amd64) "$NM" -u "$ko" | awk '{print "  " $2}' ;;
arm64) "$NM" -D -u "$ko" | awk '{print "  " $2}' ;;
esac
