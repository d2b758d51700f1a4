/* dbusbus: the acceptance test of a real message bus. The root starts Debian's
 * dbus-daemon on a private bus (its own config and socket in STATEDIR) and two
 * clients of it, both sd-bus connections opened once and never again:
 *   ponger  owns org.kleap.Test, answers Ping(u n) with n+1 and emits a Tick(u n)
 *           signal every 20 ms;
 *   pinger  calls Ping in a loop, checks every answer, and counts the Ticks it
 *           matched, which must come without a gap.
 * The tree (dbus-daemon included) is dumped, killed and restored. After SIGUSR1:
 *   pinger  makes 50 more calls and sees 20 more Ticks on the same connection, with
 *           the same unique name, then tells the ponger how many calls it made;
 *   ponger  checks it answered exactly that many, and that it still owns the name;
 *   root    checks dbus-daemon is the same child, still running, that a new client
 *           can connect and sees org.kleap.Test owned by the ponger's unique name,
 *           and that dbus-daemon exits cleanly on SIGTERM.
 * 64-bit only: Debian's dbus-daemon is, and libsystemd has no -m32 build here. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define NAME "org.kleap.Test"
#define PATH "/org/kleap/Test"
#define IFACE "org.kleap.Test"
#define CALL_TIMEOUT_US (60ull * 1000000) /* the downtime counts: be generous */

static char address[512];
static const char* dbus_daemon = "/usr/bin/dbus-daemon";

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static sd_bus* connect_bus(const char* role) {
  sd_bus* bus = NULL;
  int r = sd_bus_new(&bus);
  if (r >= 0) r = sd_bus_set_address(bus, address);
  if (r >= 0) r = sd_bus_set_bus_client(bus, 1);
  if (r >= 0) r = sd_bus_start(bus);
  if (r < 0) wl_die(role, "connect to %s: %s", address, strerror(-r));
  return bus;
}

/* ---------------------------------------------------------------- ponger */

static uint32_t pong_served, pong_expected;
static int pong_quit;

static int on_ping(sd_bus_message* m, void* data, sd_bus_error* err) {
  (void)data, (void)err;
  uint32_t n;
  int r = sd_bus_message_read(m, "u", &n);
  if (r < 0) return r;
  pong_served++;
  return sd_bus_reply_method_return(m, "u", n + 1);
}

static int on_quit(sd_bus_message* m, void* data, sd_bus_error* err) {
  (void)data, (void)err;
  int r = sd_bus_message_read(m, "u", &pong_expected);
  if (r < 0) return r;
  pong_quit = 1;
  return sd_bus_reply_method_return(m, "");
}

static const sd_bus_vtable test_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Ping", "u", "u", on_ping, 0),
    SD_BUS_METHOD("Quit", "u", "", on_quit, 0),
    SD_BUS_SIGNAL("Tick", "u", 0),
    SD_BUS_VTABLE_END,
};

