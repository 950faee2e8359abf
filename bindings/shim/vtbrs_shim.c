/*
 * vtballoon-rs: C side of the kld (see vtbrs_shim.h). Only module
 * metadata, the kobj method table, one-line wrappers of macros and static
 * inlines, and small functions on the page daemon's per-domain state
 * (whose layout only the kernel headers know) live here; the driver
 * itself is Rust (kmod/src/freebsd).
 */
#include <sys/param.h>
#include <sys/systm.h>
#include <sys/kernel.h>
#include <sys/malloc.h>
#include <sys/module.h>
#include <sys/bus.h>
#include <sys/lock.h>
#include <sys/mutex.h>
#include <sys/sx.h>
#include <sys/proc.h>
#include <sys/callout.h>
#include <sys/taskqueue.h>
#include <sys/pidctrl.h>

#include <vm/vm.h>
#include <vm/vm_param.h>
#include <vm/vm_page.h>
#include <vm/vm_phys.h>
#include <vm/vm_pagequeue.h>

#include <machine/cpu.h>
#if defined(__aarch64__)
#include <machine/armreg.h>
#endif

#include <dev/virtio/virtio.h>

#include "virtio_if.h"
#include "vtbrs_shim.h"

MALLOC_DEFINE(M_VTBRS, "vtballoonrs", "VirtIO balloon driver (Rust)");

VIRTIO_SIMPLE_PNPINFO(vtballoonrs, VIRTIO_ID_BALLOON,
    "VirtIO Balloon Adapter (Rust)");

/*
 * Probe below the in-tree driver (BUS_PROBE_DEFAULT): on a kernel with
 * `device virtio_balloon` (GENERIC) the in-tree driver keeps the device
 * until the administrator moves it:
 *	kldload vtballoonrs
 *	devctl set driver -f vtballoon0 vtballoonrs
 * and back with `devctl set driver -f vtballoonrs0 vtballoon`. With the
 * in-tree driver as a module: `kldunload virtio_balloon; kldload vtballoonrs`.
 * devctl attaches outside virtio_pci's own probe-and-attach, which would set
 * DRIVER_OK and call VIRTIO_ATTACH_COMPLETED: the Rust side notices and does
 * both itself (see start_check in kmod/src/freebsd/driver.rs).
 */
static int
vtbrs_probe(device_t dev)
{
	int rc;

	rc = VIRTIO_SIMPLE_PROBE(dev, vtballoonrs);
	return (rc == BUS_PROBE_DEFAULT ? BUS_PROBE_LOW_PRIORITY : rc);
}

static device_method_t vtbrs_methods[] = {
	DEVMETHOD(device_probe,			vtbrs_probe),
	DEVMETHOD(device_attach,		vtbrs_rs_attach),
	DEVMETHOD(device_detach,		vtbrs_rs_detach),
	DEVMETHOD(virtio_attach_completed,	vtbrs_rs_attach_completed),
	DEVMETHOD(virtio_config_change,		vtbrs_rs_config_change),
	DEVMETHOD_END
};

static driver_t vtbrs_driver = {
	"vtballoonrs",
	vtbrs_methods,
	sizeof(struct vtbrs_softc)
};

VIRTIO_DRIVER_MODULE(vtballoonrs, vtbrs_driver, 0, 0);
MODULE_VERSION(vtballoonrs, 1);
MODULE_DEPEND(vtballoonrs, virtio, 1, 1, 1);

/* Referenced by the link (-u) so the archive member holding the metadata is pulled in. */
int vtbrs_module_anchor;

/* Macros and static inlines. */

void vtbrs_mtx_init(struct mtx *m, const char *name) { mtx_init(m, name, NULL, MTX_DEF); }
void vtbrs_mtx_destroy(struct mtx *m) { mtx_destroy(m); }
void vtbrs_mtx_lock(struct mtx *m) { mtx_lock(m); }
void vtbrs_mtx_unlock(struct mtx *m) { mtx_unlock(m); }
int vtbrs_msleep(void *chan, struct mtx *m, const char *wmesg, int timo) { return (msleep(chan, m, 0, wmesg, timo)); }
void vtbrs_sx_xlock(struct sx *s) { sx_xlock(s); }
void vtbrs_sx_xunlock(struct sx *s) { sx_xunlock(s); }
void vtbrs_task_init(struct task *t, void (*fn)(void *, int), void *arg) { TASK_INIT(t, 0, fn, arg); }
void vtbrs_callout_init(struct callout *c, struct mtx *m) { callout_init_mtx(c, m, 0); }
void vtbrs_callout_reset(struct callout *c, int ticks, void (*fn)(void *), void *arg) { callout_reset(c, ticks, fn, arg); }
lwpid_t vtbrs_curthread_tid(void) { return (curthread->td_tid); }

