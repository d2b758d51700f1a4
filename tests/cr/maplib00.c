/* maplib00: a private executable mapping of a file the test can change.
 * Copies its own executable to STATEDIR/lib.so and maps the whole file
 * PROT_READ|PROT_EXEC, MAP_PRIVATE (the fd is closed: only the mapping keeps
 * the file). Used by the `change-file` mode: once STATEDIR/lib.so is replaced,
 * the restore must refuse. On SIGUSR1 (unchanged file) the mapping must still
 * show the file's bytes, at the same address, as `r-xp .../lib.so` in
 * /proc/self/maps. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

static unsigned char* read_all(int fd, size_t* len) {
  struct stat st;
  if (fstat(fd, &st) != 0) return NULL;
  unsigned char* p = malloc((size_t)st.st_size + 1);
  if (!p) return NULL;
  size_t got = 0;
  ssize_t r;
  while (got < (size_t)st.st_size &&
         (r = pread(fd, p + got, (size_t)st.st_size - got, (off_t)got)) > 0)
    got += (size_t)r;
  *len = got;
  return p;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  size_t len = 0;
  unsigned char* image = self >= 0 ? read_all(self, &len) : NULL;
  if (!image || len == 0) wl_die("main", "cannot read /proc/self/exe: %s", strerror(errno));
  close(self);
  int fd = openat(wl_dirfd, "lib.so", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  if (fd < 0 || write(fd, image, len) != (ssize_t)len)
    wl_die("main", "write STATEDIR/lib.so: %s", strerror(errno));
  unsigned char* map = mmap(NULL, len, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) wl_die("main", "mmap lib.so: %s", strerror(errno));
  close(fd);
  char path[4096], line[4096];
  snprintf(path, sizeof path, "%s/lib.so", wl_statedir);
  if (wl_maps_line((uintptr_t)map, line, sizeof line) != 0) wl_die("main", "mapping not in maps");
  wl_log("%zu bytes of lib.so at %p: %s", len, (void*)map, line);
  wl_ready("main");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("main", &c);
  wl_check(&c, memcmp(map, image, len) == 0, "the mapping of lib.so no longer shows its bytes");
  char now[4096];
  if (wl_check(&c, wl_maps_line((uintptr_t)map, now, sizeof now) == 0, "no mapping at %p any more",
               (void*)map)) {
    wl_check(&c, strcmp(now, line) == 0, "maps line '%s', was '%s'", now, line);
    char tail[4200];
    snprintf(tail, sizeof tail, " %s", path);
    size_t nl = strlen(now), tl = strlen(tail);
    wl_check(&c, strstr(now, " r-xp ") && nl >= tl && strcmp(now + nl - tl, tail) == 0,
             "maps line '%s' is not an r-xp mapping of %s", now, path);
  }
  fd = openat(wl_dirfd, "lib.so", O_RDONLY | O_CLOEXEC);
  size_t flen = 0;
  unsigned char* file = fd >= 0 ? read_all(fd, &flen) : NULL;
  wl_check(&c, file && flen == len && memcmp(file, image, len) == 0,
           "STATEDIR/lib.so changed under the test");
  return wl_check_result("main", &c);
}