static int run_ponger(void) {
  const char* role = "ponger";
  sd_bus* bus = connect_bus(role);
  sd_bus_slot* slot = NULL;
  int r = sd_bus_add_object_vtable(bus, &slot, PATH, IFACE, test_vtable, NULL);
  if (r < 0) wl_die(role, "add object: %s", strerror(-r));
  r = sd_bus_request_name(bus, NAME, 0);
  if (r < 0) wl_die(role, "request %s: %s", NAME, strerror(-r));
  const char* unique = NULL;
  sd_bus_get_unique_name(bus, &unique);
  char my_name[128];
  snprintf(my_name, sizeof my_name, "%s", unique ? unique : "");
  wl_child_ready();

  struct wl_check c;
  wl_check_init(&c);
  uint32_t tick = 0;
  long next_tick = now_ms(), seen_usr1_at = -1;
  int errors = 0;
  while (!pong_quit) {
    if (wl_usr1 && seen_usr1_at < 0) seen_usr1_at = now_ms();
    if (seen_usr1_at >= 0 && now_ms() - seen_usr1_at > 30000) {
      wl_check(&c, 0, "no Quit from the pinger within 30 s of SIGUSR1 (served %u calls)",
               pong_served);
      break;
    }
    if (now_ms() >= next_tick) {
      r = sd_bus_emit_signal(bus, PATH, IFACE, "Tick", "u", ++tick);
      if (r < 0 && errors++ < 5) wl_log("ponger: emit Tick %u: %s", tick, strerror(-r));
      next_tick += 20;
    }
    r = sd_bus_process(bus, NULL);
    if (r < 0) {
      wl_check(&c, 0, "the bus connection failed: %s (served %u calls)", strerror(-r), pong_served);
      break;
    }
    if (r > 0) continue;
    long wait = next_tick - now_ms();
    if (wait < 0) wait = 0;
    r = sd_bus_wait(bus, (uint64_t)wait * 1000);
    if (r < 0 && r != -EINTR) {
      wl_check(&c, 0, "wait on the bus: %s", strerror(-r));
      break;
    }
  }
  if (!wl_usr1) wl_check(&c, 0, "quit before SIGUSR1");
  if (pong_quit)
    wl_check(&c, pong_served == pong_expected,
             "answered %u Pings, the pinger made %u: calls were lost or doubled", pong_served,
             pong_expected);
  /* The name is still ours, on the same connection. */
  sd_bus_error err = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = NULL;
  r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                         "org.freedesktop.DBus", "GetNameOwner", &err, &reply, "s", NAME);
  const char* owner = NULL;
  if (r >= 0) r = sd_bus_message_read(reply, "s", &owner);
  if (wl_check(&c, r >= 0, "GetNameOwner(%s): %s", NAME, err.message ? err.message : strerror(-r)))
    wl_check(&c, strcmp(owner, my_name) == 0, "%s is owned by %s, not by me (%s)", NAME, owner,
             my_name);
  sd_bus_error_free(&err);
  sd_bus_message_unref(reply);
  sd_bus_get_unique_name(bus, &unique);
  wl_check(&c, unique && strcmp(unique, my_name) == 0, "my unique name changed: %s -> %s", my_name,
           unique ? unique : "(none)");
  sd_bus_flush_close_unref(bus);
  return wl_check_result(role, &c);
}

/* ---------------------------------------------------------------- pinger */

static uint32_t ticks_seen, last_tick;
static int tick_gaps;
static char tick_gap_why[200];

static int on_tick(sd_bus_message* m, void* data, sd_bus_error* err) {
  (void)data, (void)err;
  uint32_t n;
  if (sd_bus_message_read(m, "u", &n) < 0) return 0;
  if (ticks_seen && n != last_tick + 1 && !tick_gaps++)
    snprintf(tick_gap_why, sizeof tick_gap_why, "Tick %u came after Tick %u", n, last_tick);
  last_tick = n;
  ticks_seen++;
  return 0;
}

/* One Ping; 0 when the answer is right. SIGUSR1 waits until the call is done: sd_bus_call
 * blocks in ppoll, which a signal handler ends with EINTR whatever SA_RESTART says, and
 * the call's answer would be lost with it (the harness's SIGUSR1 is not what is tested). */
static int ping(sd_bus* bus, uint32_t n, char* why, size_t len) {
  sd_bus_error err = SD_BUS_ERROR_NULL;
  sd_bus_message *call = NULL, *reply = NULL;
  uint32_t got = 0;
  sigset_t usr1, old;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &old);
  int r = sd_bus_message_new_method_call(bus, &call, NAME, PATH, IFACE, "Ping");
  if (r >= 0) r = sd_bus_message_append(call, "u", n);
  if (r >= 0) r = sd_bus_call(bus, call, CALL_TIMEOUT_US, &err, &reply);
  sigprocmask(SIG_SETMASK, &old, NULL);
  if (r >= 0) r = sd_bus_message_read(reply, "u", &got);
  if (r < 0)
    snprintf(why, len, "Ping(%u): %s", n, err.message ? err.message : strerror(-r));
  else if (got != n + 1)
    snprintf(why, len, "Ping(%u) answered %u", n, got), r = -1;
  sd_bus_error_free(&err);
  sd_bus_message_unref(call);
  sd_bus_message_unref(reply);
  return r < 0 ? -1 : 0;
}

/* Dispatches what came in (the Ticks) without blocking. */
static int drain(sd_bus* bus) {
  int r;
  while ((r = sd_bus_process(bus, NULL)) > 0) {
  }
  return r;
}

