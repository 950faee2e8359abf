/* What bindgen reads: the kernel interfaces the Rust glue uses, and the shim. */
#include <sys/param.h>
#include <sys/systm.h>
#include <sys/errno.h>
#include <sys/kernel.h>
#include <sys/malloc.h>
#include <sys/bus.h>
#include <sys/lock.h>
#include <sys/mutex.h>
#include <sys/sx.h>
#include <sys/kthread.h>
#include <sys/callout.h>
#include <sys/_task.h>
#include <sys/taskqueue.h>
#include <sys/cpuset.h>
#include <sys/smp.h>
#include <sys/eventhandler.h>
#include <sys/sglist.h>
#include <sys/sysctl.h>
#include <sys/time.h>
#include <sys/vmmeter.h>
#include <sys/priority.h>
#include <vm/vm.h>
#include <vm/vm_param.h>
#include <vm/vm_page.h>
#include <vm/vm_extern.h>
#include <vm/swap_pager.h>
#include <machine/md_var.h>
#include <dev/virtio/virtio.h>
#include <dev/virtio/virtqueue.h>
#include "vtbrs_shim.h"

/* Constants whose macros bindgen cannot evaluate (they cast), as an enum it can. */
enum { VTBRS_MEMATTR_DEFAULT = VM_MEMATTR_DEFAULT };
