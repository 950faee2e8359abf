/*
 * vtballoon-rs: the C side of the kld. Module metadata, the newbus method
 * table, and one-line wrappers of kernel macros and static inlines that
 * Rust cannot call. Everything else, including every exported kernel
 * function the driver calls, is Rust (kmod/src/freebsd).
 * Compiled with the kernel's own flags by bindings/build.rs.
 */
#ifndef VTBRS_SHIM_H
#define VTBRS_SHIM_H

#include <sys/types.h>

struct mtx;
struct sx;
struct callout;
struct task;
typedef struct _device *device_t;

MALLOC_DECLARE(M_VTBRS);

/*
 * Per-device softc, for its size: the Rust State and a count of interrupt
 * handlers running on it (kmod/src/freebsd/driver.rs, struct Softc).
 */
struct vtbrs_softc {
	void		*state;
	u_int		 intr_active;
};

/* Macros and static inlines. */
void	vtbrs_mtx_init(struct mtx *m, const char *name);
void	vtbrs_mtx_destroy(struct mtx *m);
void	vtbrs_mtx_lock(struct mtx *m);
void	vtbrs_mtx_unlock(struct mtx *m);
int	vtbrs_msleep(void *chan, struct mtx *m, const char *wmesg, int timo);
void	vtbrs_sx_xlock(struct sx *s);
void	vtbrs_sx_xunlock(struct sx *s);
void	vtbrs_task_init(struct task *t, void (*fn)(void *, int), void *arg);
void	vtbrs_callout_init(struct callout *c, struct mtx *m);
void	vtbrs_callout_reset(struct callout *c, int ticks, void (*fn)(void *), void *arg);
lwpid_t	vtbrs_curthread_tid(void);
uint64_t vtbrs_cycles(void);
uint64_t vtbrs_cycles_per_second(void);
u_int	vtbrs_pageout_request(u_int *stamp);
vm_page_t vtbrs_alloc_page_quiet(int req);
vm_page_t vtbrs_alloc_contig_quiet(int req, u_long npages, vm_paddr_t low,
	    vm_paddr_t high, u_long alignment, vm_paddr_t boundary);

/* Implemented in Rust: the newbus and virtio methods. */
int	vtbrs_rs_attach(device_t dev);
int	vtbrs_rs_detach(device_t dev);
int	vtbrs_rs_attach_completed(device_t dev);
int	vtbrs_rs_config_change(device_t dev);

#endif