static int run_pinger(void) {
  const char* role = "pinger";
  sd_bus* bus = connect_bus(role);
  int r = sd_bus_match_signal(bus, NULL, NAME, PATH, IFACE, "Tick", on_tick, NULL);
  if (r < 0) wl_die(role, "match Tick: %s", strerror(-r));
  const char* unique = NULL;
  sd_bus_get_unique_name(bus, &unique);
  char my_name[128];
  snprintf(my_name, sizeof my_name, "%s", unique ? unique : "");

  char why[300];
  uint32_t calls = 0;
  /* Ready after some traffic in both directions. */
  while (calls < 20 || ticks_seen < 5) {
    if (ping(bus, calls, why, sizeof why) < 0) wl_die(role, "before the dump: %s", why);
    calls++;
    if (drain(bus) < 0) wl_die(role, "process the bus");
    wl_sleep_ms(5);
  }
  wl_child_ready();

  /* Keep talking until SIGUSR1: the dump catches us somewhere in this loop. */
  struct wl_check c;
  wl_check_init(&c);
  int failed = 0;
  while (!wl_usr1 && !failed) {
    if (ping(bus, calls, why, sizeof why) < 0) {
      wl_check(&c, 0, "before SIGUSR1, after %u calls: %s", calls, why);
      failed = 1;
      break;
    }
    calls++;
    if (drain(bus) < 0) failed = 1;
    wl_sleep_ms(10);
  }
  uint32_t calls_at_usr1 = calls, ticks_at_usr1 = ticks_seen;
  long start = now_ms();
  while (!failed && (calls < calls_at_usr1 + 50 || ticks_seen < ticks_at_usr1 + 20)) {
    if (now_ms() - start > 20000) {
      wl_check(&c, 0, "after SIGUSR1: %u calls and %u Ticks in 20 s", calls - calls_at_usr1,
               ticks_seen - ticks_at_usr1);
      break;
    }
    if (ping(bus, calls, why, sizeof why) < 0) {
      wl_check(&c, 0, "after SIGUSR1, call %u: %s", calls - calls_at_usr1, why);
      break;
    }
    calls++;
    if (drain(bus) < 0) break;
    wl_sleep_ms(5);
  }
  wl_check(&c, tick_gaps == 0, "%d gaps in the Ticks, the first: %s", tick_gaps, tick_gap_why);
  sd_bus_get_unique_name(bus, &unique);
  wl_check(&c, unique && strcmp(unique, my_name) == 0, "my unique name changed: %s -> %s", my_name,
           unique ? unique : "(none)");
  sd_bus_error err = SD_BUS_ERROR_NULL;
  r = sd_bus_call_method(bus, NAME, PATH, IFACE, "Quit", &err, NULL, "u", calls);
  wl_check(&c, r >= 0, "Quit: %s", err.message ? err.message : strerror(-r));
  sd_bus_error_free(&err);
  wl_log("pinger: %u calls, %u Ticks (%u calls and %u Ticks after SIGUSR1)", calls, ticks_seen,
         calls - calls_at_usr1, ticks_seen - ticks_at_usr1);
  sd_bus_flush_close_unref(bus);
  return wl_check_result(role, &c);
}

/* ---------------------------------------------------------------- root */

static void write_config(const char* role) {
  char path[600];
  snprintf(path, sizeof path, "%s/bus.conf", wl_statedir);
  FILE* f = fopen(path, "w");
  if (!f) wl_die(role, "create %s: %s", path, strerror(errno));
  fprintf(f,
          "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
          " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
          "<busconfig>\n"
          "  <type>kleap-test</type>\n"
          "  <listen>unix:path=%s/bus</listen>\n"
          "  <auth>EXTERNAL</auth>\n"
          "  <policy context=\"default\">\n"
          "    <allow user=\"*\"/>\n"
          "    <allow own=\"*\"/>\n"
          "    <allow send_destination=\"*\"/>\n"
          "    <allow receive_sender=\"*\"/>\n"
          "  </policy>\n"
          "</busconfig>\n",
          wl_statedir);
  if (fclose(f) != 0) wl_die(role, "write %s: %s", path, strerror(errno));
}

/* Starts dbus-daemon (not a workload child: it must not get SIGUSR1) and reads the
 * address it listens on. */
