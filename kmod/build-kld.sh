#!/bin/sh
# Builds vtballoonrs.ko: the driver crate as a staticlib for the kernel
# target, linked with the C shim into a relocatable object the FreeBSD
# kernel linker loads (design.md §2).
#
# Toolchain: rustc with its library source and RUSTC_BOOTSTRAP=1, because
# core/alloc must be rebuilt for x86_64-unknown-none (soft-float, no red
# zone) with -Z build-std. On Debian: rustc-web cargo-web rust-web-src
# (rustc 1.96). On FreeBSD: `pkg install rust` (ships rust-src) or rustup
# with `rustup component add rust-src`; then RUSTC/CARGO point at it.
#   -C code-model=kernel          the kernel lives in the top 2 GiB
#   -C relocation-model=static    no GOT: the kernel linker has no GOT support
#   -Z plt=yes                    calls to kernel functions as PLT32, not GOTPCREL
#   -C force-frame-pointers=yes   stack traces in ddb/kgdb
set -eu
cd "$(dirname "$0")/.."
SYSDIR=${SYSDIR:-/usr/src/sys}
export SYSDIR
if [ ! -f "$SYSDIR/sys/param.h" ]; then
	echo "skipped: no FreeBSD headers at $SYSDIR (set SYSDIR)"
	exit 0
fi
CARGO=${KLD_CARGO:-/usr/bin/cargo}
RUSTC=${KLD_RUSTC:-/usr/bin/rustc}
if [ ! -x "$CARGO" ] || [ ! -x "$RUSTC" ]; then
	echo "error: need cargo and rustc with library source (Debian: rustc-web cargo-web rust-web-src; set KLD_CARGO/KLD_RUSTC)" >&2
	exit 1
fi
sysroot=$("$RUSTC" --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library/core" ]; then
	echo "error: $RUSTC has no library source (Debian: rust-web-src; rustup: rust-src)" >&2
	exit 1
fi
LD=$(command -v ld.lld-19 || command -v ld.lld || command -v ld)
OBJCOPY=$(command -v llvm-objcopy-19 || command -v llvm-objcopy || command -v objcopy)
NM=$(command -v llvm-nm-19 || command -v llvm-nm || command -v nm)

out=target/kld
build=target/kld-build
mkdir -p "$out"
# LTO over our code, core and compiler_builtins: only what the exported
# entry points reach is kept (a -r link cannot garbage-collect sections).
CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
RUSTC="$RUSTC" RUSTC_BOOTSTRAP=1 \
RUSTFLAGS="-C code-model=kernel -C relocation-model=static -C force-frame-pointers=yes -Z plt=yes -C panic=abort -C force-unwind-tables=no" \
	"$CARGO" rustc -p vtballoon --lib --features kernel --release \
	--target x86_64-unknown-none -Z build-std=core,alloc \
	--target-dir "$build" --crate-type staticlib
lib="$build/x86_64-unknown-none/release/libvtballoon.a"
ko="$out/vtballoonrs.ko"
# A plain -r link pulls from the archive only what the shim (forced in by
# its anchor symbol) references, transitively: not all of core.
"$LD" -m elf_x86_64_fbsd -r -d -T "$SYSDIR/conf/ldscript.kmod.amd64" \
	-u vtbrs_module_anchor -o "$ko.full" "$lib"
# Unwind tables are useless in the kernel (and only the stack-probe helper's
# assembly emits them): drop them. Like kmod.mk with EXPORT_SYMS=NO: keep only what the module defines for the
# kernel linker's sets local, so our symbols never clash with the kernel's
# or another module's.
"$NM" -g --defined-only "$ko.full" | awk '{print $3}' | sort -u > "$out/localize.txt"
"$OBJCOPY" --localize-symbols="$out/localize.txt" --strip-debug \
	--remove-section=.eh_frame --remove-section=.rela.eh_frame "$ko.full" "$ko"
rm -f "$ko.full"
echo "built $ko ($(wc -c < "$ko") bytes)"
echo "undefined symbols (must be exported by the kernel):"
"$NM" -u "$ko" | awk '{print "  " $2}'
