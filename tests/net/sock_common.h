/* Shared by sock_server and sock_client: the byte pattern of each direction of a
 * connection and small socket helpers. Every byte is checked at its stream offset,
 * so a byte lost, repeated or reordered anywhere is found. */
#ifndef KLEAP_NET_SOCK_COMMON_H
#define KLEAP_NET_SOCK_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* Byte `off` of the stream a connection carries in one direction. The seed is the
 * client's port, xor-ed with kToServer for the client-to-server direction. */
enum { kToServer = 0x5a5a };
static inline uint8_t sock_pattern(uint64_t off, uint32_t seed) {
  uint64_t x = (off + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)seed * 0xBF58476D1CE4E5B9ull;
  return (uint8_t)(x >> 29);
}

static inline void sock_fill(uint8_t* buf, size_t n, uint64_t off, uint32_t seed) {
  for (size_t i = 0; i < n; i++) buf[i] = sock_pattern(off + i, seed);
}

/* Offset within buf of the first byte that is not the pattern, or -1. */
static inline long sock_check(const uint8_t* buf, size_t n, uint64_t off, uint32_t seed) {
  for (size_t i = 0; i < n; i++)
    if (buf[i] != sock_pattern(off + i, seed)) return (long)i;
  return -1;
}

/* family 4 or 6, address text and port into ss; returns the length, 0 when bad. */
static inline socklen_t sock_addr(int family, const char* addr, int port,
                                  struct sockaddr_storage* ss) {
  memset(ss, 0, sizeof *ss);
  if (family == 4) {
    struct sockaddr_in* sin = (struct sockaddr_in*)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, addr, &sin->sin_addr) == 1 ? sizeof *sin : 0;
  }
  struct sockaddr_in6* sin6 = (struct sockaddr_in6*)ss;
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons((uint16_t)port);
  return inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1 ? sizeof *sin6 : 0;
}

static inline int sock_port(const struct sockaddr_storage* ss) {
  return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in*)ss)->sin_port
                                        : ((const struct sockaddr_in6*)ss)->sin6_port);
}

static inline double sock_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Each side writes up to kChunk bytes per connection and turn. The server reads all
 * there is, the client at most kReadMax a turn: the server's send queue fills (a dump
 * finds bytes sent and not yet sent in it), and the client's does not, so it goes on
 * sending while the server is down. kTickMs: the longest wait of a turn. */
enum { kChunk = 65536, kReadMax = 16384, kTickMs = 10 };
/* What an echo connection carries before the server closes it. */
enum { kEchoBytes = 256 };

#endif
