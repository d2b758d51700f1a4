/* wl-counter: a counter in memory that must never reset.
 * `wl-counter STATEDIR`: adds one to a counter every millisecond, and every 100 steps
 * (100 ms) writes its value to STATEDIR/counter through an fd it keeps open (STATEDIR
 * is in tmpfs). The counter is kept twice, in the data segment and in a page of its
 * own, and every step checks that both copies agree before it adds one.
 * A check (role `counter`):
 *   - both copies always agreed (a page carried older than the other would not);
 *   - STATEDIR/counter, read afresh by its path, holds the last value written;
 *   - the counter is at least that value and at most 100 steps past it: it did not
 *     restart, and memory and file were carried from the same moment.
 * Built twice: wl-counter and wl-counter32 (-m32). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "wl-vm.h"

#define RECORD_EVERY 100

static struct {
  uint64_t value;
  uint64_t* copy; /* in a page of its own */
  uint64_t recorded;
  int fd;
  char error[160];
} ctr;

static void record(void) {
  char line[32];
  /* Fixed width, so that each record overwrites the whole previous one. */
  int n = snprintf(line, sizeof line, "%020" PRIu64 "\n", ctr.value);
  if (pwrite(ctr.fd, line, (size_t)n, 0) == n)
    ctr.recorded = ctr.value;
  else if (!ctr.error[0])
    snprintf(ctr.error, sizeof ctr.error, "writing %s/counter: %s", wl_statedir, strerror(errno));
}

static void step(void* arg) {
  (void)arg;
  if (*ctr.copy != ctr.value && !ctr.error[0]) {
    snprintf(ctr.error, sizeof ctr.error,
             "the two copies of the counter differ: %" PRIu64 " in the data segment, %" PRIu64
             " in its own page",
             ctr.value, *ctr.copy);
    wl_log("%s", ctr.error);
  }
  ctr.value++;
  *ctr.copy = ctr.value;
  if (ctr.value % RECORD_EVERY == 0) record();
}

static void check(void* arg, struct wl_check* c) {
  (void)arg;
  wl_check(c, !ctr.error[0], "%s", ctr.error);
  char buf[64];
  if (!wl_check(c, wlv_read_state("counter", buf, sizeof buf) > 0, "cannot read %s/counter: %s",
                wl_statedir, strerror(errno)))
    return;
  uint64_t in_file = strtoull(buf, NULL, 10);
  wl_check(c, in_file == ctr.recorded,
           "%s/counter holds %" PRIu64 ", the last value written was %" PRIu64, wl_statedir,
           in_file, ctr.recorded);
  wl_check(c, ctr.value >= in_file && ctr.value - in_file <= RECORD_EVERY,
           "the counter is %" PRIu64 ", the file (written every %d steps) says %" PRIu64, ctr.value,
           RECORD_EVERY, in_file);
  wl_log("counter %" PRIu64 ", file %" PRIu64, ctr.value, in_file);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  ctr.copy = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ctr.copy == MAP_FAILED) wl_die("counter", "mmap: %s", strerror(errno));
  ctr.fd = openat(wl_dirfd, "counter", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (ctr.fd < 0) wl_die("counter", "create %s/counter: %s", wl_statedir, strerror(errno));
  record();
  wlv_run_alone("counter", 1, step, check);
}