static pid_t start_daemon(const char* role) {
  char conf[600], fdarg[32];
  snprintf(conf, sizeof conf, "--config-file=%s/bus.conf", wl_statedir);
  int p[2];
  if (pipe(p) < 0) wl_die(role, "pipe: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0) wl_die(role, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(p[0]);
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) dup2(null, 0), dup2(null, 1);
    snprintf(fdarg, sizeof fdarg, "--print-address=%d", p[1]);
    execl(dbus_daemon, "dbus-daemon", conf, "--nofork", "--nopidfile", "--nosyslog", fdarg,
          (char*)NULL);
    wl_log("exec %s: %s", dbus_daemon, strerror(errno));
    _exit(127);
  }
  close(p[1]);
  size_t n = 0;
  while (n < sizeof address - 1) {
    ssize_t got = read(p[0], address + n, sizeof address - 1 - n);
    if (got <= 0) break;
    n += (size_t)got;
    if (memchr(address, '\n', n)) break;
  }
  close(p[0]);
  address[n] = 0;
  char* nl = strchr(address, '\n');
  if (!nl) wl_die(role, "dbus-daemon (pid %d) printed no address", (int)pid);
  *nl = 0;
  return pid;
}

static int run_root(void) {
  const char* role = "root";
  write_config(role);
  pid_t daemon = start_daemon(role);
  wl_log("dbus-daemon %d listens on %s", (int)daemon, address);

  pid_t ponger = wl_fork();
  if (ponger < 0) wl_die(role, "fork: %s", strerror(errno));
  if (ponger == 0) exit(run_ponger());
  /* The pinger needs the name owned: start it once the ponger is ready. */
  char why[200];
  if (wl_wait_children(why, sizeof why) != 0) wl_die(role, "ponger: %s", why);
  pid_t pinger = wl_fork();
  if (pinger < 0) wl_die(role, "fork: %s", strerror(errno));
  if (pinger == 0) exit(run_pinger());
  if (wl_wait_children(why, sizeof why) != 0) wl_die(role, "pinger: %s", why);
  wl_ready("root ponger pinger");

  struct wl_check c;
  if (wl_await(role, &c) < 0) return 1;
  int st;
  pid_t w = waitpid(daemon, &st, WNOHANG);
  wl_check(&c, w == 0, "dbus-daemon %d is not a running child of mine (waitpid: %d)", (int)daemon,
           (int)w);

  /* A client that connects now: the listening socket and the bus's names came back. */
  sd_bus* bus = connect_bus(role);
  sd_bus_error err = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = NULL;
  int r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "GetConnectionUnixProcessID", &err, &reply,
                             "s", NAME);
  uint32_t owner_pid = 0;
  if (r >= 0) r = sd_bus_message_read(reply, "u", &owner_pid);
  if (wl_check(&c, r >= 0, "a new client: GetConnectionUnixProcessID(%s): %s", NAME,
               err.message ? err.message : strerror(-r)))
    wl_check(&c, owner_pid == (uint32_t)ponger, "%s belongs to pid %u, not to the ponger %d", NAME,
             owner_pid, (int)ponger);
  sd_bus_error_free(&err);
  sd_bus_message_unref(reply);
  sd_bus_flush_close_unref(bus);

  if (wl_reap_children(40000, why, sizeof why) != 0) wl_check(&c, 0, "clients: %s", why);
  if (w == 0) {
    kill(daemon, SIGTERM);
    long end = now_ms() + 10000;
    while ((w = waitpid(daemon, &st, WNOHANG)) == 0 && now_ms() < end) wl_sleep_ms(20);
    if (w == 0) {
      kill(daemon, SIGKILL);
      waitpid(daemon, &st, 0);
      wl_check(&c, 0, "dbus-daemon did not exit within 10 s of SIGTERM");
    } else {
      wl_check(&c, w == daemon && WIFEXITED(st) && WEXITSTATUS(st) == 0,
               "dbus-daemon ended with wait status %#x after SIGTERM", st);
    }
  }
  return wl_check_result(role, &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (access(dbus_daemon, X_OK) != 0)
    wl_skip("%s is not installed (apt-get install dbus-daemon)", dbus_daemon);
  return run_root();
}