/*
 * The counter the driver times its own work with. amd64: cpu_ticks(), the
 * TSC (tsc.c calls set_cputicker()), at cpu_tickrate(). arm64 never calls
 * set_cputicker(), so cpu_ticks() there is kern_tc.c's tc_cpu_ticks(): the
 * 32-bit timecounter widened by a per-CPU count of the wraps that CPU saw
 * (every 68 s at QEMU's 62.5 MHz); a CPU that misses one is off by 2^32
 * for good, and a start read on one CPU and an end on another are
 * nonsense. The generic timer's virtual count, get_cyclecount(), is 64
 * bits and the same on every CPU, at CNTFRQ_EL0.
 */
uint64_t
vtbrs_cycles(void)
{
#if defined(__aarch64__)
	return (get_cyclecount());
#else
	return (cpu_ticks());
#endif
}

/*
 * Pages the page daemon's controller asks for in the interval under way,
 * over all domains (none once the interval has passed), and in *stamp the
 * interval's start (ticks), so a caller answers each interval once. A pass
 * that frees none of what it asked for counts toward an OOM kill. The
 * fields are private to vm_pageout.c, hence C; racy reads of plain ints,
 * as its sysctls read them. The deficit of failed allocations is left
 * out: deflating does not cancel it in the page daemon's arithmetic, and
 * a stale one (it is cleared only by a pass that looks for pages) would
 * look like pressure.
 */
u_int
vtbrs_pageout_request(u_int *stamp)
{
	struct vm_domain *vmd;
	u_int n, start;
	int i, out;

	n = 0;
	*stamp = 0;
	for (i = 0; i < vm_ndomains; i++) {
		vmd = VM_DOMAIN(i);
		out = atomic_load_int(&vmd->vmd_pid.pc_output);
		start = atomic_load_int(&vmd->vmd_pid.pc_ticks);
		if ((u_int)ticks - start < (u_int)vmd->vmd_pid.pc_interval &&
		    out > 0) {
			n += out;
			*stamp = MAX(*stamp, start);
		}
	}
	return (n);
}

/*
 * A failed allocation of ours tells the page daemon that a thread waits
 * for a page (vm_domain_alloc_fail adds one to the domain's deficit, once
 * per failed non-sleeping call of the _domain functions); none does: the
 * balloon, the reporter and the hinter take only memory that is free and
 * try again later. Left there, the deficit is added to the page daemon's
 * next pass that looks for pages, and with nothing reclaimable that pass
 * counts toward an OOM kill however much the balloon gave back. So these
 * allocate domain by domain, from the current CPU's, and take back the one
 * page each failure added, never below zero.
 */
static void
vtbrs_forget_failure(int domain)
{
	struct vm_domain *vmd;
	u_int old;

	vmd = VM_DOMAIN(domain);
	old = atomic_load_int(&vmd->vmd_pageout_deficit);
	while (old > 0 && atomic_fcmpset_int(&vmd->vmd_pageout_deficit, &old,
	    old - 1) == 0)
		;
}

vm_page_t
vtbrs_alloc_page_quiet(int req)
{
	vm_page_t m;
	int d, i;

	for (i = 0; i < vm_ndomains; i++) {
		d = (PCPU_GET(domain) + i) % vm_ndomains;
		if ((m = vm_page_alloc_noobj_domain(d, req)) != NULL)
			return (m);
		vtbrs_forget_failure(d);
	}
	return (NULL);
}

vm_page_t
vtbrs_alloc_contig_quiet(int req, u_long npages, vm_paddr_t low,
    vm_paddr_t high, u_long alignment, vm_paddr_t boundary)
{
	vm_page_t m;
	int d, i;

	for (i = 0; i < vm_ndomains; i++) {
		d = (PCPU_GET(domain) + i) % vm_ndomains;
		m = vm_page_alloc_noobj_contig_domain(d, req, npages, low, high,
		    alignment, boundary, VM_MEMATTR_DEFAULT);
		if (m != NULL)
			return (m);
		vtbrs_forget_failure(d);
	}
	return (NULL);
}

uint64_t
vtbrs_cycles_per_second(void)
{
#if defined(__aarch64__)
	return (READ_SPECIALREG(cntfrq_el0));
#else
	return (cpu_tickrate());
#endif
}
