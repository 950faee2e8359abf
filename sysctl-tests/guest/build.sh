#!/bin/sh
# Builds the static, libc-free FreeBSD test program with Debian's rustc 1.96
# and its library source (core rebuilt for the FreeBSD target).
# ARCH=amd64 (default) writes target/vtbtest, ARCH=arm64 target/vtbtest-arm64.
set -eu
cd "$(dirname "$0")"
case ${ARCH:-amd64} in
amd64 | x86_64) target=x86_64-unknown-freebsd out=vtbtest ;;
arm64 | aarch64) target=aarch64-unknown-freebsd out=vtbtest-arm64 ;;
*)
	echo "error: ARCH=$ARCH: the guest program builds for amd64 or arm64" >&2
	exit 1
	;;
esac
RUSTC=${KLD_RUSTC:-/usr/bin/rustc} RUSTC_BOOTSTRAP=1 \
RUSTFLAGS="-C linker=ld.lld-19 -C link-arg=-static -C link-arg=-nostdlib -C relocation-model=static -C panic=abort" \
	"${KLD_CARGO:-/usr/bin/cargo}" build --release --target "$target" \
	-Z build-std=core -Z build-std-features=compiler-builtins-mem --target-dir ../../target/guest-build
cp "../../target/guest-build/$target/release/vtbtest" "../../target/$out"
echo "built target/$out"
