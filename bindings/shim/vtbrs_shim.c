/*
 * vtballoon-rs: C side of the kld (see vtbrs_shim.h). Only macros, static
 * inlines, linker-set metadata and the kobj method table live here; the
 * driver itself is Rust (kmod/src/freebsd).
 */
#include <sys/param.h>
#include <sys/systm.h>
#include <sys/kernel.h>
#include <sys/limits.h>
#include <sys/malloc.h>
#include <sys/module.h>
#include <sys/bus.h>
#include <sys/kthread.h>
#include <sys/lock.h>
#include <sys/mutex.h>
#include <sys/sx.h>
#include <sys/proc.h>
#include <sys/sysctl.h>
#include <sys/eventhandler.h>
#include <sys/callout.h>
#include <sys/cpuset.h>
#include <sys/smp.h>
#include <sys/sglist.h>
#include <sys/queue.h>
#include <sys/taskqueue.h>
#include <sys/time.h>
#include <sys/vmmeter.h>

#include <vm/vm.h>
#include <vm/vm_param.h>
#include <vm/vm_page.h>
#include <vm/vm_extern.h>
#include <vm/swap_pager.h>

#include <machine/atomic.h>
#include <machine/bus.h>
#include <machine/md_var.h>

#include <dev/virtio/virtio.h>
#include <dev/virtio/virtqueue.h>

#include "virtio_if.h"
#include "vtbrs_shim.h"

static MALLOC_DEFINE(M_VTBRS, "vtballoonrs", "VirtIO balloon driver (Rust)");

struct vtbrs_softc {
	void		*state;		/* the Rust state; NULL when quiesced */
	volatile u_int	 intr_active;	/* handlers running on `state` */
};

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

static int
vtbrs_attach(device_t dev)
{
	return (vtbrs_rs_attach(dev));
}

static int
vtbrs_detach(device_t dev)
{
	return (vtbrs_rs_detach(dev));
}

static int
vtbrs_attach_completed(device_t dev)
{
	vtbrs_rs_attach_completed(dev);
	return (0);
}

/*
 * Interrupt-side entry to the Rust state. Handlers may run until virtio_pci
 * tears the device's interrupts down, which happens after our detach
 * returned: they reach the state only through the softc, under a count that
 * vtbrs_softc_quiesce() waits out.
 */
static void *
vtbrs_intr_enter(device_t dev)
{
	struct vtbrs_softc *sc = device_get_softc(dev);
	void *state;

	atomic_add_int(&sc->intr_active, 1);
	atomic_thread_fence_seq_cst();
	state = atomic_load_ptr(&sc->state);
	if (state == NULL)
		atomic_subtract_rel_int(&sc->intr_active, 1);
	return (state);
}

static void
vtbrs_intr_exit(device_t dev)
{
	struct vtbrs_softc *sc = device_get_softc(dev);

	atomic_subtract_rel_int(&sc->intr_active, 1);
}

static int
vtbrs_config_change(device_t dev)
{
	void *state;

	if ((state = vtbrs_intr_enter(dev)) != NULL) {
		vtbrs_rs_config_change(state);
		vtbrs_intr_exit(dev);
	}
	return (1);
}

static void
vtbrs_vq_intr_wake(void *xdev)
{
	device_t dev = xdev;
	void *state;

	if ((state = vtbrs_intr_enter(dev)) != NULL) {
		vtbrs_rs_intr(state, VTBRS_INTR_WAKE);
		vtbrs_intr_exit(dev);
	}
}

static void
vtbrs_vq_intr_stats(void *xdev)
{
	device_t dev = xdev;
	void *state;

	if ((state = vtbrs_intr_enter(dev)) != NULL) {
		vtbrs_rs_intr(state, VTBRS_INTR_STATS);
		vtbrs_intr_exit(dev);
	}
}

