// ReadFile and WriteFileAtomic: contents, errors naming the path, and atomicity (a failed write
// leaves the old target and no temporary file behind).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <set>
#include <string>

#include "eplb/formats.h"
#include "formats/scratch_dir.h"

namespace eplb {
namespace {

using testing::ScratchDir;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(ReadFileTest, ReadsWholeFileLargerThanOneBuffer) {
  ScratchDir dir;
  std::string big(300000, 'x');
  for (size_t i = 0; i < big.size(); i += 97) big[i] = static_cast<char>('a' + i % 26);
  dir.Put("big.txt", big);
  StatusOr<std::string> got = ReadFile(dir / "big.txt");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, big);
}

TEST(ReadFileTest, ReadsEmptyFileAsEmptyString) {
  ScratchDir dir;
  dir.Put("empty", "");
  StatusOr<std::string> got = ReadFile(dir / "empty");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "");
}

TEST(ReadFileTest, MissingFileIsNotFoundAndNamesPathAndReason) {
  ScratchDir dir;
  const std::string path = dir / "missing.json";
  StatusOr<std::string> got = ReadFile(path);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(got.status().message(), path + ": cannot open: No such file or directory");
}

TEST(ReadFileTest, DirectoryIsAnIoErrorNamingPath) {
  ScratchDir dir;
  StatusOr<std::string> got = ReadFile(dir.path().string());
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kIoError);
  EXPECT_EQ(got.status().message(), dir.path().string() + ": cannot read: Is a directory");
}

// An endless device is refused at the limit instead of filling memory (before: read until
// std::bad_alloc, or the OOM killer).
TEST(ReadFileTest, StopsAtTheLimit) {
  ScratchDir dir;
  dir.Put("four", "1234");
  EXPECT_EQ(*ReadFile(dir / "four", 4), "1234");
  StatusOr<std::string> got = ReadFile(dir / "four", 3);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().message(), dir / "four" + ": longer than 3 bytes; not a file this reads");
  if (std::filesystem::exists("/dev/zero")) {
    got = ReadFile("/dev/zero", 1 << 20);
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().message(),
              "/dev/zero: longer than 1048576 bytes; not a file this reads");
  }
}

TEST(WriteFileAtomicTest, CreatesAndReplacesWithoutLeavingTemporaries) {
  ScratchDir dir;
  const std::string path = dir / "out.json";
  ASSERT_TRUE(WriteFileAtomic(path, "first").ok());
  EXPECT_EQ(*ReadFile(path), "first");
  ASSERT_TRUE(WriteFileAtomic(path, "second, longer").ok());
  EXPECT_EQ(*ReadFile(path), "second, longer");
  ASSERT_TRUE(WriteFileAtomic(path, "").ok());
  EXPECT_EQ(*ReadFile(path), "");
  EXPECT_EQ(dir.Entries(), std::set<std::string>{"out.json"});
}

TEST(WriteFileAtomicTest, MissingDirectoryFailsNamingPath) {
  ScratchDir dir;
  const std::string path = dir / "no-such-dir/out.json";
  Status s = WriteFileAtomic(path, "x");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_TRUE(s.message().starts_with(path + ": ")) << s.message();
  EXPECT_TRUE(Contains(s.message(), "No such file or directory")) << s.message();
  EXPECT_TRUE(dir.Entries().empty());
}

// A directory is refused before anything is written: no temporary file, the directory intact.
TEST(WriteFileAtomicTest, DirectoryTargetIsRefusedAndLeftAlone) {
  ScratchDir dir;
  const std::string target = dir / "target";
  std::filesystem::create_directory(target);
  dir.Put("target/inside", "keep me");
  Status s = WriteFileAtomic(target, "new contents");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), target + ": cannot write: Is a directory");
  EXPECT_EQ(dir.Entries(), std::set<std::string>{"target"});
  EXPECT_TRUE(std::filesystem::is_directory(target));
  EXPECT_EQ(*ReadFile(dir / "target/inside"), "keep me");
}

// Renaming over a device or a pipe would replace it (as root, --out /dev/null would replace the
// system's /dev/null): refused, the pipe left as it was. A pipe stands for every such file here,
// since a test must not risk a real device.
TEST(WriteFileAtomicTest, PipeTargetIsRefusedAndLeftAlone) {
  ScratchDir dir;
  const std::string fifo = dir / "fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Status s = WriteFileAtomic(fifo, "x");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            fifo + ": not a regular file (a device, pipe or socket); refusing to replace it");
  EXPECT_TRUE(std::filesystem::is_fifo(fifo));
  EXPECT_EQ(dir.Entries(), std::set<std::string>{"fifo"});
  EXPECT_EQ(CheckOutputFile(fifo).message(), s.message());
  // Through a symlink too.
  std::filesystem::create_symlink(fifo, dir / "link");
  EXPECT_FALSE(WriteFileAtomic(dir / "link", "x").ok());
  EXPECT_TRUE(std::filesystem::is_fifo(fifo));
}

// Through a symlink the file it names is replaced and the link stays, as writing to the path
// would do (before: the link itself was replaced by a file, its target left stale).
TEST(WriteFileAtomicTest, WritesThroughASymlink) {
  ScratchDir dir;
  std::filesystem::create_directory(dir / "real");
  dir.Put("real/map.json", "old");
  std::filesystem::create_symlink(dir / "real/map.json", dir / "link.json");
  ASSERT_TRUE(WriteFileAtomic(dir / "link.json", "new").ok());
  EXPECT_TRUE(std::filesystem::is_symlink(dir / "link.json"));
  EXPECT_EQ(*ReadFile(dir / "real/map.json"), "new");
  EXPECT_EQ(dir.Entries(), (std::set<std::string>{"link.json", "real"}));
  // A dangling link: its target is created.
  std::filesystem::create_symlink(dir / "real/new.json", dir / "dangling.json");
  ASSERT_TRUE(WriteFileAtomic(dir / "dangling.json", "fresh").ok());
  EXPECT_TRUE(std::filesystem::is_symlink(dir / "dangling.json"));
  EXPECT_EQ(*ReadFile(dir / "real/new.json"), "fresh");
}

TEST(WriteFileAtomicTest, CheckOutputFileAcceptsNothingOrARegularFile) {
  ScratchDir dir;
  EXPECT_TRUE(CheckOutputFile(dir / "absent").ok());
  dir.Put("file", "x");
  EXPECT_TRUE(CheckOutputFile(dir / "file").ok());
  EXPECT_EQ(CheckOutputFile("").code(), StatusCode::kInvalidArgument);
}

// A target name just under NAME_MAX makes the temporary name too long: the write fails before
// anything is written, and the existing target keeps its contents.
TEST(WriteFileAtomicTest, FailedTemporaryLeavesOldTargetUntouched) {
  ScratchDir dir;
  const std::string name(250, 'm');
  const std::string target = dir / name;
  dir.Put(name, "old contents");
  Status s = WriteFileAtomic(target, "new contents");
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.message().starts_with(target + ": cannot create temporary file ")) << s.message();
  EXPECT_EQ(*ReadFile(target), "old contents");
  EXPECT_EQ(dir.Entries(), std::set<std::string>{name});
}

TEST(WriteFileAtomicTest, EmptyPathIsRejected) {
  Status s = WriteFileAtomic("", "x");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace eplb
