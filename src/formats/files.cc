// ReadFile and WriteFileAtomic: plain POSIX I/O so every failure has an errno to report.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "eplb/formats.h"

namespace eplb {
namespace {

// The text for an errno value; std::error_code is thread-safe where strerror is not.
std::string Reason(int err) { return std::error_code(err, std::generic_category()).message(); }

// Closes a file descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and returns close()'s errno, or 0.
  int Close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

Status WriteAll(int fd, const std::string& contents) {
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IoError(Reason(errno));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Writes and syncs `tmp`, then renames it over `target` (`path`, or the file its symlink names);
// errors name `path`. Leaves `tmp` behind on failure.
Status WriteAndRename(const std::string& path, const std::string& target, const std::string& tmp,
                      const std::string& contents) {
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return Status::IoError(
        fmt::format("{}: cannot create temporary file {}: {}", path, tmp, Reason(errno)));
  }
  Status written = WriteAll(fd.get(), contents);
  if (!written.ok()) {
    return Status::IoError(fmt::format("{}: cannot write {}: {}", path, tmp, written.message()));
  }
  if (::fsync(fd.get()) != 0) {
    return Status::IoError(fmt::format("{}: cannot sync {}: {}", path, tmp, Reason(errno)));
  }
  if (const int err = fd.Close(); err != 0) {
    return Status::IoError(fmt::format("{}: cannot close {}: {}", path, tmp, Reason(err)));
  }
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    return Status::IoError(
        fmt::format("{}: cannot rename {} over it: {}", path, tmp, Reason(errno)));
  }
  return Status::Ok();
}

}  // namespace

Status CheckOutputFile(const std::string& path) {
  if (path.empty()) return Status::Invalid("cannot write a file with an empty path");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {  // follows symlinks
    if (errno != ENOENT) {
      return Status::IoError(fmt::format("{}: cannot stat: {}", path, Reason(errno)));
    }
    // Absent (or a dangling symlink, which the write follows): nothing there to replace, but
    // its folder must exist.
    const std::string dir = DirectoryOf(path);
    struct stat dir_st {};
    if (::stat(dir.c_str(), &dir_st) != 0) {
      return Status::IoError(fmt::format("{}: cannot write: {}: {}", path, dir, Reason(errno)));
    }
    if (!S_ISDIR(dir_st.st_mode)) {
      return Status::IoError(fmt::format("{}: cannot write: {}: {}", path, dir, Reason(ENOTDIR)));
    }
    return Status::Ok();
  }
  if (S_ISDIR(st.st_mode)) {
    return Status::IoError(fmt::format("{}: cannot write: {}", path, Reason(EISDIR)));
  }
  if (!S_ISREG(st.st_mode)) {
    return Status::IoError(fmt::format(
        "{}: not a regular file (a device, pipe or socket); refusing to replace it", path));
  }
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, const std::string& contents) {
  EPLB_RETURN_IF_ERROR(CheckOutputFile(path));
  // Through a symlink: the file it names is replaced and the link stays (as writing to the path
  // would do); the temporary file goes next to that file, so the rename stays on its filesystem.
  namespace fs = std::filesystem;
  fs::path target = path;
  std::error_code ec;
  // Followed link by link, so that a dangling link names the file to create (weakly_canonical
  // would stop at the link itself); 40 links at most, as the kernel allows.
  for (int links = 0; fs::is_symlink(fs::symlink_status(target, ec)); ++links) {
    const fs::path next = fs::read_symlink(target, ec);
    if (ec || links == 40) {
      return Status::IoError(fmt::format("{}: cannot resolve the symlink: {}", path,
                                         ec ? ec.message() : Reason(ELOOP)));
    }
    target = next.is_absolute() ? next : target.parent_path() / next;
  }
  // pid + counter keeps concurrent writers (threads or processes) off each other's temp file.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = fmt::format("{}.tmp.{}.{}", target.string(), ::getpid(), counter++);
  Status s = WriteAndRename(path, target.string(), tmp, contents);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  // Make the rename itself durable. Best effort: the new file is already in place, and a failure
  // here says nothing about its contents.
  Fd dir(::open(DirectoryOf(target.string()).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() >= 0) (void)::fsync(dir.get());
  return Status::Ok();
}

StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    const std::string message = fmt::format("{}: cannot open: {}", path, Reason(err));
    return err == ENOENT ? Status::NotFound(message) : Status::IoError(message);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Status::IoError(fmt::format("{}: cannot stat: {}", path, Reason(errno)));
  }
  if (S_ISDIR(st.st_mode)) {
    return Status::IoError(fmt::format("{}: cannot read: {}", path, Reason(EISDIR)));
  }
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IoError(fmt::format("{}: cannot read: {}", path, Reason(errno)));
    }
    if (static_cast<size_t>(n) > max_bytes - out.size()) {
      return Status::IoError(
          fmt::format("{}: longer than {} bytes; not a file this reads", path, max_bytes));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace eplb
