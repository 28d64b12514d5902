// ReadFile and WriteFileAtomic: contents, errors naming the path, and atomicity (a failed write
// leaves the old target and no temporary file behind).
#include <gtest/gtest.h>

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

// rename() cannot replace a non-empty directory: the write fails after the temporary file was
// written, which must then be removed, and the target left as it was.
TEST(WriteFileAtomicTest, FailedRenameLeavesTargetAndNoTemporary) {
  ScratchDir dir;
  const std::string target = dir / "target";
  std::filesystem::create_directory(target);
  dir.Put("target/inside", "keep me");
  Status s = WriteFileAtomic(target, "new contents");
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(s.message().starts_with(target + ": cannot rename ")) << s.message();
  EXPECT_EQ(dir.Entries(), std::set<std::string>{"target"});
  EXPECT_TRUE(std::filesystem::is_directory(target));
  EXPECT_EQ(*ReadFile(dir / "target/inside"), "keep me");
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
