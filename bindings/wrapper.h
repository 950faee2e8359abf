/* What bindgen reads: the kernel types the Rust glue handles, and the shim. */
#include <sys/param.h>
#include <sys/systm.h>
#include <sys/errno.h>
#include <sys/lock.h>
#include <sys/mutex.h>
#include <sys/sx.h>
#include <sys/callout.h>
#include <sys/_task.h>
#include <sys/sysctl.h>
#include <sys/time.h>
#include <vm/vm.h>
#include <vm/vm_page.h>
#include "vtbrs_shim.h"
