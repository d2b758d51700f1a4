// Credentials: uids, gids, supplementary groups, the five capability sets, securebits
// and no_new_privs. Linux keeps credentials per thread; every thread of a task gets the
// task's. The order of the restore matters: each step still has the privilege it needs.
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/prctl.h>
#include <linux/securebits.h>
#include <sys/prctl.h>

#include "engine/creds.h"

#include "engine/base/log.h"
#include "engine/base/proc.h"
#include "engine/scratch_page.h"

namespace kleap {
namespace {

struct CapData {
  __user_cap_header_struct hdr;
  __user_cap_data_struct data[2];
};

int LastCap() {
  auto s = ReadFileToString("/proc/sys/kernel/cap_last_cap");
  return s ? std::atoi(s->c_str()) : 40;
}

}  // namespace

constexpr uint32_t kNoLoginuid = 4294967295u;  // AUDIT_UID_UNSET

Result<void> DumpCredsOf(RemoteSyscalls& rs, const TaskInfo& task, img::Creds* c) {
  auto st = KLEAP_TRY_CTX(ReadStatus(task.pid), "task " << task.pid);
  auto uids = KLEAP_TRY(st.GetIds("Uid"));
  auto gids = KLEAP_TRY(st.GetIds("Gid"));
  if (uids.size() != 4 || gids.size() != 4)
    return Err(EINVAL) << "task " << task.pid << ": bad Uid/Gid in status";
  // (No audit in the kernel: no file, never set.)
  c->set_loginuid(kNoLoginuid);
  if (auto l = ReadFileToString(ProcPath(task.pid, "loginuid")); l)
    c->set_loginuid(uint32_t(KLEAP_TRY(ParseNumber(std::string(Trim(*l)), 10, "loginuid"))));
  c->set_uid(uids[0]);
  c->set_euid(uids[1]);
  c->set_suid(uids[2]);
  c->set_fsuid(uids[3]);
  c->set_gid(gids[0]);
  c->set_egid(gids[1]);
  c->set_sgid(gids[2]);
  c->set_fsgid(gids[3]);
  auto groups = st.GetIds("Groups");
  if (groups)
    for (uint32_t g : *groups) c->add_groups(g);
  c->set_cap_inh(KLEAP_TRY(st.GetHex("CapInh")));
  c->set_cap_prm(KLEAP_TRY(st.GetHex("CapPrm")));
  c->set_cap_eff(KLEAP_TRY(st.GetHex("CapEff")));
  c->set_cap_bnd(KLEAP_TRY(st.GetHex("CapBnd")));
  c->set_cap_amb(st.GetHex("CapAmb").value_or(0));
  c->set_no_new_privs(st.GetInt("NoNewPrivs").value_or(0) != 0);
  // Only the task can tell its securebits.
  uint64_t bits = KLEAP_TRY_CTX(
      WithArch(task.arch,
               [&](auto a) { return rs.Call(a.kKind, decltype(a)::kPrctl, PR_GET_SECUREBITS); }),
      "task " << task.pid << ": read securebits");
  c->set_securebits(uint32_t(bits));
  return Ok();
}

Result<void> RestoreCreds(RemoteSyscalls& rs, pid_t tid, RemotePtr<> scratch, const img::Creds& c) {
  constexpr ArchKind k64 = ArchKind::kX86_64;
  std::string who = "thread " + std::to_string(tid);
  auto call = [&](long nr, SyscallArg a1 = 0, SyscallArg a2 = 0, SyscallArg a3 = 0) {
    return rs.Call(k64, nr, a1, a2, a3);
  };

  // The audit login uid, which only the thread itself may write, while it still has
  // CAP_AUDIT_CONTROL (before the uid change).
  if (c.loginuid() != kNoLoginuid) {
    std::string path = "/proc/thread-self/loginuid", value = std::to_string(c.loginuid());
    RemotePtr<> str = scratch + 256;
    KLEAP_TRY(WriteRemote(tid, scratch, path.c_str(), path.size() + 1));
    KLEAP_TRY(WriteRemote(tid, str, value.data(), value.size()));
    int fd =
        int(KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kOpenat, AT_FDCWD, scratch, O_WRONLY | O_CLOEXEC),
                          who << ": open " << path));
    auto w = rs.Call(k64, X64Arch::kWrite, RemoteFd(fd), str, value.size());
    (void)rs.Call(k64, X64Arch::kClose, RemoteFd(fd));
    KLEAP_TRY_CTX(std::move(w), who << ": set loginuid " << c.loginuid());
  }

  if (c.groups_size() > 65536) return Err(EINVAL) << "creds: " << c.groups_size() << " groups";
  std::vector<uint32_t> groups(c.groups().begin(), c.groups().end());
  if (groups.size() * 4 > ScratchPage::kDataSize)
    return Err(EINVAL) << "creds: too many groups for the scratch page";
  if (!groups.empty()) KLEAP_TRY(WriteRemote(tid, scratch, groups.data(), groups.size() * 4));
  KLEAP_TRY_CTX(call(X64Arch::kSetgroups, groups.size(), scratch), who << ": setgroups");
  for (int cap = 0; cap <= LastCap(); ++cap)
    if (!(c.cap_bnd() >> cap & 1))
      KLEAP_TRY_CTX(call(X64Arch::kPrctl, PR_CAPBSET_DROP, uint64_t(cap)),
                    who << ": drop capability " << cap << " from the bounding set");
  KLEAP_TRY_CTX(call(X64Arch::kSetresgid, c.gid(), c.egid(), c.sgid()), who << ": setresgid");
  (void)call(X64Arch::kSetfsgid, c.fsgid());  // returns the old fsgid, never an error
  KLEAP_TRY_CTX(call(X64Arch::kPrctl, PR_SET_SECUREBITS, SECBIT_KEEP_CAPS),
                who << ": keep capabilities over the uid change");
  KLEAP_TRY_CTX(call(X64Arch::kSetresuid, c.uid(), c.euid(), c.suid()), who << ": setresuid");

  auto capset = [&](uint64_t prm, uint64_t eff, uint64_t inh) -> Result<void> {
    CapData d{};
    d.hdr.version = _LINUX_CAPABILITY_VERSION_3;
    d.data[0] = {uint32_t(eff), uint32_t(prm), uint32_t(inh)};
    d.data[1] = {uint32_t(eff >> 32), uint32_t(prm >> 32), uint32_t(inh >> 32)};
    KLEAP_TRY(WriteRemote(tid, scratch, &d, sizeof d));
    KLEAP_TRY_CTX(call(X64Arch::kCapset, scratch, scratch + sizeof d.hdr), who << ": capset");
    return Ok();
  };
  // Take back the effective set that the uid change cleared, for the steps below.
  auto cur = KLEAP_TRY(ReadStatus(tid));
  uint64_t prm_now = KLEAP_TRY(cur.GetHex("CapPrm"));
  KLEAP_TRY(capset(prm_now, prm_now, c.cap_inh() & prm_now));
  (void)call(X64Arch::kSetfsuid, c.fsuid());
  KLEAP_TRY_CTX(call(X64Arch::kPrctl, PR_SET_SECUREBITS, c.securebits()),
                who << ": set securebits " << c.securebits());
  KLEAP_TRY(capset(c.cap_prm(), c.cap_prm(), c.cap_inh()));
  KLEAP_TRY_CTX(call(X64Arch::kPrctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0),
                who << ": clear ambient capabilities");
  for (int cap = 0; cap <= LastCap(); ++cap)
    if (c.cap_amb() >> cap & 1)
      KLEAP_TRY_CTX(call(X64Arch::kPrctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, uint64_t(cap)),
                    who << ": raise ambient capability " << cap);
  if (c.no_new_privs())
    KLEAP_TRY_CTX(call(X64Arch::kPrctl, PR_SET_NO_NEW_PRIVS, 1), who << ": no_new_privs");
  KLEAP_TRY(capset(c.cap_prm(), c.cap_eff(), c.cap_inh()));
  return Ok();
}

}  // namespace kleap
