/* sysv00: SysV IPC in an IPC namespace of the tree's own.
 *   The root unshare(CLONE_NEWIPC)s first (skip when not permitted), sets kernel.msgmax,
 *   burns a few ids (so the objects' ids are not the first ones), then creates:
 *   - shm A (key KEY_A, 40 pages + 100 bytes, 0640): three pages and page 20 written,
 *     the rest holes; attached read-write and a second time read-only in the root,
 *     both inherited by the child;
 *   - shm B (IPC_PRIVATE, one page): attached, then IPC_RMID'd (destroyed, still
 *     attached in the root and the child);
 *   - a message queue (KEY_M, qbytes lowered to 12000) holding four messages of
 *     types 3, 1, 9, 3 and sizes 0, 17, 300, 4000;
 *   - a set of 3 semaphores (KEY_S) at 5, 0, 100; the root does +1 on sem 1 with
 *     SEM_UNDO (its adj: -1), the child -2 on sem 0 and +7 on sem 2 with SEM_UNDO
 *     (its adj: +2 and -7), so the values are 3, 1, 107.
 * After SIGUSR1: ids by key, modes, nattch (A: 4, B: 2 and destroyed), every byte of
 * both segments (holes read zero), the protections of the attachments, sharing (the
 * child writes through its read-write attachment, the root sees it through its
 * read-only one, and the other way round), the messages in order with their types and
 * bytes, qbytes, kernel.msgmax, the semaphore values; then the child exits and the root
 * checks the values moved by exactly the child's adj (5, 1, 100).
 *
 * `sysv00 STATEDIR hostns`: no namespace of its own, a SysV segment attached in kleap's
 * IPC namespace: the dump must be refused naming the mapping.
 * `sysv00 STATEDIR outside`: the namespace of its own, and a process outside the tree
 * in it (an orphaned grandchild, killed by the root after SIGUSR1): the dump must be
 * refused naming that process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#define KEY_A 0x5359a001
#define KEY_M 0x5359a002
#define KEY_S 0x5359a003
#define PAGE 4096
#define A_SIZE (40 * PAGE + 100)
#define B_SIZE PAGE
#define MAILBOX (35 * PAGE)
#define QBYTES 12000
#define MSGMAX "9000"

union semun_ {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
};

struct mailbox {
  volatile int child_wrote, root_wrote, child_may_exit;
};

static const struct {
  long type;
  size_t len;
} kMsgs[] = {{3, 0}, {1, 17}, {9, 300}, {3, 4000}};

static int ida, idb, idm, ids;
static char *pa, *pr, *pb;

static int written_page(size_t page) {
  return page < 3 || page == 20;
}

static void fill_a(void) {
  for (size_t p = 0; p < 41; p++)
    if (written_page(p)) wl_pattern(pa + p * PAGE, PAGE, (uint32_t)(100 + p));
}

/* Every byte of A as the root wrote it, read through `via`. */
static void check_a(struct wl_check* c, const char* via, const char* name) {
  for (size_t p = 0; p < 41; p++) {
    if (p * PAGE == MAILBOX) continue;
    if (written_page(p)) {
      long d = wl_pattern_diff(via + p * PAGE, PAGE, (uint32_t)(100 + p));
      wl_check(c, d < 0, "shm A through %s: page %zu differs at byte %ld", name, p, d);
    } else {
      for (size_t i = 0; i < PAGE; i++)
        if (via[p * PAGE + i]) {
          wl_check(c, 0, "shm A through %s: hole page %zu holds data at byte %zu", name, p, i);
          break;
        }
    }
  }
}

static void check_prot(struct wl_check* c, const void* at, const char* want, const char* name) {
  char line[512];
  if (wl_maps_line((uintptr_t)at, line, sizeof line) != 0) {
    wl_check(c, 0, "%s: no mapping at %p", name, at);
    return;
  }
  char perms[8] = "";
  sscanf(line, "%*s %7s", perms);
  wl_check(c, strcmp(perms, want) == 0, "%s: mapped %s, want %s (%s)", name, perms, want, line);
  wl_check(c, strstr(line, "/SYSV") != NULL, "%s: not a SysV mapping: %s", name, line);
}

