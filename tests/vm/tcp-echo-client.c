/* tcp-echo-client: the host's side of the guest's wl-tcp workload (tests/vm/workloads).
 *
 *   tcp-echo-client HOST PORT [--interval-ms 100] [--connect-timeout S] [--report FILE]
 *
 * Connects to HOST:PORT and sends "kleap N\n", N = 1, 2, ..., every interval; every
 * line that comes back must be the next one sent. The connection counts as made at
 * the first echo: QEMU's hostfwd accepts a connection before the guest has, and
 * closes it when the guest refuses, so until then a closed connection is retried
 * (for up to --connect-timeout seconds, default 60). After that, an end of file or an
 * error is a drop. Runs until SIGTERM or SIGINT, a drop or a wrong echo, then prints
 * one line (also written to --report FILE):
 *
 *   tcp-echo-client: connected=1 round_trips=N longest_gap_ms=M since_last_ms=S
 *                    in_flight=K dropped=0 wrong=0 error="..."
 *
 * longest_gap_ms is the longest time between two echoes. Exit status: 0 connected and
 * nothing went wrong, 1 a drop or a wrong echo, 2 never connected or a usage error. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int dial(const char* host, const char* port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
  if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai) return -1;
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
    close(fd);
    fd = -1;
  }
  freeaddrinfo(ai);
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

struct state {
  int connected, dropped, wrong;
  unsigned long long sent, echoed;
  long long last_echo, longest_gap;
  char error[160];
};

static void report(const struct state* s, const char* path) {
  long long since = s->echoed ? now_ms() - s->last_echo : -1;
  char line[512];
  snprintf(line, sizeof line,
           "tcp-echo-client: connected=%d round_trips=%llu longest_gap_ms=%lld since_last_ms=%lld "
           "in_flight=%llu dropped=%d wrong=%d error=\"%s\"\n",
           s->connected, s->echoed, s->longest_gap, since, s->sent - s->echoed, s->dropped,
           s->wrong, s->error);
  fputs(line, stdout);
  fflush(stdout);
  if (path) {
    FILE* f = fopen(path, "w");
    if (f) {
      fputs(line, f);
      fclose(f);
    }
  }
}

/* Takes the whole lines out of buf; 0 while every one is the next echo, else -1. */
static int take_echoes(struct state* s, char* buf, size_t* len) {
  char* nl;
  while ((nl = memchr(buf, '\n', *len)) != NULL) {
    size_t n = (size_t)(nl - buf) + 1;
    char want[64];
    int wn = snprintf(want, sizeof want, "kleap %llu\n", s->echoed + 1);
    if ((size_t)wn != n || memcmp(buf, want, n) != 0) {
      snprintf(s->error, sizeof s->error, "echo '%.*s' where 'kleap %llu' was due", (int)(n - 1),
               buf, s->echoed + 1);
      s->wrong = 1;
      return -1;
    }
    long long t = now_ms();
    if (s->echoed && t - s->last_echo > s->longest_gap) s->longest_gap = t - s->last_echo;
    s->last_echo = t;
    s->echoed++;
    s->connected = 1;
    memmove(buf, buf + n, *len - n);
    *len -= n;
  }
  if (*len == 511) {
    snprintf(s->error, sizeof s->error, "a line of more than 511 bytes came back");
    s->wrong = 1;
    return -1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr,
            "usage: tcp-echo-client HOST PORT [--interval-ms MS] [--connect-timeout S] "
            "[--report FILE]\n");
    return 2;
  }
  const char *host = argv[1], *port = argv[2], *report_path = NULL;
  long interval = 100, connect_timeout = 60;
  for (int i = 3; i < argc; i++) {
    if (strcmp(argv[i], "--interval-ms") == 0 && i + 1 < argc)
      interval = strtol(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--connect-timeout") == 0 && i + 1 < argc)
      connect_timeout = strtol(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--report") == 0 && i + 1 < argc)
      report_path = argv[++i];
    else
      return fprintf(stderr, "tcp-echo-client: bad argument %s\n", argv[i]), 2;
  }
  if (interval <= 0) interval = 100;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  struct state s = {0};
  long long deadline = now_ms() + connect_timeout * 1000, next_send = 0;
  int fd = -1;
  char buf[512];
  size_t len = 0;
  while (!stop) {
    if (!s.connected && now_ms() > deadline) {
      snprintf(s.error, sizeof s.error, "no echo from %s:%s within %lds", host, port,
               connect_timeout);
      break;
    }
    if (fd < 0) {
      fd = dial(host, port);
      if (fd < 0) {
        usleep(200000);
        continue;
      }
      s.sent = 0;
      len = 0;
      next_send = now_ms();
    }
    long long wait = next_send - now_ms();
    struct pollfd pfd = {fd, POLLIN, 0};
    int pr = poll(&pfd, 1, wait > 0 ? (int)wait : 0);
    if (pr < 0 && errno != EINTR) {
      snprintf(s.error, sizeof s.error, "poll: %s", strerror(errno));
      s.dropped = s.connected;
      break;
    }
    if (pr > 0) {
      ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
      if (r <= 0 && !(r < 0 && (errno == EINTR || errno == EAGAIN))) {
        if (!s.connected) { /* not through to the guest yet: try again */
          close(fd);
          fd = -1;
          usleep(200000);
          continue;
        }
        snprintf(s.error, sizeof s.error, "%s after %llu round trips",
                 r == 0 ? "end of file" : strerror(errno), s.echoed);
        s.dropped = 1;
        break;
      }
      if (r > 0) {
        len += (size_t)r;
        if (take_echoes(&s, buf, &len) != 0) break;
      }
    }
    if (now_ms() >= next_send) {
      char line[64];
      int n = snprintf(line, sizeof line, "kleap %llu\n", s.sent + 1);
      if (send(fd, line, (size_t)n, MSG_NOSIGNAL) != n) {
        if (!s.connected) {
          close(fd);
          fd = -1;
          continue;
        }
        snprintf(s.error, sizeof s.error, "send: %s after %llu round trips", strerror(errno),
                 s.echoed);
        s.dropped = 1;
        break;
      }
      s.sent++;
      next_send += interval;
    }
  }
  report(&s, report_path);
  if (fd >= 0) close(fd);
  if (!s.connected) return 2;
  return s.dropped || s.wrong ? 1 : 0;
}
