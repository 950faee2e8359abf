#!/bin/sh
# Builds the static, libc-free FreeBSD amd64 test program with Debian's rustc
# 1.96 and its library source (core rebuilt for the FreeBSD target).
set -eu
cd "$(dirname "$0")"
RUSTC=${KLD_RUSTC:-/usr/bin/rustc} RUSTC_BOOTSTRAP=1 \
RUSTFLAGS="-C linker=ld.lld-19 -C link-arg=-static -C link-arg=-nostdlib -C relocation-model=static -C panic=abort" \
	"${KLD_CARGO:-/usr/bin/cargo}" build --release --target x86_64-unknown-freebsd \
	-Z build-std=core -Z build-std-features=compiler-builtins-mem --target-dir ../../target/guest-build
cp ../../target/guest-build/x86_64-unknown-freebsd/release/vtbtest ../../target/vtbtest
echo "built target/vtbtest"