static device_method_t vtbrs_methods[] = {
	DEVMETHOD(device_probe,			vtbrs_probe),
	DEVMETHOD(device_attach,		vtbrs_attach),
	DEVMETHOD(device_detach,		vtbrs_detach),
	DEVMETHOD(virtio_attach_completed,	vtbrs_attach_completed),
	DEVMETHOD(virtio_config_change,		vtbrs_config_change),
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

void *
vtbrs_softc_get(device_t dev)
{
	return (((struct vtbrs_softc *)device_get_softc(dev))->state);
}

void
vtbrs_softc_set(device_t dev, void *state)
{
	struct vtbrs_softc *sc = device_get_softc(dev);

	atomic_store_rel_ptr((volatile uintptr_t *)&sc->state, (uintptr_t)state);
}

void
vtbrs_softc_quiesce(device_t dev)
{
	struct vtbrs_softc *sc = device_get_softc(dev);

	atomic_store_ptr(&sc->state, NULL);
	atomic_thread_fence_seq_cst();
	while (atomic_load_acq_int(&sc->intr_active) != 0)
		pause("vtbquie", 1);
}

/* Memory and logging. */

void *
vtbrs_malloc(size_t size)
{
	return (malloc(size, M_VTBRS, M_NOWAIT | M_ZERO));
}

/*
 * Memory the device reads: malloc(9) aligns a power-of-two allocation to its
 * size, so with `align` a power of two no larger than PAGE_SIZE, no
 * `align`-aligned slot crosses a page: each is physically contiguous.
 */
void *
vtbrs_dma_alloc(size_t size, size_t align)
{
	if (align == 0 || !powerof2(align) || align > PAGE_SIZE)
		return (NULL);
	return (malloc_aligned(size, align, M_VTBRS, M_NOWAIT | M_ZERO));
}

void
vtbrs_free(void *p)
{
	free(p, M_VTBRS);
}

void
vtbrs_log(device_t dev, const char *msg)
{
	if (dev != NULL)
		device_printf(dev, "%s\n", msg);
	else
		printf("vtballoonrs: %s\n", msg);
}

void
vtbrs_log_u64(device_t dev, const char *msg, uint64_t v)
{
	device_printf(dev, "%s %ju\n", msg, (uintmax_t)v);
}

int
vtbrs_ratecheck(struct timeval *last, int *count, int maxpps)
{
	return (ppsratecheck(last, count, maxpps));
}

void
vtbrs_panic(const char *msg)
{
	panic("vtballoonrs: %s", msg);
}

uint64_t
vtbrs_now_ms(void)
{
	return ((uint64_t)(getsbinuptime() / SBT_1MS));
}

uint64_t
vtbrs_now_us(void)
{
	/* The timecounter itself: getsbinuptime() moves once per tick. */
	return ((uint64_t)(sbinuptime() / SBT_1US));
}

int
vtbrs_ms_to_ticks(uint32_t ms)
{
	uint64_t t;

	t = ((uint64_t)ms * hz + 999) / 1000;
	return (t > INT_MAX ? INT_MAX : (t == 0 ? 1 : (int)t));
}

/* Locks and sleeping. */

void
vtbrs_mtx_init(struct mtx *m, const char *name)
{
	mtx_init(m, name, NULL, MTX_DEF);
}

void vtbrs_mtx_destroy(struct mtx *m) { mtx_destroy(m); }
void vtbrs_mtx_lock(struct mtx *m) { mtx_lock(m); }
void vtbrs_mtx_unlock(struct mtx *m) { mtx_unlock(m); }

int
vtbrs_msleep(void *chan, struct mtx *m, const char *wmesg, int timo)
{
	return (msleep(chan, m, 0, wmesg, timo));
}

void vtbrs_wakeup(void *chan) { wakeup(chan); }

void
vtbrs_sx_init(struct sx *s, const char *name)
{
	sx_init(s, name);
}

void vtbrs_sx_destroy(struct sx *s) { sx_destroy(s); }
void vtbrs_sx_xlock(struct sx *s) { sx_xlock(s); }
void vtbrs_sx_xunlock(struct sx *s) { sx_xunlock(s); }

int
vtbrs_kthread_add(void (*fn)(void *), void *arg, const char *name)
{
	return (kthread_add(fn, arg, NULL, NULL, 0, 0, "%s", name));
}

void
vtbrs_kthread_exit(void)
{
	kthread_exit();
}

/* Task and topology lock. */

void
vtbrs_task_init(struct task *t, void (*fn)(void *, int), void *arg)
{
	TASK_INIT(t, 0, fn, arg);
}

void vtbrs_task_enqueue(struct task *t) { taskqueue_enqueue(taskqueue_thread, t); }
void vtbrs_task_drain(struct task *t) { taskqueue_drain(taskqueue_thread, t); }

/*
 * The CPU the kick thread runs on, -1 with a single CPU: the last one, the
 * least likely to be busy with the boot CPU's work.
 */
int
vtbrs_kick_cpu(void)
{
	return (mp_ncpus > 1 ? (int)mp_maxid : -1);
}

int
vtbrs_tq_create(void **tqp, const char *name, int cpu)
{
	struct taskqueue **q = (struct taskqueue **)tqp;
	cpuset_t mask;

	*q = taskqueue_create(name, M_NOWAIT, taskqueue_thread_enqueue, q);
	if (*q == NULL)
		return (ENOMEM);
	if (cpu < 0)
		return (taskqueue_start_threads(q, 1, PVM, "%s", name));
	CPU_SETOF(cpu, &mask);
	return (taskqueue_start_threads_cpuset(q, 1, PVM, &mask, "%s", name));
}

/* Keeps the calling thread off one CPU (cpu < 0: no change). */
void
vtbrs_avoid_cpu(int cpu)
{
	cpuset_t mask;

	if (cpu < 0)
		return;
	CPU_COPY(&all_cpus, &mask);
	CPU_CLR(cpu, &mask);
	(void)cpuset_setthread(curthread->td_tid, &mask);
}

void vtbrs_tq_enqueue(void *tq, struct task *t) { taskqueue_enqueue(tq, t); }
void vtbrs_tq_drain(void *tq, struct task *t) { taskqueue_drain(tq, t); }
void vtbrs_tq_free(void *tq) { taskqueue_free(tq); }
void vtbrs_topo_lock(void) { bus_topo_lock(); }
void vtbrs_topo_unlock(void) { bus_topo_unlock(); }

/* Callout. */

void
vtbrs_callout_init(struct callout *c, struct mtx *m)
{
	callout_init_mtx(c, m, 0);
}

void
vtbrs_callout_reset(struct callout *c, uint32_t ms, void (*fn)(void *), void *arg)
{
	callout_reset(c, vtbrs_ms_to_ticks(ms), fn, arg);
}

void vtbrs_callout_stop(struct callout *c) { callout_stop(c); }
void vtbrs_callout_drain(struct callout *c) { callout_drain(c); }

/* vm_lowmem. */

void *
vtbrs_lowmem_register(void (*fn)(void *, int), void *arg)
{
	return (EVENTHANDLER_REGISTER(vm_lowmem, fn, arg,
	    EVENTHANDLER_PRI_FIRST));
}

void
vtbrs_lowmem_deregister(void *tag)
{
	EVENTHANDLER_DEREGISTER(vm_lowmem, (eventhandler_tag)tag);
}

/* Pages. */

struct vm_page *
vtbrs_page_alloc(void)
{
	return (vm_page_alloc_noobj(VM_ALLOC_NOWAIT | VM_ALLOC_NODUMP));
}

/*
 * A free, naturally aligned run of 2^order pages: no sleeping, no reclaim,
 * so only pages that are free right now.
 */
struct vm_page *
vtbrs_block_alloc(int order, uint64_t low, uint64_t high)
{
	u_long n = 1UL << order;

	/* [low, high): the KPI's high bound is the last usable address. */
	if (high <= low || high - low < ptoa(n))
		return (NULL);
	return (vm_page_alloc_noobj_contig(VM_ALLOC_NOWAIT |
	    VM_ALLOC_NORECLAIM | VM_ALLOC_NODUMP, n, (vm_paddr_t)low,
	    (vm_paddr_t)(high - 1), ptoa(n), 0, VM_MEMATTR_DEFAULT));
}


uint64_t vtbrs_page_phys(struct vm_page *m) { return (VM_PAGE_TO_PHYS(m)); }
struct vm_page *vtbrs_phys_page(uint64_t pa) { return (PHYS_TO_VM_PAGE(pa)); }

/*
 * Runs: n pages with consecutive physical addresses. Their vm_page
 * structures are consecutive too within a vm_phys segment, which is where
 * our runs come from; checked once per run, page by page lookup otherwise.
 */
static bool
vtbrs_run_ok(struct vm_page *m, u_long n)
{
	return (n <= 1 ||
	    PHYS_TO_VM_PAGE(VM_PAGE_TO_PHYS(m) + ptoa(n - 1)) == &m[n - 1]);
}

static struct vm_page *
vtbrs_run_page(struct vm_page *m, u_long i, bool ok)
{
	return (ok ? &m[i] : PHYS_TO_VM_PAGE(VM_PAGE_TO_PHYS(m) + ptoa(i)));
}

/* vm_page_free(9) one by one: the KPI has no batch free. */
void
vtbrs_run_free(struct vm_page *m, u_long n)
{
	bool ok = vtbrs_run_ok(m, n);
	u_long i;

	for (i = 0; i < n; i++)
		vm_page_free(vtbrs_run_page(m, i, ok));
}

/*
 * The ballooned runs: the first page of each is linked through its queue
 * linkage (our pages are unmanaged and on no queue) and holds the run's
 * length in pindex, which the VM leaves to the owner of an object-less page.
 */
void
vtbrs_run_push(void *list, struct vm_page *m, u_long n)
{
	u_long i;

	if (!vtbrs_run_ok(m, n)) {
		for (i = 0; i < n; i++)
			vtbrs_run_push(list, vtbrs_run_page(m, i, false), 1);
		return;
	}
	m->pindex = n;
	TAILQ_INSERT_TAIL((struct pglist *)list, m, plinks.q);
}

/* Up to max pages off the end of the last run; *n gets how many. */
struct vm_page *
vtbrs_run_pop(void *list, u_long max, u_long *n)
{
	struct pglist *l = list;
	struct vm_page *m;
	u_long len;

	m = TAILQ_LAST(l, pglist);
	if (m == NULL || max == 0)
		return (NULL);
	len = m->pindex;
	if (len <= max) {
		TAILQ_REMOVE(l, m, plinks.q);
		*n = len;
		return (m);
	}
	m->pindex = len - max;
	*n = max;
	return (&m[len - max]);
}

/* Page lists linked through plinks.q: ballooned runs, parked reported blocks. */
void *
vtbrs_pagelist_new(void)
{
	struct pglist *l;

	l = malloc(sizeof(*l), M_VTBRS, M_NOWAIT | M_ZERO);
	if (l != NULL)
		TAILQ_INIT(l);
	return (l);
}

void
vtbrs_pagelist_push(void *list, struct vm_page *m)
{
	TAILQ_INSERT_TAIL((struct pglist *)list, m, plinks.q);
}

struct vm_page *
vtbrs_pagelist_pop(void *list)
{
	struct pglist *l = list;
	struct vm_page *m;

	m = TAILQ_LAST(l, pglist);
	if (m != NULL)
		TAILQ_REMOVE(l, m, plinks.q);
	return (m);
}

void
vtbrs_vm_counters(struct vtbrs_vmcounters *out)
{
	int total, used;

	out->page_size = PAGE_SIZE;
	out->page_count = vm_cnt.v_page_count;
	out->free = vm_free_count();
	out->inactive = vm_inactive_count();
	out->laundry = vm_laundry_count();
	out->active = vm_active_count();
	out->wired = vm_wire_count();
	out->free_target = vm_cnt.v_free_target;
	out->free_reserved = vm_cnt.v_free_reserved;
	out->free_min = vm_cnt.v_free_min;
	out->inactive_target = vm_cnt.v_inactive_target;
	out->swap_in = counter_u64_fetch(vm_cnt.v_swappgsin);
	out->swap_out = counter_u64_fetch(vm_cnt.v_swappgsout);
	out->major_faults = counter_u64_fetch(vm_cnt.v_io_faults);
	out->faults = counter_u64_fetch(vm_cnt.v_vm_faults);
	out->freed_total = counter_u64_fetch(vm_cnt.v_tfree);
	out->pd_scanned = counter_u64_fetch(vm_cnt.v_pdpages);
	out->pd_freed = counter_u64_fetch(vm_cnt.v_dfree);
	swap_pager_status(&total, &used);
	out->swap_free = total > used ? (uint64_t)(total - used) : 0;
}

uint64_t
vtbrs_max_phys(void)
{
	return (ptoa((uint64_t)Maxmem));
}

/* Virtio. */

uint64_t
vtbrs_negotiate(device_t dev, uint64_t wanted)
{
	uint64_t got;

	got = virtio_negotiate_features(dev, wanted);
	if (virtio_finalize_features(dev) != 0)
		return (~0ULL);
	return (got);
}

int
vtbrs_alloc_vqs(device_t dev, int n, struct vtbrs_vq_req *reqs)
{
	struct vq_alloc_info info[5];
	int i;

	if (n > 5)
		return (EINVAL);
	for (i = 0; i < n; i++)
		VQ_ALLOC_INFO_INIT(&info[i], reqs[i].maxindirsz,
		    reqs[i].kind == VTBRS_INTR_STATS ? vtbrs_vq_intr_stats :
		    vtbrs_vq_intr_wake, dev, reqs[i].vqp, "%s %s",
		    device_get_nameunit(dev), reqs[i].name);
	return (virtio_alloc_virtqueues(dev, 0, n, info));
}

int
vtbrs_setup_intr(device_t dev)
{
	return (virtio_setup_intr(dev, INTR_TYPE_MISC));
}

/* DRIVER_OK (and, on modern devices, queue enable) outside probe-and-attach. */
void vtbrs_reinit_complete(device_t dev) { virtio_reinit_complete(dev); }

uint32_t
vtbrs_config_read4(device_t dev, int offset)
{
	uint32_t v;

	v = virtio_read_dev_config_4(dev, offset);
	/* Legacy devices give the balloon's little-endian fields raw. */
	return (virtio_with_feature(dev, VIRTIO_F_VERSION_1) ? v : le32toh(v));
}

void
vtbrs_config_write4(device_t dev, int offset, uint32_t v)
{
	if (!virtio_with_feature(dev, VIRTIO_F_VERSION_1))
		v = htole32(v);
	virtio_write_dev_config_4(dev, offset, v);
}

void vtbrs_virtio_stop(device_t dev) { virtio_stop(dev); }

int
vtbrs_vq_enqueue(struct virtqueue *vq, void *cookie, const void *buf, size_t len)
{
	struct sglist_seg segs[4];
	struct sglist sg;
	int error;

	sglist_init(&sg, nitems(segs), segs);
	error = sglist_append(&sg, __DECONST(void *, buf), len);
	if (error == 0)
		error = virtqueue_enqueue(vq, cookie, &sg, sg.sg_nseg, 0);
	return (error);
}

void vtbrs_vq_notify(struct virtqueue *vq) { virtqueue_notify(vq); }

int
vtbrs_vq_post(struct virtqueue *vq, void *cookie, const void *buf, size_t len)
{
	int error;

	error = vtbrs_vq_enqueue(vq, cookie, buf, len);
	if (error == 0)
		virtqueue_notify(vq);
	return (error);
}

int
vtbrs_vq_post_phys(struct virtqueue *vq, void *cookie, const uint64_t *addr,
    const uint64_t *len, int n)
{
	struct sglist_seg segs[32];
	struct sglist sg;
	int error, i;

	if (n > (int)nitems(segs))
		return (EINVAL);
	sglist_init(&sg, nitems(segs), segs);
	for (i = 0; i < n; i++) {
		error = sglist_append_phys(&sg, addr[i], len[i]);
		if (error != 0)
			return (error);
	}
	/* Device-writable: the host may discard what the ranges hold. */
	error = virtqueue_enqueue(vq, cookie, &sg, 0, sg.sg_nseg);
	if (error == 0)
		virtqueue_notify(vq);
	return (error);
}

void *vtbrs_vq_dequeue(struct virtqueue *vq) { return (virtqueue_dequeue(vq, NULL)); }

/* After a reset: take back every buffer still posted (they are ours). */
void
vtbrs_vq_drain(struct virtqueue *vq)
{
	int last = 0;

	while (virtqueue_drain(vq, &last) != NULL)
		;
}
int vtbrs_vq_enable_intr(struct virtqueue *vq) { return (virtqueue_enable_intr(vq)); }
int vtbrs_vq_nused(struct virtqueue *vq) { return (virtqueue_nused(vq)); }

/* sysctl. */

void vtbrs_sysctl_ctx_init(struct sysctl_ctx_list *ctx) { sysctl_ctx_init(ctx); }
int vtbrs_sysctl_ctx_free(struct sysctl_ctx_list *ctx) { return (sysctl_ctx_free(ctx)); }

static struct sysctl_oid_list *
vtbrs_sysctl_children(device_t dev)
{
	return (SYSCTL_CHILDREN(device_get_sysctl_tree(dev)));
}

void
vtbrs_sysctl_u64(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
    uint64_t *p, const char *descr)
{
	SYSCTL_ADD_U64(ctx, vtbrs_sysctl_children(dev), OID_AUTO, name,
	    CTLFLAG_RD | CTLFLAG_STATS, p, 0, descr);
}

void
vtbrs_sysctl_string(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
    const char *p, const char *descr)
{
	SYSCTL_ADD_STRING(ctx, vtbrs_sysctl_children(dev), OID_AUTO, name,
	    CTLFLAG_RD, __DECONST(char *, p), 0, descr);
}

static int
vtbrs_sysctl_rw_handler(SYSCTL_HANDLER_ARGS)
{
	uint64_t cur;
	int error, val;

	error = vtbrs_rs_sysctl_get(arg1, arg2, &cur);
	if (error != 0)
		return (error);
	val = (int)cur;
	error = sysctl_handle_int(oidp, &val, 0, req);
	if (error != 0 || req->newptr == NULL)
		return (error);
	if (val < 0)
		return (EINVAL);
	return (vtbrs_rs_sysctl_set(arg1, arg2, (uint64_t)val));
}

static int
vtbrs_sysctl_ro_handler(SYSCTL_HANDLER_ARGS)
{
	uint64_t v;
	int error;

	error = vtbrs_rs_sysctl_get(arg1, arg2, &v);
	if (error != 0)
		return (error);
	return (sysctl_handle_64(oidp, &v, 0, req));
}

void
vtbrs_sysctl_rw_int(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
    void *state, int which, const char *descr)
{
	SYSCTL_ADD_PROC(ctx, vtbrs_sysctl_children(dev), OID_AUTO, name,
	    CTLTYPE_INT | CTLFLAG_RWTUN | CTLFLAG_MPSAFE, state, which,
	    vtbrs_sysctl_rw_handler, "I", descr);
}

void
vtbrs_sysctl_ro_u64(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
    void *state, int which, const char *descr)
{
	SYSCTL_ADD_PROC(ctx, vtbrs_sysctl_children(dev), OID_AUTO, name,
	    CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE, state, which,
	    vtbrs_sysctl_ro_handler, "QU", descr);
}
