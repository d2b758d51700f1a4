/* wl-vm.c: see wl-vm.h. */
#define _GNU_SOURCE
#include "wl-vm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* How long a check waits for every inbound link to bring a new number. */
#define WLV_LINK_WAIT_MS 2000

void wlv_proc_init(struct wlv_proc* p, const char* role, int is_root) {
  memset(p, 0, sizeof *p);
  p->role = role;
  p->is_root = is_root;
  p->ids.pid = getpid();
  p->ids.ppid = getppid();
  p->ids.pgid = getpgid(0);
  p->ids.sid = getsid(0);
  p->period_ms = 10;
}

void wlv_add_link(struct wlv_proc* p, const char* name, int fd, int send, int recv) {
  if (p->nlinks >= WLV_MAX_LINKS) wl_die(p->role, "more than %d links", WLV_MAX_LINKS);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    wl_die(p->role, "link %s: fcntl(%d): %s", name, fd, strerror(errno));
  struct wlv_link* l = &p->links[p->nlinks++];
  l->name = name;
  l->fd = fd;
  l->send = send;
  l->recv = recv;
  l->next_out = 1;
  l->next_in = 1;
}

static void link_error(struct wlv_link* l, const char* fmt, ...) WL_PRINTF(2, 3);
static void link_error(struct wlv_link* l, const char* fmt, ...) {
  if (l->error[0]) return; /* the first one is the one that explains */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(l->error, sizeof l->error, fmt, ap);
  va_end(ap);
  wl_log("link %s: %s", l->name, l->error);
}

static void link_send(struct wlv_link* l) {
  if (l->out_len == 0) {
    memcpy(l->out, &l->next_out, sizeof l->out);
    l->next_out++;
    l->out_len = sizeof l->out;
  }
  ssize_t w = write(l->fd, l->out + sizeof l->out - l->out_len, l->out_len);
  if (w > 0)
    l->out_len -= (size_t)w;
  else if (w < 0 && errno != EAGAIN && errno != EINTR)
    link_error(l, "write: %s", strerror(errno));
}

static void link_drain(struct wlv_link* l) {
  for (;;) {
    ssize_t r = read(l->fd, l->in + l->in_len, sizeof l->in - l->in_len);
    if (r == 0) {
      link_error(l, "end of file after %llu numbers", (unsigned long long)l->received);
      return;
    }
    if (r < 0) {
      if (errno != EAGAIN && errno != EINTR) link_error(l, "read: %s", strerror(errno));
      return;
    }
    l->in_len += (size_t)r;
    if (l->in_len < sizeof l->in) continue;
    l->in_len = 0;
    uint64_t got;
    memcpy(&got, l->in, sizeof got);
    if (got == l->next_in)
      l->received++;
    else
      link_error(l, "got number %llu where %llu was next (%s)", (unsigned long long)got,
                 (unsigned long long)l->next_in, got < l->next_in ? "a duplicate" : "a gap");
    l->next_in = got + 1;
  }
}

static void turn(struct wlv_proc* p) {
  if (p->period_ms > 0) wl_sleep_ms(p->period_ms);
  for (int i = 0; i < p->nlinks; i++) {
    if (p->links[i].send) link_send(&p->links[i]);
    if (p->links[i].recv) link_drain(&p->links[i]);
  }
  if (p->step) p->step(p->arg);
}

static void check_ids(struct wlv_proc* p, struct wl_check* c) {
  struct wlv_ids now = {getpid(), getppid(), getpgid(0), getsid(0)};
  const struct wlv_ids* was = &p->ids;
  wl_check(c, now.pid == was->pid, "getpid %d, was %d", (int)now.pid, (int)was->pid);
  if (!p->is_root)
    wl_check(c, now.ppid == was->ppid, "getppid %d, was %d", (int)now.ppid, (int)was->ppid);
  wl_check(c, now.pgid == was->pgid, "getpgid %d, was %d", (int)now.pgid, (int)was->pgid);
  wl_check(c, now.sid == was->sid, "getsid %d, was %d", (int)now.sid, (int)was->sid);
}

/* Every inbound link must bring a new number within WLV_LINK_WAIT_MS: the peers keep
 * talking while they check too. */
static void check_links(struct wlv_proc* p, struct wl_check* c) {
  uint64_t before[WLV_MAX_LINKS];
  for (int i = 0; i < p->nlinks; i++) before[i] = p->links[i].received;
  for (int waited = 0; waited<WLV_LINK_WAIT_MS; waited += p->period_ms> 0 ? p->period_ms : 1) {
    int quiet = 0;
    for (int i = 0; i < p->nlinks; i++)
      if (p->links[i].recv && p->links[i].received == before[i] && !p->links[i].error[0]) quiet++;
    if (quiet == 0) break;
    turn(p);
  }
  for (int i = 0; i < p->nlinks; i++) {
    struct wlv_link* l = &p->links[i];
    wl_check(c, !l->error[0], "link %s: %s", l->name, l->error);
    if (l->recv)
      wl_check(c, l->received > before[i], "link %s: nothing new for %d ms (%llu received)",
               l->name, WLV_LINK_WAIT_MS, (unsigned long long)l->received);
  }
}

void wlv_run(struct wlv_proc* p) {
  signal(SIGPIPE, SIG_IGN);
  for (;;) {
    if (wl_usr1) {
      wl_usr1 = 0;
      struct wl_check c;
      wl_check_init(&c);
      check_ids(p, &c);
      check_links(p, &c);
      if (p->check) p->check(p->arg, &c);
      wl_check_result(p->role, &c);
    }
    turn(p);
  }
}

void wlv_run_alone(const char* role, int period_ms, void (*step)(void* arg),
                   void (*check)(void* arg, struct wl_check* c)) {
  static struct wlv_proc p;
  wlv_proc_init(&p, role, 1);
  p.period_ms = period_ms;
  p.step = step;
  p.check = check;
  wl_ready(role);
  wlv_run(&p);
}

int wlv_write_state(const char* name, const char* text) {
  int fd = openat(wl_dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  size_t len = strlen(text);
  ssize_t w = write(fd, text, len);
  close(fd);
  return w == (ssize_t)len ? 0 : -1;
}

ssize_t wlv_read_state(const char* name, char* buf, size_t n) {
  int fd = openat(wl_dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  ssize_t r = 0;
  while (len + 1 < n && (r = read(fd, buf + len, n - 1 - len)) > 0) len += (size_t)r;
  close(fd);
  buf[len] = '\0';
  return r < 0 ? -1 : (ssize_t)len;
}

void wlv_sibling(const char* name, char* out, size_t n) {
  char self[4096];
  ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
  if (k <= 0) k = 0;
  self[k] = '\0';
  char* slash = strrchr(self, '/');
  if (slash)
    slash[1] = '\0';
  else
    strcpy(self, "./");
  snprintf(out, n, "%s%s", self, name);
}
