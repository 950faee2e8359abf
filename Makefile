# vtballoon-rs: the front door, in the spirit of a FreeBSD module Makefile.
# Portable between BSD make and GNU make: every target is a plain command.
#
#   make            build vtballoonrs.ko (needs FreeBSD headers at SYSDIR)
#   make load       kldload the module built here
#   make unload     kldunload it
#   make install    copy it to /boot/modules (KMODDIR)
#   make test       every test tier this machine can run
#   make vmtest     the in-guest tests under QEMU (needs FREEBSD_BOOT)
#   make vmbench    throughput benchmark, ours against the in-tree driver

SYSDIR ?= /usr/src/sys
KMODDIR ?= /boot/modules
KMOD = vtballoonrs

all: build

build:
	SYSDIR=$(SYSDIR) sh kmod/build-kld.sh

load:
	kldload ./target/kld/$(KMOD).ko

unload:
	kldunload $(KMOD)

install:
	install -m 555 target/kld/$(KMOD).ko $(KMODDIR)/$(KMOD).ko
	kldxref $(KMODDIR)

test:
	SYSDIR=$(SYSDIR) sh tools/run-tests.sh

vmtest:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh test

vmbench:
	SYSDIR=$(SYSDIR) sh sysctl-tests/vmtest.sh bench

clean:
	cargo clean

.PHONY: all build load unload install test vmtest vmbench clean
