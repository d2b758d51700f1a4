/* mmflags00: flags of an address space that only the task can be asked about.
 *   prctl(PR_SET_THP_DISABLE, 1);
 *   membarrier registrations: MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED and
 *   MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED.
 * After the restore: PR_GET_THP_DISABLE is 1, and the private and global expedited
 * barriers run (each fails with EPERM in an address space that did not register). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

static long membarrier(int cmd) {
  return syscall(SYS_membarrier, cmd, 0, 0);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  long q = membarrier(MEMBARRIER_CMD_QUERY);
  if (q < 0 || !(q & MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) ||
      !(q & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED))
    wl_skip("membarrier: the kernel lacks the expedited commands (%ld)", q);
  if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) wl_die("main", "THP: %s", strerror(errno));
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0 ||
      membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0)
    wl_die("main", "membarrier register: %s", strerror(errno));
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  wl_check(&c, prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "PR_GET_THP_DISABLE is %d, want 1",
           prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
  long r = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  int e = errno;
  wl_check(&c, r == 0, "MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s (not registered any more?)",
           strerror(e));
  r = membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED);
  e = errno;
  wl_check(&c, r == 0, "MEMBARRIER_CMD_GLOBAL_EXPEDITED: %s", strerror(e));
  return wl_check_result("main", &c);
}
