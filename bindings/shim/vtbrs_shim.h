/*
 * vtballoon-rs: the C side of the kld. Module metadata, the newbus method
 * table, and small wrappers for kernel macros and static inlines that Rust
 * cannot call directly. Everything else lives in Rust (kmod/src/freebsd).
 * Compiled with the kernel's own flags by bindings/build.rs.
 */
#ifndef VTBRS_SHIM_H
#define VTBRS_SHIM_H

#include <sys/types.h>

struct mtx;
struct sx;
struct callout;
struct virtqueue;
struct vm_page;
struct thread;
struct timeval;
struct sysctl_ctx_list;
struct sysctl_oid;
struct task;
typedef struct _device *device_t;

/* Counters the balloon logic reads; mirrors kmod's VmCounters. */
struct vtbrs_vmcounters {
	uint64_t page_size, page_count, free, inactive, laundry, active, wired;
	uint64_t free_target, free_reserved, free_min, inactive_target;
	uint64_t swap_in, swap_out, major_faults, faults;
	uint64_t swap_free, freed_total, pd_scanned, pd_freed;
};

/* What a virtqueue's interrupt does (vtbrs_rs_intr's `kind`). */
#define	VTBRS_INTR_WAKE		0	/* wake the thread waiting for the host */
#define	VTBRS_INTR_STATS	1	/* the host returned a statistics buffer */

/* One virtqueue to allocate: index order as the device numbers them. */
struct vtbrs_vq_req {
	int		 maxindirsz;
	int		 kind;		/* VTBRS_INTR_* */
	struct virtqueue **vqp;
	const char	*name;
};

/* Memory and logging. */
void	*vtbrs_malloc(size_t size);
void	*vtbrs_dma_alloc(size_t size, size_t align);
void	 vtbrs_free(void *p);
void	 vtbrs_log(device_t dev, const char *msg);
void	 vtbrs_log_u64(device_t dev, const char *msg, uint64_t v);
int	 vtbrs_ratecheck(struct timeval *last, int *count, int maxpps);
void	 vtbrs_panic(const char *msg) __dead2;
uint64_t vtbrs_now_ms(void);
uint64_t vtbrs_now_us(void);
int	 vtbrs_ms_to_ticks(uint32_t ms);

/* Locks and sleeping. */
void	 vtbrs_mtx_init(struct mtx *m, const char *name);
void	 vtbrs_mtx_destroy(struct mtx *m);
void	 vtbrs_mtx_lock(struct mtx *m);
void	 vtbrs_mtx_unlock(struct mtx *m);
int	 vtbrs_msleep(void *chan, struct mtx *m, const char *wmesg, int timo);
void	 vtbrs_wakeup(void *chan);
void	 vtbrs_sx_init(struct sx *s, const char *name);
void	 vtbrs_sx_destroy(struct sx *s);
void	 vtbrs_sx_xlock(struct sx *s);
void	 vtbrs_sx_xunlock(struct sx *s);
int	 vtbrs_kthread_add(void (*fn)(void *), void *arg, const char *name);
void	 vtbrs_kthread_exit(void) __dead2;

/* A one-shot task on taskqueue_thread, and the newbus topology lock. */
void	 vtbrs_task_init(struct task *t, void (*fn)(void *, int), void *arg);
void	 vtbrs_task_enqueue(struct task *t);
void	 vtbrs_task_drain(struct task *t);
/* A private taskqueue with one thread; *tqp must outlive it. */
int	 vtbrs_kick_cpu(void);
int	 vtbrs_tq_create(void **tqp, const char *name, int cpu);
void	 vtbrs_avoid_cpu(int cpu);
void	 vtbrs_tq_enqueue(void *tq, struct task *t);
void	 vtbrs_tq_drain(void *tq, struct task *t);
void	 vtbrs_tq_free(void *tq);
void	 vtbrs_topo_lock(void);
void	 vtbrs_topo_unlock(void);

/* Callout (stats push timer), protected by a mutex. */
void	 vtbrs_callout_init(struct callout *c, struct mtx *m);
void	 vtbrs_callout_reset(struct callout *c, uint32_t ms, void (*fn)(void *), void *arg);
void	 vtbrs_callout_stop(struct callout *c);
void	 vtbrs_callout_drain(struct callout *c);

