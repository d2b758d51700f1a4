#include "engine/net/netlink.h"

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>

namespace kleap::net {
namespace {

// What the error callback saw: the kernel's errno and its extended-ack message.
struct AckState {
  int error = 0;
  std::string extack;
};

int OnError(sockaddr_nl*, nlmsgerr* e, void* arg) {
  auto* st = static_cast<AckState*>(arg);
  st->error = -e->error;
  // The ack's TLVs follow the echoed request (only its header when capped).
  auto* h = reinterpret_cast<nlmsghdr*>(reinterpret_cast<char*>(e) - NLMSG_HDRLEN);
  if (h->nlmsg_flags & NLM_F_ACK_TLVS) {
    size_t off = NLMSG_HDRLEN + sizeof(nlmsgerr);
    if (!(h->nlmsg_flags & NLM_F_CAPPED)) off += e->msg.nlmsg_len - NLMSG_HDRLEN;
    if (off < h->nlmsg_len) {
      auto* a = reinterpret_cast<nlattr*>(reinterpret_cast<char*>(h) + NLMSG_ALIGN(off));
      int rem = int(h->nlmsg_len) - int(NLMSG_ALIGN(off));
      int r;
      nla_for_each_attr(a, a, rem, r) {
        if (nla_type(a) == NLMSGERR_ATTR_MSG && nla_len(a) > 0)
          st->extack.assign(static_cast<const char*>(nla_data(a)),
                            strnlen(static_cast<const char*>(nla_data(a)), size_t(nla_len(a))));
      }
    }
  }
  return NL_STOP;
}

int OnValid(nl_msg* m, void* arg) {
  static_cast<std::vector<NlMsg>*>(arg)->emplace_back(nlmsg_hdr(m));
  return NL_OK;
}

Error KernelError(const AckState& st, const std::string& what) {
  Error e(st.error, what);
  if (!st.extack.empty()) e << " (" << st.extack << ")";
  return e;
}

}  // namespace

Result<std::vector<nlattr*>> NlMsg::Attrs(size_t hdrlen, int maxtype) {
  std::vector<nlattr*> tb(size_t(maxtype) + 1, nullptr);
  if (hdr()->nlmsg_len < NLMSG_HDRLEN + hdrlen)
    return Err(EPROTO) << "netlink message type " << hdr()->nlmsg_type << " too short";
  if (nlmsg_parse(hdr(), int(hdrlen), tb.data(), maxtype, nullptr) < 0)
    return Err(EPROTO) << "malformed netlink message type " << hdr()->nlmsg_type;
  return tb;
}

Result<std::vector<nlattr*>> ParseNested(nlattr* nest, int maxtype) {
  std::vector<nlattr*> tb(size_t(maxtype) + 1, nullptr);
  if (nla_parse_nested(tb.data(), maxtype, nest, nullptr) < 0)
    return Err(EPROTO) << "malformed nested netlink attribute " << nla_type(nest);
  return tb;
}

NlRequest::NlRequest(int type, int flags)
    : msg_(nlmsg_alloc_simple(type, flags | NLM_F_REQUEST | NLM_F_ACK)) {
  if (!msg_) failed_ = true;
}
NlRequest::~NlRequest() {
  if (msg_) nlmsg_free(msg_);
}
void NlRequest::Append(const void* data, size_t len) {
  if (!msg_ || nlmsg_append(msg_, const_cast<void*>(data), len, NLMSG_ALIGNTO) < 0) failed_ = true;
}
void NlRequest::Put(int type, const void* data, size_t len) {
  if (!msg_ || nla_put(msg_, type, int(len), data) < 0) failed_ = true;
}
nlattr* NlRequest::Begin(int type) {
  nlattr* n = msg_ ? nla_nest_start(msg_, type) : nullptr;
  if (!n) failed_ = true;
  return n;
}
void NlRequest::End(nlattr* nest) {
  if (!msg_ || !nest || nla_nest_end(msg_, nest) < 0) failed_ = true;
}

Result<std::unique_ptr<Netlink>> Netlink::Open() {
  nl_sock* sk = nl_socket_alloc();
  if (!sk) return Err(ENOMEM) << "nl_socket_alloc";
  std::unique_ptr<Netlink> nl(new Netlink(sk));
  int r = nl_connect(sk, NETLINK_ROUTE);
  if (r < 0) return Err(EIO) << "netlink connect: " << nl_geterror(r);
  (void)nl_socket_set_buffer_size(sk, 4 << 20, 1 << 20);
  int one = 1;
  (void)setsockopt(nl_socket_get_fd(sk), SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  (void)setsockopt(nl_socket_get_fd(sk), SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  return nl;
}

Netlink::~Netlink() {
  nl_socket_free(sk_);
}

Result<std::vector<NlMsg>> Netlink::Dump(int type, const void* hdr, size_t hdrlen) {
  std::vector<NlMsg> out;
  AckState st;
  nl_socket_modify_cb(sk_, NL_CB_VALID, NL_CB_CUSTOM, OnValid, &out);
  nl_socket_modify_err_cb(sk_, NL_CB_CUSTOM, OnError, &st);
  int r = nl_send_simple(sk_, type, NLM_F_DUMP, const_cast<void*>(hdr), hdrlen);
  if (r < 0) return Err(EIO) << "netlink dump " << type << ": " << nl_geterror(r);
  r = nl_recvmsgs_default(sk_);
  if (st.error) return KernelError(st, "netlink dump " + std::to_string(type));
  if (r < 0) return Err(EIO) << "netlink dump " << type << ": " << nl_geterror(r);
  return out;
}

Result<void> Netlink::Send(NlRequest& req, const std::string& what) {
  if (req.failed()) return Err(EMSGSIZE) << what << ": building the netlink request failed";
  AckState st;
  nl_socket_modify_err_cb(sk_, NL_CB_CUSTOM, OnError, &st);
  int r = nl_send_auto(sk_, req.msg());
  if (r < 0) return Err(EIO) << what << ": " << nl_geterror(r);
  r = nl_wait_for_ack(sk_);
  if (st.error) return KernelError(st, what);
  if (r < 0) return Err(EIO) << what << ": " << nl_geterror(r);
  return Ok();
}

std::string NlString(const nlattr* a) {
  auto* p = static_cast<const char*>(nla_data(a));
  return std::string(p, strnlen(p, size_t(nla_len(a))));
}

uint8_t NlU8(const nlattr* a) {
  return nla_len(a) >= 1 ? *static_cast<const uint8_t*>(nla_data(a)) : 0;
}

uint32_t NlU32(const nlattr* a) {
  uint32_t v = 0;
  if (nla_len(a) >= 4) std::memcpy(&v, nla_data(a), 4);
  return v;
}

std::string NlAddr(int family, const nlattr* a) {
  return AddrToString(family, nla_data(a), size_t(nla_len(a)));
}

std::string AddrToString(int family, const void* data, size_t len) {
  char buf[INET6_ADDRSTRLEN];
  if ((family == AF_INET && len == 4) || (family == AF_INET6 && len == 16))
    if (inet_ntop(family, data, buf, sizeof buf)) return buf;
  return MacToString(data, len);
}

Result<std::vector<uint8_t>> AddrFromString(int family, const std::string& s,
                                            const std::string& what) {
  std::vector<uint8_t> out(family == AF_INET ? 4 : 16);
  if ((family != AF_INET && family != AF_INET6) || inet_pton(family, s.c_str(), out.data()) != 1)
    return Err(EINVAL) << what << ": not an " << (family == AF_INET ? "IPv4" : "IPv6")
                       << " address: '" << s << "'";
  return out;
}

std::string MacToString(const void* data, size_t len) {
  std::string out;
  auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < len; ++i) {
    char b[4];
    std::snprintf(b, sizeof b, "%s%02x", i ? ":" : "", p[i]);
    out += b;
  }
  return out;
}

Result<std::vector<uint8_t>> MacFromString(const std::string& s, const std::string& what) {
  std::vector<uint8_t> out;
  size_t i = 0;
  while (i < s.size()) {
    unsigned v;
    int n = 0;
    if (std::sscanf(s.c_str() + i, "%2x%n", &v, &n) != 1 || n != 2 || out.size() >= 32)
      return Err(EINVAL) << what << ": not a hardware address: '" << s << "'";
    out.push_back(uint8_t(v));
    i += 2;
    if (i < s.size()) {
      if (s[i] != ':') return Err(EINVAL) << what << ": not a hardware address: '" << s << "'";
      ++i;
      if (i == s.size()) return Err(EINVAL) << what << ": not a hardware address: '" << s << "'";
    }
  }
  return out;
}

}  // namespace kleap::net
