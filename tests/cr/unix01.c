/* unix01: unix sockets the engine refuses to carry (the `refuse` mode), by argument:
 *   inflight: a stream socketpair with a pipe's read end sent over it (SCM_RIGHTS) and
 *             not received yet (files in flight are carried on datagram and seqpacket
 *             sockets only);
 *   inflight-proc: a datagram socketpair with /proc/self/status in flight (a procfs
 *             file is not carried);
 *   outside:  a stream socketpair whose other end belongs to a process outside the tree
 *             (a grandchild that left it, named unix01-peer);
 *   oob:      a stream socketpair with an out-of-band byte (MSG_OOB) pending;
 *   path-taken: a datagram socket bound to STATEDIR/s, whose socket file was unlinked
 *             and a FIFO made at its path;
 *   dir-gone: a datagram socket bound to STATEDIR/d/s, its file and directory removed;
 *   rel-moved: a datagram socket bound by the relative path "r.sock" from STATEDIR, the
 *             task then gone to /: the directory it was bound in can't be found;
 *   backlog-data: a stream listener on STATEDIR/l.sock with a client waiting in its
 *             backlog that sent 7 bytes (nobody accepted: the data can't be read back).
 * `kleap check` must name the socket with the reason and `kleap dump` must fail; the
 * tree keeps running. On SIGUSR1: the fd in flight is received whole, or the outside peer
 * still answers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static int sv[2], pfd[2];

/* A one-byte message with room for one fd (SCM_RIGHTS) beside it. */
struct fd_msg {
  char byte;
  struct iovec iov;
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr mh;
};

static void fd_msg_init(struct fd_msg* m) {
  memset(m, 0, sizeof *m);
  m->byte = 'x';
  m->iov.iov_base = &m->byte;
  m->iov.iov_len = 1;
  m->mh.msg_iov = &m->iov;
  m->mh.msg_iovlen = 1;
  m->mh.msg_control = m->u.buf;
  m->mh.msg_controllen = sizeof m->u.buf;
}

static void send_fd(int sock, int fd) {
  struct fd_msg m;
  fd_msg_init(&m);
  struct cmsghdr* cm = CMSG_FIRSTHDR(&m.mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  if (sendmsg(sock, &m.mh, 0) != 1) wl_die("main", "sendmsg SCM_RIGHTS: %s", strerror(errno));
}

static int recv_fd(int sock) {
  struct fd_msg m;
  fd_msg_init(&m);
  if (recvmsg(sock, &m.mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) != 1) return -1;
  struct cmsghdr* cm = CMSG_FIRSTHDR(&m.mh);
  if (!cm || cm->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof fd);
  return fd;
}

/* The grandchild outside the tree: echoes every byte until EOF (or a minute). */
static void peer_main(void) {
  prctl(PR_SET_NAME, "unix01-peer");
  close(sv[0]);
  alarm(60);
  char c;
  while (read(sv[1], &c, 1) == 1)
    if (write(sv[1], &c, 1) != 1) break;
  _exit(0);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* mode = argc > 2 ? argv[2] : "inflight";
  int proc = strcmp(mode, "inflight-proc") == 0;
  if (socketpair(AF_UNIX, (proc ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0, sv) != 0)
    wl_die("main", "socketpair: %s", strerror(errno));
  int outside = strcmp(mode, "outside") == 0, oob = strcmp(mode, "oob") == 0;
  int taken = strcmp(mode, "path-taken") == 0, dir_gone = strcmp(mode, "dir-gone") == 0;
  int rel_moved = strcmp(mode, "rel-moved") == 0, backlog = strcmp(mode, "backlog-data") == 0;
  if (backlog) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s/l.sock", wl_statedir);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int cl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || cl < 0 || bind(l, (struct sockaddr*)&a, sizeof a) != 0 || listen(l, 4) != 0 ||
        connect(cl, (struct sockaddr*)&a, sizeof a) != 0 || write(cl, "backlog", 7) != 7)
      wl_die("main", "backlog-data: %s", strerror(errno));
  } else if (rel_moved) {
    struct sockaddr_un a = {.sun_family = AF_UNIX, .sun_path = "r.sock"};
    int d = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fchdir(wl_dirfd) != 0 || d < 0 || bind(d, (struct sockaddr*)&a, sizeof a) != 0 ||
        chdir("/") != 0)
      wl_die("main", "bind r.sock: %s", strerror(errno));
  } else if (taken || dir_gone) {
    char path[300];
    snprintf(path, sizeof path, "%s/%s", wl_statedir, taken ? "s" : "d/s");
    if (dir_gone && mkdirat(wl_dirfd, "d", 0755) != 0) wl_die("main", "mkdir: %s", strerror(errno));
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) wl_skip("STATEDIR is too long for a socket path");
    memcpy(a.sun_path, path, strlen(path) + 1);
    int d = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (d < 0 || bind(d, (struct sockaddr*)&a, sizeof a) != 0 || unlink(path) != 0)
      wl_die("main", "bind %s: %s", path, strerror(errno));
    if (taken ? mkfifo(path, 0600) != 0 : unlinkat(wl_dirfd, "d", AT_REMOVEDIR) != 0)
      wl_die("main", "%s: %s", taken ? "mkfifo" : "rmdir", strerror(errno));
  } else if (oob) {
    if (send(sv[0], "o", 1, MSG_OOB) != 1) wl_skip("send MSG_OOB: %s", strerror(errno));
  } else if (outside) {
    pid_t mid = fork();
    if (mid < 0) wl_die("main", "fork: %s", strerror(errno));
    if (mid == 0) {
      if (fork() == 0) peer_main();
      _exit(0);
    }
    waitpid(mid, NULL, 0);
    close(sv[1]);
  } else {
    if (proc) {
      pfd[0] = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
      if (pfd[0] < 0) wl_die("main", "open /proc/self/status: %s", strerror(errno));
    } else if (pipe2(pfd, O_CLOEXEC) != 0 || write(pfd[1], "N", 1) != 1) {
      wl_die("main", "pipe: %s", strerror(errno));
    }
    send_fd(sv[0], pfd[0]);
    close(pfd[0]);
  }
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  if (taken || dir_gone || rel_moved || backlog) {
    /* nothing to see: the tree ran on */
  } else if (oob) {
    char b = 0;
    wl_check(&c, recv(sv[1], &b, 1, MSG_OOB | MSG_DONTWAIT) == 1 && b == 'o',
             "the out-of-band byte is gone");
  } else if (outside) {
    char b = 0;
    struct pollfd p = {sv[0], POLLIN, 0};
    wl_check(
        &c,
        write(sv[0], "p", 1) == 1 && poll(&p, 1, 3000) == 1 && read(sv[0], &b, 1) == 1 && b == 'p',
        "the outside peer did not answer");
  } else {
    int fd = recv_fd(sv[1]);
    char b = 0;
    wl_check(&c, fd >= 0 && read(fd, &b, 1) == 1 && b == 'N',
             "the fd in flight was not received whole (fd %d)", fd);
  }
  return wl_check_result("main", &c);
}
