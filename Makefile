# vtballoon-rs: the front door, in the spirit of a FreeBSD module Makefile.
# Portable between BSD make and GNU make: every target is a plain command.
#
#   make              build vtballoonrs.ko (needs FreeBSD headers at SYSDIR);
#                     writes under target/ only, on any host
#   make load         kldload the module built here
#   make unload       kldunload it
#   make install      the module to KMODDIR and the manual page to MANDIR
#   make install-kld  the module only (then kldxref)
#   make install-man  the manual page only, gzipped as FreeBSD installs pages
#   make test         every test tier this machine can run
#   make vmtest       the in-guest tests under QEMU (needs FREEBSD_BOOT)
#   make vmbench      throughput benchmark, ours against the in-tree driver
#
# Installing writes into the system: on a host other than FreeBSD it is
# refused unless DESTDIR is set (a staging directory, as for a package).

SYSDIR ?= /usr/src/sys
KMODDIR ?= /boot/modules
# Where FreeBSD keeps the section-4 pages of third-party software (ports).
MANDIR ?= /usr/local/share/man/man4
KMOD = vtballoonrs

all: build

build:
	SYSDIR=$(SYSDIR) sh kmod/build-kld.sh

load:
	kldload ./target/kld/$(KMOD).ko

unload:
	kldunload $(KMOD)

install: install-kld install-man

install-kld:
	@if [ -z "$(DESTDIR)" ] && [ "$$(uname -s)" != FreeBSD ]; then echo "install: not FreeBSD: set DESTDIR to stage the files" >&2; exit 1; fi
	install -d $(DESTDIR)$(KMODDIR)
	install -m 555 target/kld/$(KMOD).ko $(DESTDIR)$(KMODDIR)/$(KMOD).ko
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

vmbench:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh bench

clean:
	cargo clean

.PHONY: all build load unload install install-kld install-man test vmtest vmbench clean
