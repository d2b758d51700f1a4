/* loginuid00: the audit login uid (/proc/self/loginuid), which only a task itself may
 * set: set to 4242 before a second thread is made (each thread has its own copy).
 * After the restore both read 4242. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

static int set_loginuid(const char* value) {
  int fd = open("/proc/thread-self/loginuid", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, value, strlen(value));
  close(fd);
  return n == (ssize_t)strlen(value) ? 0 : -1;
}

static long get_loginuid(void) {
  char buf[32] = "";
  int fd = open("/proc/thread-self/loginuid", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -2;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? strtol(buf, NULL, 10) : -2;
}

static volatile long thread_saw = -3;
static volatile int thread_go;

static void* second(void* arg) {
  (void)arg;
  while (!thread_go) wl_sleep_ms(10);
  thread_saw = get_loginuid();
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (access("/proc/self/loginuid", F_OK) != 0)
    wl_skip("no /proc/self/loginuid: the kernel has no audit support");
  if (set_loginuid("4242") != 0) wl_die("main", "set loginuid: %s", strerror(errno));
  pthread_t t;
  if (pthread_create(&t, NULL, second, NULL) != 0) wl_die("main", "pthread_create");
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  long mine = get_loginuid();
  wl_check(&c, mine == 4242, "main thread: loginuid %ld, want 4242", mine);
  thread_go = 1;
  pthread_join(t, NULL);
  wl_check(&c, thread_saw == 4242, "second thread: loginuid %ld, want 4242", (long)thread_saw);
  return wl_check_result("main", &c);
}
