// The image format: round trip through a directory set, and every kind of damage a
// reader must refuse with a message that names the image.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "engine/engine.h"
#include "engine/images/image_set.h"
#include "engine/images/pstree.pb.h"

namespace kleap {
namespace {

class ImageSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kleap-image-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }

  // A set with one message, one raw blob and an inventory.
  void WriteSet(uint32_t version = kImageFormatVersion) {
    auto w = CreateDirImageSet(dir_);
    ASSERT_TRUE(w) << w.error().ToString();
    img::PsTree tree;
    tree.set_root_pid(42);
    auto* t = tree.add_tasks();
    t->set_pid(42);
    t->add_tids(42);
    t->set_comm("demo");
    ASSERT_TRUE((*w)->WriteMessage("pstree.img", tree));
    auto blob = (*w)->CreateBlob("pages-42.img");
    ASSERT_TRUE(blob);
    std::string page(8192, 'x');
    ASSERT_TRUE((*blob)->Write(page.data(), page.size()));
    ASSERT_TRUE((*blob)->Close());
    img::Inventory inv;
    inv.set_format_version(version);
    inv.set_root_pid(42);
    ASSERT_TRUE((*w)->Commit(inv));
  }

  void FlipByte(const std::string& name, off_t at) {
    int fd = open((dir_ + "/" + name).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c;
    ASSERT_EQ(pread(fd, &c, 1, at), 1);
    c ^= 0x40;
    ASSERT_EQ(pwrite(fd, &c, 1, at), 1);
    close(fd);
  }

  std::string dir_;
};

TEST_F(ImageSetTest, RoundTrip) {
  WriteSet();
  auto r = OpenDirImageSet(dir_);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ((*r)->inventory().images_size(), 2);
  img::PsTree tree;
  ASSERT_TRUE((*r)->ReadMessage("pstree.img", &tree));
  EXPECT_EQ(tree.root_pid(), 42);
  EXPECT_EQ(tree.tasks(0).comm(), "demo");
  auto blob = (*r)->OpenBlob("pages-42.img");
  ASSERT_TRUE(blob);
  EXPECT_EQ((*blob)->size(), 8192u);
  auto p = (*blob)->Map(4096, 4096);
  ASSERT_TRUE(p);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(*p), 4096), std::string(4096, 'x'));
  EXPECT_TRUE((*r)->VerifyImage("pages-42.img"));
  struct stat st;
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u) << "a set holds every secret in memory: root only";
}

TEST_F(ImageSetTest, NoInventoryIsNotASet) {
  auto w = CreateDirImageSet(dir_);
  ASSERT_TRUE(w);
  img::PsTree tree;
  ASSERT_TRUE((*w)->WriteMessage("pstree.img", tree));
  auto r = OpenDirImageSet(dir_);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("no inventory.img"), std::string::npos)
      << r.error().ToString();
}

TEST_F(ImageSetTest, WrongVersionIsRefused) {
  WriteSet(kImageFormatVersion + 1);
  auto r = OpenDirImageSet(dir_);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("format version"), std::string::npos) << r.error().ToString();
}

TEST_F(ImageSetTest, FlippedByteInMessageIsDetected) {
  WriteSet();
  FlipByte("pstree.img", 14);
  auto r = OpenDirImageSet(dir_);
  ASSERT_TRUE(r);
  img::PsTree tree;
  auto m = (*r)->ReadMessage("pstree.img", &tree);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().ToString().find("pstree.img is damaged: checksum mismatch"),
            std::string::npos)
      << m.error().ToString();
}

TEST_F(ImageSetTest, FlippedByteInBlobIsDetected) {
  WriteSet();
  FlipByte("pages-42.img", 5000);
  auto r = OpenDirImageSet(dir_);
  ASSERT_TRUE(r);
  auto v = (*r)->VerifyImage("pages-42.img");
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().ToString().find("pages-42.img is damaged"), std::string::npos)
      << v.error().ToString();
}

TEST_F(ImageSetTest, TruncatedBlobIsDetected) {
  WriteSet();
  ASSERT_EQ(truncate((dir_ + "/pages-42.img").c_str(), 4096), 0);
  auto r = OpenDirImageSet(dir_);
  ASSERT_TRUE(r);
  auto b = (*r)->OpenBlob("pages-42.img");
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().ToString().find("size 4096, inventory says 8192"), std::string::npos)
      << b.error().ToString();
}

