#!/bin/sh
# Builds the FreeBSD boot directory the VM harness reads (FREEBSD_BOOT) from
# a FreeBSD source tree the user provides, on a Debian host, with the
# tree's own tools/build/make.py. Nothing of it lands in this repository.
#
#   sh tools/build-test-kernel.sh SRCDIR [debug|generic] [OUTDIR]
#
#   debug    GENERIC-DEBUG (INVARIANTS, WITNESS) without `device
#            virtio_balloon`: the strict kernel `make test` runs on
#            (default OUTDIR /opt/freebsd-boot)
#   generic  GENERIC without `device virtio_balloon`: the kernel to
#            benchmark on (default OUTDIR /opt/freebsd-boot-generic)
#
# OUTDIR gets kernel/kernel, modules/virtio_balloon.ko (the in-tree driver,
# as a module, for comparisons), cdboot and loader_simp (BIOS boot from a
# CD). Object files go to OBJDIR (default /var/tmp/vtb-obj). ARCH is amd64.
#
# Needs (Debian): clang/lld 19 (llvm-19), flex, byacc, libarchive-dev,
# libbz2-dev, python3. Takes about 20 minutes on 2 cores the first time
# (kernel toolchain ~5, kernel ~7, boot loader ~3); later runs reuse OBJDIR.
set -eu
[ $# -ge 1 ] || { sed -n '2,17p' "$0"; exit 2; }
src=$(cd "$1" && pwd)
kind=${2:-debug}
case $kind in
debug) out=${3:-/opt/freebsd-boot}; base=GENERIC-DEBUG; conf=VTBTEST ;;
generic) out=${3:-/opt/freebsd-boot-generic}; base=GENERIC; conf=VTBBENCH ;;
*) echo "error: kind is debug or generic, not $kind" >&2; exit 2 ;;
esac
arch=amd64
obj=${OBJDIR:-/var/tmp/vtb-obj}
llvm=${LLVM_BINDIR:-/usr/lib/llvm-19/bin}
[ -f "$src/sys/$arch/conf/$base" ] || { echo "error: $src has no sys/$arch/conf/$base" >&2; exit 1; }
[ -x "$llvm/clang" ] || { echo "error: no clang in $llvm (apt-get install clang-19 lld-19 llvm-19)" >&2; exit 1; }
for t in flex byacc python3; do
	command -v $t >/dev/null || { echo "error: $t is needed" >&2; exit 1; }
done

# make.py wants nm/objcopy & co. on PATH under their plain names.
tools=$obj/llvm-names
mkdir -p "$tools" "$obj/conf"
for t in nm objcopy objdump ar ranlib strip readelf size strings addr2line; do
	ln -sf "$llvm/llvm-$t" "$tools/$t"
done
PATH=$tools:$PATH
MAKEOBJDIRPREFIX=$obj
export PATH MAKEOBJDIRPREFIX

# The config lives outside the source tree; config(8) finds GENERIC through
# the tree's own conf directory (-I KRNLCONFDIR).
cat > "$obj/conf/$conf" <<EOF
include $base
ident $conf
# The balloon is left to modules: ours, or the in-tree one for comparison.
nodevice virtio_balloon
# No DWARF (ddb's backtraces use the symbol table, and the build is
# faster), hence no CTF either.
nomakeoptions DEBUG
nomakeoptions WITH_CTF
EOF

mk() {
	python3 "$src/tools/build/make.py" \
		--cross-bindir="$llvm" --host-bindir="$llvm" --host-compiler-type=clang \
		TARGET=$arch TARGET_ARCH=$arch \
		WITHOUT_CLANG=yes WITHOUT_LLD=yes WITHOUT_LLDB=yes \
		WITHOUT_CLANG_BOOTSTRAP=yes WITHOUT_LLD_BOOTSTRAP=yes \
		WITHOUT_TESTS=yes WITHOUT_CLEAN=yes "$@"
}

stamp=$obj/kernel-toolchain.done
if [ ! -f "$stamp" ]; then
	echo ">>> kernel toolchain"
	mk -j"$(nproc)" kernel-toolchain
	touch "$stamp"
fi

if [ -n "${SKIP_KERNEL:-}" ]; then echo ">>> kernel $conf: skipped (SKIP_KERNEL)"; else
echo ">>> kernel $conf"
mk -j"$(nproc)" buildkernel KERNCONF=$conf KERNCONFDIR="$obj/conf" MODULES_OVERRIDE=virtio/balloon
fi

echo ">>> boot loader (stand)"
# Only the BIOS CD boot path is needed. The loader and libsa compile with
# -nostdinc against the tree itself, so the build environment of the
# kernel toolchain is enough (a buildworld would walk every directory for
# its headers, and some trees lack a few of them). buildenv refuses -j.
cat > "$obj/build-stand.sh" <<EOF
set -e
for d in libsa32 i386/btx i386/libi386 i386/cdboot i386/loader_simp; do
	make -C "$src/stand/\$d" obj
	make -C "$src/stand/\$d" -j$(nproc) all
done
EOF
mk buildenv WITHOUT_LOADER_LUA=yes WITHOUT_FORTH=yes BUILDENV_SHELL="sh $obj/build-stand.sh"

kobj=$obj$src/$arch.$arch/sys/$conf
sobj=$obj$src/$arch.$arch/stand
mkdir -p "$out/kernel" "$out/modules"
cp "$kobj/kernel" "$out/kernel/kernel"
cp "$kobj/modules$src/sys/modules/virtio/balloon/virtio_balloon.ko" "$out/modules/"
cp "$sobj/i386/cdboot/cdboot" "$out/cdboot"
cp "$sobj/i386/loader_simp/loader_simp" "$out/loader_simp"
echo "boot directory: $out"
ls -l "$out" "$out/kernel" "$out/modules"