static void sem_values(unsigned short out[3]) {
  union semun_ arg;
  arg.array = out;
  if (semctl(ids, 0, GETALL, arg) != 0) out[0] = out[1] = out[2] = 65535;
}

static void check_sems(struct wl_check* c, int a, int b, int d, const char* when) {
  unsigned short v[3];
  sem_values(v);
  wl_check(c, v[0] == a && v[1] == b && v[2] == d, "semaphores %s: %d %d %d, want %d %d %d", when,
           v[0], v[1], v[2], a, b, d);
}

/* Waits up to 3 s for *p == want. */
static int await_int(volatile int* p, int want) {
  for (int i = 0; i < 300 && *p != want; i++) wl_sleep_ms(10);
  return *p == want;
}

static int semop1(int num, int op, int flags) {
  struct sembuf b = {(unsigned short)num, (short)op, (short)flags};
  return semop(ids, &b, 1);
}

static int run_child(void) {
  struct wl_check c;
  if (wl_await("child", &c) != 0) return 1;
  struct mailbox* mb = (struct mailbox*)(pa + MAILBOX);
  struct mailbox* mb_ro = (struct mailbox*)(pr + MAILBOX);
  mb->child_wrote = 0x123;
  wl_check(&c, await_int(&mb_ro->root_wrote, 0xabc),
           "the root's write to shm A is not seen through the child's read-only attachment");
  check_a(&c, pr, "the child's read-only attachment");
  wl_check(&c, wl_pattern_diff(pb, B_SIZE, 7) < 0, "shm B differs in the child");
  check_prot(&c, pa, "rw-s", "child's shm A");
  check_prot(&c, pr, "r--s", "child's read-only shm A");
  check_sems(&c, 3, 1, 107, "in the child");
  int rc = wl_check_result("child", &c);
  /* Stays attached until the root counted the attachments. */
  for (int i = 0; i < 500 && !mb_ro->child_may_exit; i++) wl_sleep_ms(10);
  return rc;
}

static int run_root(void) {
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check(&c, shmget(KEY_A, 0, 0) == ida, "shmget(KEY_A) = %d, was %d", shmget(KEY_A, 0, 0), ida);
  wl_check(&c, msgget(KEY_M, 0) == idm, "msgget(KEY_M) = %d, was %d", msgget(KEY_M, 0), idm);
  wl_check(&c, semget(KEY_S, 0, 0) == ids, "semget(KEY_S) = %d, was %d", semget(KEY_S, 0, 0), ids);

  struct shmid_ds ds;
  if (wl_check(&c, shmctl(ida, IPC_STAT, &ds) == 0, "shm A: IPC_STAT: %s", strerror(errno))) {
    wl_check(&c, ds.shm_segsz == A_SIZE, "shm A: size %zu", (size_t)ds.shm_segsz);
    wl_check(&c, (ds.shm_perm.mode & 0777) == 0640, "shm A: mode %o", ds.shm_perm.mode);
    wl_check(&c, ds.shm_nattch == 4, "shm A: nattch %lu, want 4", (unsigned long)ds.shm_nattch);
  }
  if (wl_check(&c, shmctl(idb, IPC_STAT, &ds) == 0, "shm B: IPC_STAT: %s", strerror(errno))) {
    wl_check(&c, ds.shm_nattch == 2, "shm B: nattch %lu, want 2", (unsigned long)ds.shm_nattch);
    wl_check(&c, (ds.shm_perm.mode & SHM_DEST) != 0, "shm B is no longer marked destroyed");
  }
  check_a(&c, pa, "the root's attachment");
  check_a(&c, pr, "the root's read-only attachment");
  wl_check(&c, wl_pattern_diff(pb, B_SIZE, 7) < 0, "shm B differs in the root");
  check_prot(&c, pa, "rw-s", "root's shm A");
  check_prot(&c, pr, "r--s", "root's read-only shm A");
  check_prot(&c, pb, "rw-s", "root's shm B");

  char buf[64] = "";
  int fd = open("/proc/sys/kernel/msgmax", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    close(fd);
  }
  wl_check(&c, atoi(buf) == atoi(MSGMAX), "kernel.msgmax reads %s, set %s", buf, MSGMAX);

  struct msqid_ds mq;
  if (wl_check(&c, msgctl(idm, IPC_STAT, &mq) == 0, "queue: IPC_STAT: %s", strerror(errno))) {
    wl_check(&c, mq.msg_qbytes == QBYTES, "queue: qbytes %lu", (unsigned long)mq.msg_qbytes);
    wl_check(&c, mq.msg_qnum == 4, "queue: %lu messages", (unsigned long)mq.msg_qnum);
    wl_check(&c, (mq.msg_perm.mode & 0777) == 0620, "queue: mode %o", mq.msg_perm.mode);
  }
  static struct {
    long mtype;
    char text[8192];
  } m;
  for (size_t i = 0; i < 4; i++) {
    ssize_t n = msgrcv(idm, &m, sizeof m.text, 0, IPC_NOWAIT);
    if (!wl_check(&c, n >= 0, "message %zu: %s", i, strerror(errno))) break;
    wl_check(&c, m.mtype == kMsgs[i].type && (size_t)n == kMsgs[i].len,
             "message %zu: type %ld, %zd bytes; want type %ld, %zu bytes", i, m.mtype, n,
             kMsgs[i].type, kMsgs[i].len);
    wl_check(&c, wl_pattern_diff(m.text, (size_t)n, (uint32_t)(200 + i)) < 0,
             "message %zu: its bytes differ", i);
  }

  check_sems(&c, 3, 1, 107, "in the root");
  struct mailbox* mb = (struct mailbox*)(pa + MAILBOX);
  struct mailbox* mb_ro = (struct mailbox*)(pr + MAILBOX);
  mb->root_wrote = 0xabc;
  wl_check(&c, await_int(&mb_ro->child_wrote, 0x123),
           "the child's write to shm A is not seen through the root's read-only attachment");
  /* Give the child time to count on its side, then let it exit: its undo list applies. */
  wl_sleep_ms(300);
  mb->child_may_exit = 1;
  char why[256];
  if (wl_reap_children(8000, why, sizeof why) != 0) wl_check(&c, 0, "%s", why);
  check_sems(&c, 5, 1, 100, "after the child exited (its adj +2, 0, -7 applied)");
  return wl_check_result("root", &c);
}

