#!/bin/sh
# Builds the FreeBSD boot directory the VM harness reads (FREEBSD_BOOT) from
# a FreeBSD source tree the user provides, on a Debian host, with the
# tree's own tools/build/make.py. Nothing of it lands in this repository.
#
#   sh tools/build-test-kernel.sh [-a amd64|arm64] SRCDIR [debug|generic] [OUTDIR]
#
#   -a ARCH  amd64 (default) or arm64
#   debug    INVARIANTS and WITNESS, without `device virtio_balloon`: the
#            strict kernel `make test` runs on. amd64: GENERIC-DEBUG;
#            arm64 (no GENERIC-DEBUG in 14.0): GENERIC + INVARIANTS,
#            INVARIANT_SUPPORT, WITNESS, WITNESS_SKIPSPIN
#   generic  GENERIC without `device virtio_balloon`: the kernel to
#            benchmark on
#
#   default OUTDIR  amd64: /opt/freebsd-boot, /opt/freebsd-boot-generic
#                   arm64: /opt/freebsd-boot-arm64, /opt/freebsd-boot-arm64-generic
#
# OUTDIR gets kernel/kernel and modules/virtio_balloon.ko (the in-tree
# driver, as a module, for comparisons), plus the boot loader: amd64 cdboot
# and loader_simp (BIOS boot from a CD); arm64 loader.efi (stand/efi with
# the simple interpreter, which reads /boot/loader.rc like loader_simp).
# Object files go to OBJDIR (default /var/tmp/vtb-obj, arm64
# /var/tmp/vtb-obj-arm64).
#
# Compiler (LLVM_BINDIR, used as host and cross compiler): amd64 default
# /usr/lib/llvm-19/bin; arm64 default /usr/lib/llvm-16/bin (apt-get install
# clang-16 lld-16 llvm-16), since the arm64 tree at hand is 14.0
# (ilnp/ilnp-freebsd14), whose sys/arm64/arm64/vfp.c clang 19 rejects
# under -mgeneral-regs-only; 14.0 shipped clang 16.
#
# Fix-ups (FIXUP_SRC, default /usr/src): trees older than 14.2 lack two glibc
# fixes (fts_compare constness) in contrib/mandoc/config.h and
# lib/libpmc/pmu-events/jevents.c, bootstrap tools built with the host
# compiler. When SRCDIR's copy lacks the fix, the host compiler reads
# FIXUP_SRC's copy in its place through a clang VFS overlay (a wrapper in
# OBJDIR adds -ivfsoverlay); SRCDIR itself is never modified. The script
# says so when it does it. FIXUP_SRC=none refuses instead.
#
# Needs (Debian): clang/lld/llvm of LLVM_BINDIR, flex, byacc,
# libarchive-dev, libbz2-dev, python3. On 2 cores the first build takes
# about 20 minutes for amd64 (kernel toolchain ~5, kernel ~7, boot loader
# ~3) and 12 for arm64 from the 14.0 tree; later runs reuse OBJDIR.
# SKIP_KERNEL=1 rebuilds only the boot loader.
set -eu
usage() { sed -n '2,44p' "$0"; exit 2; }
arch=amd64
while getopts a:h opt; do
	case $opt in
	a) arch=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
src=$(cd "$1" && pwd)
kind=${2:-debug}
case $arch in
amd64)
	tarch=amd64
	llvm=${LLVM_BINDIR:-/usr/lib/llvm-19/bin}
	obj=${OBJDIR:-/var/tmp/vtb-obj}
	defout=/opt/freebsd-boot ;;
arm64)
	tarch=aarch64
	llvm=${LLVM_BINDIR:-/usr/lib/llvm-16/bin}
	obj=${OBJDIR:-/var/tmp/vtb-obj-arm64}
	defout=/opt/freebsd-boot-arm64 ;;
*) echo "error: ARCH is amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
case $kind in
debug) out=${3:-$defout}; conf=VTBTEST ;;
generic) out=${3:-$defout-generic}; conf=VTBBENCH ;;
*) echo "error: kind is debug or generic, not $kind" >&2; exit 2 ;;
esac
# The kernel config's base and what it adds.
case $arch/$kind in
amd64/debug) base=GENERIC-DEBUG; extra= ;;
arm64/debug)
	base=GENERIC
	extra='# GENERIC-DEBUG does not exist for arm64 in 14.0: its debug options.
options 	INVARIANTS
options 	INVARIANT_SUPPORT
options 	WITNESS
options 	WITNESS_SKIPSPIN' ;;
*) base=GENERIC; extra= ;;
esac
[ -f "$src/sys/$arch/conf/$base" ] || { echo "error: $src has no sys/$arch/conf/$base" >&2; exit 1; }
[ -x "$llvm/clang" ] || { echo "error: no clang in $llvm (apt-get install clang, lld and llvm of that version)" >&2; exit 1; }
for t in flex byacc python3; do
	command -v $t >/dev/null || { echo "error: $t is needed" >&2; exit 1; }
done
echo ">>> $arch $kind kernel from $src with $llvm/clang ($("$llvm/clang" --version | head -1))"

# make.py wants nm/objcopy & co. on PATH under their plain names.
tools=$obj/llvm-names-$(basename "$(dirname "$llvm")")
confdir=$obj/conf/$arch
mkdir -p "$tools" "$confdir"
for t in nm objcopy objdump ar ranlib strip readelf size strings addr2line; do
	ln -sf "$llvm/llvm-$t" "$tools/$t"
