// inspect and validate: a set decoded for people, and checked for the restorer.
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include <sys/capability.h>

#include <cstring>
#include <set>
#include <sstream>

#include "engine/context.h"
#include "engine/images/mounts.pb.h"
#include "engine/ipc.h"
#include "engine/net/net.pb.h"
#include "engine/net/netconf.h"
#include "engine/restore_plan.h"

namespace kleap {
namespace {

bool IsRawBlob(const std::string& name) {
  auto ends = [&](const char* s) {
    size_t n = strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return name.rfind("pages-", 0) == 0 || name.rfind("shmem-", 0) == 0 ||
         name.rfind("ghost-", 0) == 0 || (name.rfind("tmpfs-", 0) == 0 && ends(".data")) ||
         name == kModulesImage;
}

std::unique_ptr<google::protobuf::Message> MessageFor(const std::string& name) {
  auto starts = [&](const char* p) { return name.rfind(p, 0) == 0; };
  if (name == kPsTreeImage) return std::make_unique<img::PsTree>();
  if (name == kFilesImage) return std::make_unique<img::FileTable>();
  if (name == kShmemTableImage) return std::make_unique<img::ShmemTable>();
  if (name == kIpcImage) return std::make_unique<img::IpcNamespace>();
  if (starts("core-")) return std::make_unique<img::TaskCore>();
  if (starts("mm-")) return std::make_unique<img::MmImage>();
  if (starts("pagemap-")) return std::make_unique<img::Pagemap>();
  if (starts("fdtable-")) return std::make_unique<img::FdTable>();
  if (name == "mounts.img") return std::make_unique<img::MountTable>();
  if (name == net::kNetNsImage) return std::make_unique<img::NetNs>();
  if (starts("tmpfs-")) return std::make_unique<img::TmpfsImage>();
  return nullptr;
}

// "cap_chown,cap_kill" for a capability mask, with libcap's names.
std::string CapNames(uint64_t mask) {
  if (mask == 0) return "none";
  std::string out;
  for (int cap = 0; cap < 64; ++cap) {
    if (!(mask >> cap & 1)) continue;
    char* name = cap_to_name(cap_value_t(cap));
    out += (out.empty() ? "" : ",") + std::string(name ? name : std::to_string(cap));
    cap_free(name);
  }
  return out;
}

std::string DescribeCreds(const img::Creds& c) {
  std::ostringstream os;
  os << "# uid " << c.uid() << "/" << c.euid() << "/" << c.suid() << "/" << c.fsuid() << ", gid "
     << c.gid() << "/" << c.egid() << "/" << c.sgid() << "/" << c.fsgid() << "\n"
     << "# effective: " << CapNames(c.cap_eff()) << "\n"
     << "# permitted: " << CapNames(c.cap_prm()) << "\n"
     << "# inheritable: " << CapNames(c.cap_inh()) << ", ambient: " << CapNames(c.cap_amb())
     << "\n";
  return os.str();
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

}  // namespace

Result<std::string> InspectImages(ImageReader& images, bool json) {
  const img::Inventory& inv = images.inventory();
  std::ostringstream os;
  if (json) {
    os << "{\"inventory\":" << ToJson(inv) << ",\"images\":{";
  } else {
    os << "image set " << images.Describe() << "\n"
       << "  format version " << inv.format_version() << ", kleap " << inv.tool_version() << "\n"
       << "  dumped on " << inv.kernel_release() << " (" << inv.arch() << "), boot "
       << inv.boot_id() << "\n"
       << "  root pid " << inv.root_pid() << ", " << inv.images_size() << " images\n";
  }
  bool first = true;
  for (auto& e : inv.images()) {
    if (IsRawBlob(e.name())) {
      if (!json) os << "\n== " << e.name() << ": raw, " << e.size() << " bytes\n";
      continue;
    }
    auto msg = MessageFor(e.name());
    if (!msg) return Err(EINVAL) << "image " << e.name() << ": unknown kind";
    KLEAP_TRY(images.ReadMessage(e.name(), msg.get()));
    if (json) {
      os << (first ? "" : ",") << "\"" << e.name() << "\":" << ToJson(*msg);
      first = false;
    } else {
      std::string note;
      if (auto* core = dynamic_cast<img::TaskCore*>(msg.get())) {
        for (auto& th : *core->mutable_threads())
          th.set_xstate("<" + std::to_string(th.xstate().size()) + " bytes>");
        note = DescribeCreds(core->creds());
      }
      if (auto* mm = dynamic_cast<img::MmImage*>(msg.get())) {
        mm->set_vdso("<" + std::to_string(mm->vdso().size()) + " bytes>");
        mm->set_auxv("<" + std::to_string(mm->auxv().size()) + " bytes>");
      }
      std::string text;
      google::protobuf::TextFormat::PrintToString(*msg, &text);
      os << "\n== " << e.name() << "\n" << note << text;
    }
  }
  if (json) os << "}}\n";
  return os.str();
}

Result<void> ValidateImages(ImageReader& images) {
  const img::Inventory& inv = images.inventory();
  for (auto& e : inv.images()) {
    if (!IsRawBlob(e.name()) && !MessageFor(e.name()))
      return Err(EINVAL) << "image " << e.name() << ": unknown kind";
    KLEAP_TRY(images.VerifyImage(e.name()));
  }
  std::set<std::string> listed;
  for (auto& e : inv.images()) listed.insert(e.name());
  for (auto& name : KLEAP_TRY(images.ListStored()))
    if (!listed.count(name) && name != kInventoryName)
      return Err(EINVAL) << "image " << name << " is in the set but not in its inventory";
  RestorePlan plan = KLEAP_TRY(LoadPlan(images));
  if (inv.root_pid() != plan.pstree.root_pid() ||
      plan.pstree.tasks(0).pid() != plan.pstree.root_pid())
    return Err(EINVAL) << "pstree.img: root pid " << plan.pstree.root_pid()
                       << " disagrees with the inventory's " << inv.root_pid();
  KLEAP_TRY(CheckPageBlobSizes(images, plan));
  for (auto& f : plan.files.files())
    if (f.has_reg() && f.reg().deleted() && !images.Find(f.reg().ghost_blob()))
      return Err(EINVAL) << "files.img: deleted file " << f.reg().path() << " has no content image";
  // Restorable here and now: the files it maps are the ones dumped, and its PIDs are free.
  KLEAP_TRY(CheckFileIdentities(plan, images));
  KLEAP_TRY(CheckPidsFree(plan));
  return Ok();
}

}  // namespace kleap
