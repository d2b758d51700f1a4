/* creds00: credentials.
 * The root makes STATEDIR world-writable (sticky) and forks a child that
 *   setgroups({5, 6}); setresgid(1001, 1002, 1003); PR_SET_KEEPCAPS;
 *   setresuid(1001, 1002, 1003); capset(): only CAP_NET_BIND_SERVICE in the
 *   permitted and effective sets; PR_SET_NO_NEW_PRIVS.
 * Both record getresuid/getresgid/getgroups, fsuid/fsgid, capget(), the
 * bounding and ambient sets, securebits, keepcaps, no_new_privs and dumpable,
 * and compare them after the restore. The child also checks the values it set.
 * (capget/capset are raw syscalls: no libcap.) */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

struct creds {
  uid_t ruid, euid, suid, fsuid;
  gid_t rgid, egid, sgid, fsgid;
  int ngroups;
  gid_t groups[64];
  uint32_t eff[2], prm[2], inh[2];
  unsigned long long bounding, ambient;
  int securebits, keepcaps, nnp, dumpable;
};

static int get_creds(struct creds* c) {
  memset(c, 0, sizeof *c);
  if (getresuid(&c->ruid, &c->euid, &c->suid) != 0) return -1;
  if (getresgid(&c->rgid, &c->egid, &c->sgid) != 0) return -1;
  c->fsuid = (uid_t)setfsuid((uid_t)-1);
  c->fsgid = (gid_t)setfsgid((gid_t)-1);
  c->ngroups = getgroups(64, c->groups);
  if (c->ngroups < 0) return -1;
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  if (syscall(SYS_capget, &h, d) != 0) return -1;
  for (int i = 0; i < 2; i++) {
    c->eff[i] = d[i].effective;
    c->prm[i] = d[i].permitted;
    c->inh[i] = d[i].inheritable;
  }
  for (int cap = 0; cap < 64; cap++) {
    int b = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
    if (b < 0) break;
    if (b) c->bounding |= 1ull << cap;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0) == 1) c->ambient |= 1ull << cap;
  }
  c->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
  c->keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
  c->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  c->dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  return 0;
}

static void describe(const struct creds* c, char* out, size_t n) {
  snprintf(out, n,
           "uid %u/%u/%u fsuid %u gid %u/%u/%u fsgid %u groups %d[%u,%u] eff %x:%x prm %x:%x "
           "inh %x:%x bnd %llx amb %llx securebits %d keepcaps %d nnp %d dumpable %d",
           c->ruid, c->euid, c->suid, c->fsuid, c->rgid, c->egid, c->sgid, c->fsgid, c->ngroups,
           c->ngroups > 0 ? c->groups[0] : 0, c->ngroups > 1 ? c->groups[1] : 0, c->eff[1],
           c->eff[0], c->prm[1], c->prm[0], c->inh[1], c->inh[0], (unsigned long long)c->bounding,
           (unsigned long long)c->ambient, c->securebits, c->keepcaps, c->nnp, c->dumpable);
}

static void compare(struct wl_check* k, const char* role, const struct creds* b) {
  struct creds n;
  if (!wl_check(k, get_creds(&n) == 0, "%s: reading credentials: %s", role, strerror(errno)))
    return;
#define SAME(f, fmt) wl_check(k, n.f == b->f, "%s: " #f " " fmt ", was " fmt, role, n.f, b->f)
  SAME(ruid, "%u");
  SAME(euid, "%u");
  SAME(suid, "%u");
  SAME(fsuid, "%u");
  SAME(rgid, "%u");
  SAME(egid, "%u");
  SAME(sgid, "%u");
  SAME(fsgid, "%u");
  SAME(ngroups, "%d");
  for (int i = 0; i < n.ngroups && i < b->ngroups; i++) SAME(groups[i], "%u");
  for (int i = 0; i < 2; i++) {
    SAME(eff[i], "0x%x");
    SAME(prm[i], "0x%x");
    SAME(inh[i], "0x%x");
  }
  SAME(bounding, "0x%llx");
  SAME(ambient, "0x%llx");
  SAME(securebits, "%d");
  SAME(keepcaps, "%d");
  SAME(nnp, "%d");
  SAME(dumpable, "%d");
#undef SAME
}