TEST_F(ImageSetTest, UnlistedImageIsRefused) {
  auto r0 = OpenDirImageSet(dir_);
  ASSERT_FALSE(r0);
  auto w = CreateDirImageSet(dir_);
  ASSERT_TRUE(w);
  img::Inventory inv;
  inv.set_format_version(kImageFormatVersion);
  ASSERT_TRUE((*w)->Commit(inv));
  std::ofstream(dir_ + "/core-7.img") << "stray";
  auto r = OpenDirImageSet(dir_);
  ASSERT_TRUE(r);
  auto v = ValidateImages(**r);
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().ToString().find("core-7.img is in the set but not in its inventory"),
            std::string::npos)
      << v.error().ToString();
  img::PsTree tree;
  auto m = (*r)->ReadMessage("core-7.img", &tree);
  ASSERT_FALSE(m);
  EXPECT_NE(m.error().ToString().find("not listed in the inventory"), std::string::npos);
}

// An inventory is untrusted: a name in it that reaches outside the set (images_fuzz
// found `../x` opened as a page blob), or one listed twice, refuses the whole set.
TEST_F(ImageSetTest, BadNamesInTheInventoryAreRefused) {
  WriteSet();
  std::ofstream(dir_ + "/../kleap-image-test-outside") << "outside";
  for (const std::string& bad :
       std::vector<std::string>{"../kleap-image-test-outside", "", ".hidden", "a/b",
                                "inventory.img", std::string("a\nb\0c", 5), "pstree.img"}) {
    img::Inventory inv;
    {
      std::ifstream in(dir_ + "/inventory.img");
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      ASSERT_TRUE(UnframeMessage("inventory.img", bytes, &inv));
    }
    inv.add_images()->set_name(bad);
    {
      std::ofstream out(dir_ + "/inventory.img", std::ios::trunc);
      out << FrameMessage(inv);
    }
    auto r = OpenDirImageSet(dir_);
    ASSERT_FALSE(r) << "'" << bad << "' was taken";
    std::string why = r.error().ToString();
    EXPECT_NE(why.find(bad == "pstree.img" ? "image pstree.img is listed twice"
                                           : "inventory.img: entry 2 has a bad image name"),
              std::string::npos)
        << why;
    inv.mutable_images()->RemoveLast();
    std::ofstream(dir_ + "/inventory.img", std::ios::trunc) << FrameMessage(inv);
  }
  std::remove((dir_ + "/../kleap-image-test-outside").c_str());
  ASSERT_TRUE(OpenDirImageSet(dir_));
}

TEST_F(ImageSetTest, DumpNeedsAnEmptyDirectory) {
  std::ofstream(dir_ + "/leftover") << "x";
  auto w = CreateDirImageSet(dir_);
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().ToString().find("is not empty"), std::string::npos);
}

TEST(ImageFrame, BadFramesAreErrorsNotCrashes) {
  img::PsTree tree;
  tree.set_root_pid(7);
  for (int i = 0; i < 20; ++i) tree.add_tasks()->set_comm("task" + std::to_string(i));
  std::string good = FrameMessage(tree);
  img::PsTree out;
  ASSERT_TRUE(UnframeMessage("x", good, &out));
  EXPECT_EQ(out.tasks_size(), 20);
  EXPECT_FALSE(UnframeMessage("x", "", &out));
  EXPECT_FALSE(UnframeMessage("x", "KLEAPIM1", &out));
  EXPECT_FALSE(UnframeMessage("x", "NOTKLEAP" + good.substr(8), &out));
  EXPECT_FALSE(UnframeMessage("x", good.substr(0, good.size() - 1), &out));
  // Random damage: any outcome but a crash; a changed length is always refused.
  std::mt19937 rng(1234);
  for (int i = 0; i < 5000; ++i) {
    std::string bad = good;
    int flips = 1 + int(rng() % 8);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] = char(rng());
    if (rng() % 4 == 0) bad.resize(rng() % bad.size());
    img::PsTree t;
    auto r = UnframeMessage("x", bad, &t);
    if (bad.size() != good.size()) {
      EXPECT_FALSE(r);
    }
  }
}

}  // namespace
}  // namespace kleap