done
PATH=$tools:$PATH
MAKEOBJDIRPREFIX=$obj
export PATH MAKEOBJDIRPREFIX

# The glibc fix-ups (see the top). Each file the tree lacks the fix in is
# mapped to FIXUP_SRC's copy for the host compiler only.
hostbin=$llvm
fixsrc=${FIXUP_SRC:-/usr/src}
overlay=$obj/glibc-fixups.yaml
entries=
for f in contrib/mandoc/config.h lib/libpmc/pmu-events/jevents.c; do
	[ -f "$src/$f" ] || continue
	grep -q __GLIBC__ "$src/$f" && continue
	if [ "$fixsrc" = none ] || ! grep -q __GLIBC__ "$fixsrc/$f" 2>/dev/null; then
		echo "error: $src/$f lacks the glibc fts_compare fix and FIXUP_SRC=$fixsrc has no fixed copy" >&2
		echo "       (point FIXUP_SRC at a 14.2 or later tree)" >&2
		exit 1
	fi
	echo "!!! FIX-UP: $src/$f lacks the glibc fts_compare fix:"
	echo "!!!         the host compiler reads $fixsrc/$f in its place ($src is not modified)"
	entries="$entries${entries:+,}
  { \"type\": \"file\", \"name\": \"$src/$f\", \"external-contents\": \"$fixsrc/$f\" }"
done
if [ -n "$entries" ]; then
	printf '{ "version": 0, "roots": [%s ] }\n' "$entries" > "$overlay"
	hostbin=$obj/host-cc
	mkdir -p "$hostbin"
	printf '#!/bin/sh\nexec "%s/clang" -ivfsoverlay "%s" "$@"\n' "$llvm" "$overlay" > "$hostbin/clang"
	chmod +x "$hostbin/clang"
	ln -sf "$llvm/clang++" "$hostbin/clang++"
	ln -sf "$llvm/clang-cpp" "$hostbin/clang-cpp"
	echo "!!!         overlay $overlay, host compiler $hostbin/clang"
fi

# The config lives outside the source tree; config(8) finds GENERIC through
# the tree's own conf directory (-I KRNLCONFDIR).
cat > "$confdir/$conf" <<EOF
include $base
ident $conf
$extra
# The balloon is left to modules: ours, or the in-tree one for comparison.
nodevice virtio_balloon
# No DWARF (ddb's backtraces use the symbol table, and the build is
# faster), hence no CTF either.
nomakeoptions DEBUG
nomakeoptions WITH_CTF
EOF

mk() {
	python3 "$src/tools/build/make.py" \
		--cross-bindir="$llvm" --host-bindir="$hostbin" --host-compiler-type=clang \
		TARGET=$arch TARGET_ARCH=$tarch \
		WITHOUT_CLANG=yes WITHOUT_LLD=yes WITHOUT_LLDB=yes \
		WITHOUT_CLANG_BOOTSTRAP=yes WITHOUT_LLD_BOOTSTRAP=yes \
		WITHOUT_TESTS=yes WITHOUT_CLEAN=yes "$@"
}

stamp=$obj/kernel-toolchain.$arch$(echo "$src" | tr / .).done
if [ ! -f "$stamp" ]; then
	echo ">>> kernel toolchain"
	mk -j"$(nproc)" kernel-toolchain
	touch "$stamp"
fi

if [ -n "${SKIP_KERNEL:-}" ]; then echo ">>> kernel $conf: skipped (SKIP_KERNEL)"; else
echo ">>> kernel $conf"
mk -j"$(nproc)" buildkernel KERNCONF=$conf KERNCONFDIR="$confdir" MODULES_OVERRIDE=virtio/balloon
fi

echo ">>> boot loader (stand)"
# Only what boots from a CD is needed: amd64 the BIOS path (cdboot,
# loader_simp), arm64 the EFI loader with the simple interpreter (libfdt
# for the device tree QEMU's virt machine passes). The loader and libsa
# compile with -nostdinc against the tree itself, so the build environment
# of the kernel toolchain is enough (a buildworld would walk every
# directory for its headers, and some trees lack a few of them). buildenv
# refuses -j.
case $arch in
amd64) dirs="libsa32 i386/btx i386/libi386 i386/cdboot i386/loader_simp" ;;
arm64) dirs="libsa fdt efi/libefi efi/fdt efi/loader_simp" ;;
esac
cat > "$obj/build-stand.sh" <<EOF
set -e
for d in $dirs; do
	make -C "$src/stand/\$d" obj
	make -C "$src/stand/\$d" -j$(nproc) all
done
EOF
mk buildenv WITHOUT_LOADER_LUA=yes WITHOUT_FORTH=yes BUILDENV_SHELL="sh $obj/build-stand.sh"

kobj=$obj$src/$arch.$tarch/sys/$conf
sobj=$obj$src/$arch.$tarch/stand
mkdir -p "$out/kernel" "$out/modules"
cp "$kobj/kernel" "$out/kernel/kernel"
cp "$kobj/modules$src/sys/modules/virtio/balloon/virtio_balloon.ko" "$out/modules/"
case $arch in
amd64)
	cp "$sobj/i386/cdboot/cdboot" "$out/cdboot"
	cp "$sobj/i386/loader_simp/loader_simp" "$out/loader_simp" ;;
arm64)
	cp "$sobj/efi/loader_simp/loader_simp.efi" "$out/loader.efi" ;;
esac
echo "boot directory: $out"
ls -l "$out" "$out/kernel" "$out/modules"