static int drop(char* why, size_t n) {
  gid_t groups[2] = {5, 6};
  if (setgroups(2, groups) != 0) return snprintf(why, n, "setgroups: %s", strerror(errno)), -1;
  if (setresgid(1001, 1002, 1003) != 0)
    return snprintf(why, n, "setresgid: %s", strerror(errno)), -1;
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
    return snprintf(why, n, "PR_SET_KEEPCAPS: %s", strerror(errno)), -1;
  if (setresuid(1001, 1002, 1003) != 0)
    return snprintf(why, n, "setresuid: %s", strerror(errno)), -1;
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  d[0].effective = d[0].permitted = 1u << CAP_NET_BIND_SERVICE;
  if (syscall(SYS_capset, &h, d) != 0) return snprintf(why, n, "capset: %s", strerror(errno)), -1;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return snprintf(why, n, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno)), -1;
  /* The uid change cleared dumpable; set it again, so a restore that loses it shows. */
  if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0)
    return snprintf(why, n, "PR_SET_DUMPABLE: %s", strerror(errno)), -1;
  return 0;
}

static int child_main(void) {
  char why[256];
  if (drop(why, sizeof why) != 0) wl_die("child", "%s", why);
  struct creds b;
  if (get_creds(&b) != 0) wl_die("child", "reading credentials: %s", strerror(errno));
  char desc[512];
  describe(&b, desc, sizeof desc);
  wl_log("child: %s", desc);
  wl_child_ready();
  if (wl_wait() != 0) {
    wl_result("child", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  struct wl_check k;
  wl_check_init(&k);
  compare(&k, "child", &b);
  /* What was set, independently of what was recorded. */
  uid_t r, e, s;
  gid_t gr, ge, gs;
  getresuid(&r, &e, &s);
  getresgid(&gr, &ge, &gs);
  wl_check(&k, r == 1001 && e == 1002 && s == 1003, "child: uids %u/%u/%u, set 1001/1002/1003", r,
           e, s);
  wl_check(&k, gr == 1001 && ge == 1002 && gs == 1003, "child: gids %u/%u/%u, set 1001/1002/1003",
           gr, ge, gs);
  gid_t g[8];
  int ng = getgroups(8, g);
  wl_check(&k, ng == 2 && g[0] == 5 && g[1] == 6, "child: %d supplementary groups, set {5,6}", ng);
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  syscall(SYS_capget, &h, d);
  uint32_t want = 1u << CAP_NET_BIND_SERVICE;
  wl_check(&k,
           d[0].effective == want && d[0].permitted == want && d[0].inheritable == 0 &&
               d[1].effective == 0 && d[1].permitted == 0 && d[1].inheritable == 0,
           "child: capabilities eff %x prm %x inh %x, set eff=prm=%x (CAP_NET_BIND_SERVICE)",
           d[0].effective, d[0].permitted, d[0].inheritable, want);
  wl_check(&k, prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "child: no_new_privs is not set");
  wl_check(&k, prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) == 1, "child: keepcaps is not set");
  return wl_check_result("child", &k);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  /* The child loses CAP_DAC_OVERRIDE: let it write its result. */
  if (fchmod(wl_dirfd, 01777) != 0) wl_die("root", "fchmod STATEDIR: %s", strerror(errno));
  struct creds b;
  if (get_creds(&b) != 0) wl_die("root", "reading credentials: %s", strerror(errno));
  pid_t pid = wl_fork();
  if (pid < 0) wl_die("root", "fork: %s", strerror(errno));
  if (pid == 0) return child_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  wl_ready("root child");
  if (wl_wait() != 0) {
    wl_result("root", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  struct wl_check k;
  wl_check_init(&k);
  compare(&k, "root", &b);
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&k, 0, "root: %s", why);
  return wl_check_result("root", &k);
}
