// A thin layer over libnl's message and attribute API for rtnetlink: dumps copied
// into owned messages, and requests that report the kernel's errno together with its
// extended-ack text. The rtnl_* object model of libnl-route lacks what the image
// needs (bridge options, tun attributes, IFA_PROTO, rule port ranges), so objects are
// read and built from their attributes here.
#pragma once

#include <linux/netlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/result.h"

struct nl_sock;

namespace kleap::net {

// One message of a dump, owned.
class NlMsg {
 public:
  explicit NlMsg(const nlmsghdr* h)
      : bytes_(reinterpret_cast<const uint8_t*>(h),
               reinterpret_cast<const uint8_t*>(h) + h->nlmsg_len) {}
  nlmsghdr* hdr() { return reinterpret_cast<nlmsghdr*>(bytes_.data()); }
  template <class T>
  const T* body() {
    return static_cast<const T*>(nlmsg_data(hdr()));
  }
  // Attributes after the fixed header of `hdrlen` bytes, indexed by type (nullptr if
  // absent). Fails on a malformed message.
  Result<std::vector<nlattr*>> Attrs(size_t hdrlen, int maxtype);

 private:
  std::vector<uint8_t> bytes_;
};

// Nested attributes indexed by type.
Result<std::vector<nlattr*>> ParseNested(nlattr* nest, int maxtype);

// A request under construction: a libnl message with NLM_F_REQUEST|NLM_F_ACK.
class NlRequest {
 public:
  NlRequest(int type, int flags);
  ~NlRequest();
  NlRequest(const NlRequest&) = delete;
  NlRequest& operator=(const NlRequest&) = delete;

  // Appends the fixed header (ifinfomsg, ifaddrmsg, ...).
  template <class T>
  void Header(const T& h) {
    Append(&h, sizeof h);
  }
  void Append(const void* data, size_t len);
  void Put(int type, const void* data, size_t len);
  void PutU8(int type, uint8_t v) { Put(type, &v, 1); }
  void PutU16(int type, uint16_t v) { Put(type, &v, 2); }
  void PutU32(int type, uint32_t v) { Put(type, &v, 4); }
  void PutString(int type, const std::string& s) { Put(type, s.c_str(), s.size() + 1); }
  nlattr* Begin(int type);
  void End(nlattr* nest);
  nl_msg* msg() { return msg_; }
  bool failed() const { return failed_; }

 private:
  nl_msg* msg_;
  bool failed_ = false;
};

// A NETLINK_ROUTE socket in the calling thread's network namespace.
class Netlink {
 public:
  static Result<std::unique_ptr<Netlink>> Open();
  ~Netlink();

  // RTM_GET* with NLM_F_DUMP and the given fixed header.
  Result<std::vector<NlMsg>> Dump(int type, const void* hdr, size_t hdrlen);
  // Sends and waits for the ack. The error carries the kernel's errno and extack text.
  Result<void> Send(NlRequest& req, const std::string& what);

 private:
  explicit Netlink(nl_sock* sk) : sk_(sk) {}
  nl_sock* sk_;
};

// Attribute values, safe on short or unterminated attributes.
std::string NlString(const nlattr* a);
uint8_t NlU8(const nlattr* a);
uint32_t NlU32(const nlattr* a);
// An address attribute as text (AddrToString).
std::string NlAddr(int family, const nlattr* a);

// "10.0.0.1", "fe80::1": an address of `len` bytes of the given family.
std::string AddrToString(int family, const void* data, size_t len);
// Parses text back; the family must match. Fails with a message naming `what`.
Result<std::vector<uint8_t>> AddrFromString(int family, const std::string& s,
                                            const std::string& what);
// "aa:bb:cc:dd:ee:ff"; and back (any length up to 32 bytes).
std::string MacToString(const void* data, size_t len);
Result<std::vector<uint8_t>> MacFromString(const std::string& s, const std::string& what);

}  // namespace kleap::net