static int run_hostns(void) {
  ida = shmget(IPC_PRIVATE, PAGE, 0600);
  if (ida < 0) wl_die("root", "shmget: %s", strerror(errno));
  pa = shmat(ida, NULL, 0);
  if (pa == (void*)-1) wl_die("root", "shmat: %s", strerror(errno));
  shmctl(ida, IPC_RMID, NULL); /* goes with this process */
  wl_pattern(pa, PAGE, 5);
  wl_ready("root");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check(&c, wl_pattern_diff(pa, PAGE, 5) < 0, "the SysV segment changed");
  return wl_check_result("root", &c);
}

/* The root's namespace holds a message queue and an orphan outside the tree. */
static int run_outside(void) {
  idm = msgget(KEY_M, IPC_CREAT | IPC_EXCL | 0600);
  if (idm < 0) wl_die("root", "msgget: %s", strerror(errno));
  int p[2];
  if (pipe(p) != 0) wl_die("root", "pipe: %s", strerror(errno));
  pid_t mid = fork();
  if (mid < 0) wl_die("root", "fork: %s", strerror(errno));
  if (mid == 0) {
    pid_t gc = fork();
    if (gc == 0) {
      close(p[0]);
      close(p[1]);
      for (int i = 0; i < 6000; i++) wl_sleep_ms(100); /* the root kills it long before */
      _exit(0);
    }
    if (write(p[1], &gc, sizeof gc) != sizeof gc) _exit(1);
    _exit(0);
  }
  pid_t orphan = 0;
  close(p[1]);
  if (read(p[0], &orphan, sizeof orphan) != sizeof orphan || orphan <= 0)
    wl_die("root", "the grandchild's pid did not come");
  close(p[0]);
  waitpid(mid, NULL, 0);
  wl_log("orphan %d outside the tree, in its IPC namespace", (int)orphan);
  wl_ready("root");
  struct wl_check c;
  int rc = wl_await("root", &c);
  kill(orphan, SIGKILL); /* ours: started by this program */
  if (rc != 0) return 1;
  wl_check(&c, msgget(KEY_M, 0) == idm, "the message queue is gone");
  return wl_check_result("root", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (argc > 2 && strcmp(argv[2], "hostns") == 0) return run_hostns();
  if (unshare(CLONE_NEWIPC) != 0) wl_skip("unshare(CLONE_NEWIPC): %s", strerror(errno));
  if (argc > 2 && strcmp(argv[2], "outside") == 0) return run_outside();
  int fd = open("/proc/sys/kernel/msgmax", O_WRONLY);
  if (fd < 0 || write(fd, MSGMAX, strlen(MSGMAX)) < 0)
    wl_die("root", "set kernel.msgmax: %s", strerror(errno));
  close(fd);

  /* Burn ids: the objects below get ids with a sequence number above 0. */
  for (int i = 0; i < 3; i++) {
    shmctl(shmget(IPC_PRIVATE, PAGE, 0600), IPC_RMID, NULL);
    msgctl(msgget(IPC_PRIVATE, 0600), IPC_RMID, NULL);
    semctl(semget(IPC_PRIVATE, 1, 0600), 0, IPC_RMID);
  }

  ida = shmget(KEY_A, A_SIZE, IPC_CREAT | IPC_EXCL | 0640);
  if (ida < 0) wl_die("root", "shmget A: %s", strerror(errno));
  pa = shmat(ida, NULL, 0);
  pr = shmat(ida, NULL, SHM_RDONLY);
  if (pa == (void*)-1 || pr == (void*)-1) wl_die("root", "shmat A: %s", strerror(errno));
  fill_a();

  idb = shmget(IPC_PRIVATE, B_SIZE, 0600);
  if (idb < 0) wl_die("root", "shmget B: %s", strerror(errno));
  pb = shmat(idb, NULL, 0);
  if (pb == (void*)-1) wl_die("root", "shmat B: %s", strerror(errno));
  wl_pattern(pb, B_SIZE, 7);
  if (shmctl(idb, IPC_RMID, NULL) != 0) wl_die("root", "IPC_RMID B: %s", strerror(errno));

  idm = msgget(KEY_M, IPC_CREAT | IPC_EXCL | 0620);
  if (idm < 0) wl_die("root", "msgget: %s", strerror(errno));
  struct msqid_ds mq;
  if (msgctl(idm, IPC_STAT, &mq) != 0) wl_die("root", "msgctl IPC_STAT: %s", strerror(errno));
  mq.msg_qbytes = QBYTES;
  if (msgctl(idm, IPC_SET, &mq) != 0) wl_die("root", "msgctl IPC_SET: %s", strerror(errno));
  static struct {
    long mtype;
    char text[8192];
  } m;
  for (size_t i = 0; i < 4; i++) {
    m.mtype = kMsgs[i].type;
    wl_pattern(m.text, kMsgs[i].len, (uint32_t)(200 + i));
    if (msgsnd(idm, &m, kMsgs[i].len, IPC_NOWAIT) != 0)
      wl_die("root", "msgsnd %zu: %s", i, strerror(errno));
  }

  ids = semget(KEY_S, 3, IPC_CREAT | IPC_EXCL | 0600);
  if (ids < 0) wl_die("root", "semget: %s", strerror(errno));
  unsigned short init[3] = {5, 0, 100};
  union semun_ arg;
  arg.array = init;
  if (semctl(ids, 0, SETALL, arg) != 0) wl_die("root", "SETALL: %s", strerror(errno));
  if (semop1(1, 1, SEM_UNDO) != 0) wl_die("root", "semop: %s", strerror(errno));

  pid_t child = wl_fork();
  if (child < 0) wl_die("root", "fork: %s", strerror(errno));
  if (child == 0) {
    struct sembuf ops[2] = {{0, -2, SEM_UNDO}, {2, 7, SEM_UNDO}};
    if (semop(ids, ops, 2) != 0) wl_die("child", "semop: %s", strerror(errno));
    wl_child_ready();
    return run_child();
  }
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  wl_log("shm A %d, shm B %d, queue %d, semaphores %d", ida, idb, idm, ids);
  wl_ready("root child");
  return run_root();
}