/* vm_lowmem event handler. */
void	*vtbrs_lowmem_register(void (*fn)(void *, int), void *arg);
void	 vtbrs_lowmem_deregister(void *tag);

/* Pages. */
struct vm_page *vtbrs_page_alloc(void);
struct vm_page *vtbrs_block_alloc(int order, uint64_t low, uint64_t high);
uint64_t vtbrs_page_phys(struct vm_page *m);
struct vm_page *vtbrs_phys_page(uint64_t pa);
void	*vtbrs_pagelist_new(void);
void	 vtbrs_pagelist_push(void *list, struct vm_page *m);
struct vm_page *vtbrs_pagelist_pop(void *list);
void	 vtbrs_run_free(struct vm_page *m, u_long n);
void	 vtbrs_run_push(void *list, struct vm_page *m, u_long n);
struct vm_page *vtbrs_run_pop(void *list, u_long max, u_long *n);
void	 vtbrs_vm_counters(struct vtbrs_vmcounters *out);
uint64_t vtbrs_max_phys(void);

/* Virtio. */
uint64_t vtbrs_negotiate(device_t dev, uint64_t wanted);
int	 vtbrs_alloc_vqs(device_t dev, int n, struct vtbrs_vq_req *reqs);
int	 vtbrs_setup_intr(device_t dev);
void	 vtbrs_reinit_complete(device_t dev);
uint32_t vtbrs_config_read4(device_t dev, int offset);
void	 vtbrs_config_write4(device_t dev, int offset, uint32_t v);
void	 vtbrs_virtio_stop(device_t dev);
int	 vtbrs_vq_post(struct virtqueue *vq, void *cookie, const void *buf, size_t len);
int	 vtbrs_vq_enqueue(struct virtqueue *vq, void *cookie, const void *buf, size_t len);
void	 vtbrs_vq_notify(struct virtqueue *vq);
int	 vtbrs_vq_post_phys(struct virtqueue *vq, void *cookie, const uint64_t *addr,
	    const uint64_t *len, int n);
void	*vtbrs_vq_dequeue(struct virtqueue *vq);
void	 vtbrs_vq_drain(struct virtqueue *vq);
int	 vtbrs_vq_enable_intr(struct virtqueue *vq);
int	 vtbrs_vq_nused(struct virtqueue *vq);

/*
 * Per-device softc (newbus frees it only after the bus has torn down the
 * device's interrupts): the pointer to the Rust state, and a count of
 * interrupt handlers running on it. vtbrs_softc_quiesce() clears the pointer
 * and waits for running handlers, after which no interrupt reaches the state.
 */
void	*vtbrs_softc_get(device_t dev);
void	 vtbrs_softc_set(device_t dev, void *state);
void	 vtbrs_softc_quiesce(device_t dev);

/* sysctl nodes under the device, in the driver's own context. */
void	 vtbrs_sysctl_ctx_init(struct sysctl_ctx_list *ctx);
int	 vtbrs_sysctl_ctx_free(struct sysctl_ctx_list *ctx);
void	 vtbrs_sysctl_u64(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
	    uint64_t *p, const char *descr);
void	 vtbrs_sysctl_string(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
	    const char *p, const char *descr);
/* A read-write integer node whose writes go through vtbrs_rs_sysctl_set. */
void	 vtbrs_sysctl_rw_int(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
	    void *state, int which, const char *descr);
/* A read-only computed node: value from vtbrs_rs_sysctl_get. */
void	 vtbrs_sysctl_ro_u64(device_t dev, struct sysctl_ctx_list *ctx, const char *name,
	    void *state, int which, const char *descr);

/* Implemented in Rust. */
int	 vtbrs_rs_attach(device_t dev);
int	 vtbrs_rs_detach(device_t dev);
void	 vtbrs_rs_attach_completed(device_t dev);
void	 vtbrs_rs_config_change(void *state);
void	 vtbrs_rs_intr(void *state, int kind);
int	 vtbrs_rs_sysctl_get(void *state, int which, uint64_t *out);
int	 vtbrs_rs_sysctl_set(void *state, int which, uint64_t value);

#endif
