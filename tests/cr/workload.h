/* workload.h: the kleap workload protocol for the cr test programs.
 *
 * A program is started as `PROG STATEDIR [args...]` in a session of its own.
 * Once its state is set up it writes STATEDIR/pid and then STATEDIR/ready.
 * After the restore the harness sends SIGUSR1 to the root, which forwards it to
 * its children (each process forwards to its own children). Every process then
 * checks its state and writes STATEDIR/result.<role>: `PASS` or `FAIL:<reason>`.
 *
 * Extensions used by run-cr.sh (optional for other harnesses):
 *   STATEDIR/roles  space-separated roles the root expects to report; the
 *                   harness fails when one of them never reports.
 *   STATEDIR/skip   written instead of `ready` when the program cannot run on
 *                   this machine; holds the reason (the harness exits 77).
 *
 * Every file is written through a directory fd opened at startup (openat), so
 * programs that chroot or drop privileges still reach STATEDIR.
 * Nothing here uses stdio: all output goes through write(2).
 */
#ifndef KLEAP_CR_WORKLOAD_H
#define KLEAP_CR_WORKLOAD_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define WL_PRINTF(a, b) __attribute__((format(printf, a, b)))

extern const char* wl_statedir;       /* argv[1] */
extern int wl_dirfd;                  /* O_DIRECTORY fd of STATEDIR, O_CLOEXEC */
extern volatile sig_atomic_t wl_usr1; /* set by the SIGUSR1 handler */

/* Parses argv (`PROG STATEDIR ...`; `PROG --wl-probe` exits 0 at once), opens
 * STATEDIR and installs the SIGUSR1 handler. Exits 2 on misuse. */
void wl_init(int argc, char** argv);

/* fork() that registers the child for SIGUSR1 forwarding and the ready
 * handshake. In the child: its own list of children starts empty. */
pid_t wl_fork(void);
/* execv() from a wl_fork()ed child that keeps the ready handshake: the new
 * program's wl_init() picks it up. Returns only on failure. */
void wl_exec(const char* path, char* const argv[]);
/* A non-root process: my state (and my children's) is set up. */
void wl_child_ready(void);
/* Waits until every wl_fork()ed child called wl_child_ready(); 0 when all did,
 * -1 with the reason in why when one exited first. */
int wl_wait_children(char* why, size_t n);
/* Root: writes STATEDIR/roles (when roles != NULL), STATEDIR/pid, STATEDIR/ready. */
void wl_ready(const char* roles);
/* Waits for SIGUSR1 (polls wl_usr1 every 20 ms); -1 after 10 minutes of
 * waiting (time spent frozen does not count). */
int wl_wait(void);
/* Copies the /proc/self/maps line of the mapping holding addr into out (cut to n);
 * 0 when found, -1 otherwise. */
int wl_maps_line(uintptr_t addr, char* out, size_t n);
/* The lines of /proc/self/fdinfo/FD that start with prefix (e.g. "eventfd-count:",
 * "tfd:"), each without the prefix and its leading blanks, joined by '\n' into out
 * (cut to n). Returns how many lines matched, -1 when fdinfo can't be read. */
int wl_fdinfo(int fd, const char* prefix, char* out, size_t n);
/* Like wl_fdinfo, but the lines sorted (the kernel lists epoll and inotify entries in
 * the order of its own trees), each cut where `cut` starts (when not NULL), each
 * followed by ';'. */
int wl_fdinfo_sorted(int fd, const char* prefix, const char* cut, char* out, size_t n);
/* Bytes waiting to be read on fd (FIONREAD), -1 on error. */
int wl_fionread(int fd);
/* Reads exactly len bytes from a pipe or a stream socket, waiting up to 3 s for them;
 * returns how many it got (fewer on EOF, an error or the time running out). */
size_t wl_read_full(int fd, void* p, size_t len);
/* Reaps every wl_fork()ed child. 0 when each exited normally within timeout_ms;
 * else -1 with the reason in why (killed by a signal, not exiting, not our child). */
int wl_reap_children(int timeout_ms, char* why, size_t n);

/* Writes STATEDIR/result.<role>: PASS when ok, else FAIL:<reason>. */
void wl_result(const char* role, int ok, const char* fmt, ...) WL_PRINTF(3, 4);
/* Writes STATEDIR/skip with the reason, then exits 0. */
void wl_skip(const char* fmt, ...) WL_PRINTF(1, 2) __attribute__((noreturn));
/* Writes a line `[pid] ...` to stderr. */
void wl_log(const char* fmt, ...) WL_PRINTF(1, 2);
/* Writes `[pid] FAIL during setup: ...` to stderr and result.<role>, then exits 1. */
void wl_die(const char* role, const char* fmt, ...) WL_PRINTF(2, 3) __attribute__((noreturn));
void wl_sleep_ms(int ms);

/* Accumulates failed checks: every failure is logged and appended to why. */
struct wl_check {
  int failures;
  char why[1024];
};
void wl_check_init(struct wl_check* c);
/* Returns ok; when !ok records the formatted reason. */
int wl_check(struct wl_check* c, int ok, const char* fmt, ...) WL_PRINTF(3, 4);
/* wl_wait(), then wl_check_init(c): 0 after SIGUSR1; on a timeout writes
 * result.<role> as FAIL and returns -1. */
int wl_await(const char* role, struct wl_check* c);
/* Writes result.<role> from c; returns the process exit code (0 pass, 1 fail). */
int wl_check_result(const char* role, const struct wl_check* c);
/* Reaps child pid (one not made by wl_fork, e.g. by a raw clone), waiting up to
 * timeout_ms; records a failure in c unless it exited with 0. Returns ok. */
int wl_check_reaped(struct wl_check* c, pid_t pid, const char* role, int timeout_ms);

/* Fills buf with a deterministic byte pattern derived from seed. */
void wl_pattern(void* buf, size_t len, uint32_t seed);
/* Offset of the first byte that differs from the pattern, or -1. */
long wl_pattern_diff(const void* buf, size_t len, uint32_t seed);

/* Raw gettid, for glibc versions without the wrapper. */
pid_t wl_gettid(void);

#endif
