/* wl-vm.h: what the VM guest's workloads add to the workload protocol
 * (tests/cr/workload.h, linked from there).
 *
 * A cr test program is checked once and exits. A VM workload is started at boot and
 * runs until the machine powers off: it may be checked any number of times, before
 * and after an upgrade, and each SIGUSR1 rewrites its STATEDIR/result.<role>.
 *
 * Each process of a workload is a struct wlv_proc: the ids it started with, up to
 * WLV_MAX_LINKS links to other processes of the tree, and the program's own step and
 * check. wlv_run() loops: it sends on every link and drains it, runs the step, and on
 * SIGUSR1 runs the checks and writes the result.
 *
 * A link carries 8-byte sequence numbers, one per turn of the loop, over a pipe or a
 * stream socket; the receiver checks that each is the one after the last (no gap, no
 * duplicate), and a check waits until every inbound link brought something new, so
 * "the processes still talk" is checked, not assumed.
 */
#ifndef KLEAP_VM_WL_VM_H
#define KLEAP_VM_WL_VM_H

#include <stdint.h>
#include <sys/types.h>

#include "workload.h"

#define WLV_MAX_LINKS 4

struct wlv_ids {
  pid_t pid, ppid, pgid, sid;
};

struct wlv_link {
  const char* name;
  int fd;
  int send, recv;    /* directions used on fd */
  uint64_t next_out; /* next number to send */
  uint64_t next_in;  /* next number expected */
  uint64_t received; /* numbers received in order */
  unsigned char out[8];
  size_t out_len; /* bytes of out still to write */
  unsigned char in[8];
  size_t in_len;   /* bytes of a number read so far */
  char error[200]; /* the first thing that went wrong, or "" */
};

struct wlv_proc {
  const char* role;
  int is_root; /* its parent is outside the workload: getppid is not checked */
  struct wlv_ids ids;
  struct wlv_link links[WLV_MAX_LINKS];
  int nlinks;
  int period_ms; /* one turn of the loop; with links, the longest wait for input */
  void (*step)(void* arg);
  void (*check)(void* arg, struct wl_check* c);
  void* arg;
};

/* Records the process's ids and role; period_ms 10, no links, no step or check. */
void wlv_proc_init(struct wlv_proc* p, const char* role, int is_root);
/* Adds a link over fd (made non-blocking); send/recv say which ways it is used. */
void wlv_add_link(struct wlv_proc* p, const char* name, int fd, int send, int recv);
/* The loop; never returns. */
void wlv_run(struct wlv_proc* p) __attribute__((noreturn));
/* A workload of one process, the root: says it is ready, then runs the loop with this
 * step (may be NULL) and check, one turn every period_ms. */
void wlv_run_alone(const char* role, int period_ms, void (*step)(void* arg),
                   void (*check)(void* arg, struct wl_check* c)) __attribute__((noreturn));

/* Writes STATEDIR/name (through a temporary file and rename) holding text. 0 or -1. */
int wlv_write_state(const char* name, const char* text);
/* Reads STATEDIR/name into buf (NUL-terminated, cut to n). Bytes read, or -1. */
ssize_t wlv_read_state(const char* name, char* buf, size_t n);

/* The path of a program beside this one (same directory as /proc/self/exe). */
void wlv_sibling(const char* name, char* out, size_t n);

#endif
