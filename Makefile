# vtballoon-rs: the front door, in the spirit of a FreeBSD module Makefile.
# Portable between BSD make and GNU make: every target is a plain command.
#
#   make              build vtballoonrs.ko for this machine's architecture
#                     (needs FreeBSD headers at SYSDIR); writes under
#                     target/ only, on any host
#   make ARCH=arm64   cross-build it for FreeBSD/arm64 (or ARCH=amd64;
#                     TARGET_ARCH=aarch64 is taken too), against the arm64
#                     headers of SYSDIR: target/kld-arm64/vtballoonrs.ko
#   make load         kldload the module built here
#   make unload       kldunload it
#   make install      the module to KMODDIR and the manual page to MANDIR
#   make install-kld  the module only (then kldxref)
#   make install-man  the manual page only, gzipped as FreeBSD installs pages
#   make test         every test tier this machine can run
#   make vmtest       the in-guest tests under QEMU (needs FREEBSD_BOOT)
#   make vmtest-arm64 the same on FreeBSD/arm64, over virtio-pci and
#                     virtio-mmio (needs FREEBSD_BOOT_ARM64)
#   make vmbench      throughput benchmark, ours against the in-tree driver
#   make vmsoak       the soak (not in make test): VTB_SOAK_S seconds (default 1200) of faults and load
#
# Installing writes into the system: on a host other than FreeBSD it is
# refused unless DESTDIR is set (a staging directory, as for a package).

SYSDIR ?= /usr/src/sys
# Empty: the machine's own architecture (uname -m).
ARCH ?=
TARGET_ARCH ?=
KMODDIR ?= /boot/modules
# Where FreeBSD keeps the section-4 pages of third-party software (ports).
MANDIR ?= /usr/local/share/man/man4
KMOD = vtballoonrs

all: build

build:
	SYSDIR=$(SYSDIR) ARCH=$(ARCH) TARGET_ARCH=$(TARGET_ARCH) sh kmod/build-kld.sh

load:
	kldload ./$$(ARCH=$(ARCH) TARGET_ARCH=$(TARGET_ARCH) sh kmod/build-kld.sh --ko)

unload:
	kldunload $(KMOD)

install: install-kld install-man

install-kld:
	@if [ -z "$(DESTDIR)" ] && [ "$$(uname -s)" != FreeBSD ]; then echo "install: not FreeBSD: set DESTDIR to stage the files" >&2; exit 1; fi
	install -d $(DESTDIR)$(KMODDIR)
	install -m 555 $$(ARCH=$(ARCH) TARGET_ARCH=$(TARGET_ARCH) sh kmod/build-kld.sh --ko) $(DESTDIR)$(KMODDIR)/$(KMOD).ko
	if command -v kldxref >/dev/null; then kldxref $(DESTDIR)$(KMODDIR); fi

install-man:
	@if [ -z "$(DESTDIR)" ] && [ "$$(uname -s)" != FreeBSD ]; then echo "install: not FreeBSD: set DESTDIR to stage the files" >&2; exit 1; fi
	mkdir -p target
	gzip -9cn kmod/$(KMOD).4 > target/$(KMOD).4.gz
	install -d $(DESTDIR)$(MANDIR)
	install -m 444 target/$(KMOD).4.gz $(DESTDIR)$(MANDIR)/$(KMOD).4.gz

test:
	SYSDIR=$(SYSDIR) sh tools/run-tests.sh

vmtest:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh test

vmtest-arm64:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh arm64 test

vmbench:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh bench

vmsoak:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh soak

clean:
	cargo clean

.PHONY: all build load unload install install-kld install-man test vmtest vmtest-arm64 vmbench vmsoak clean
