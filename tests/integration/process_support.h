#pragma once
// Helpers for tests that run the meridian executable as a real child process.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_support.h"

namespace meridian::testing {

// The executable under test: $MERIDIAN_BIN (set by ctest), else the one beside this test binary.
inline std::string meridian_bin() {
  if (const char* env = std::getenv("MERIDIAN_BIN")) return env;
  return (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "meridian").string();
}

struct command_result {
  int exit_code = -1;
  std::string out;
};

inline command_result run_command(const std::string& args) {
  command_result r;
  FILE* p = ::popen((meridian_bin() + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A `meridian run` child process whose stderr goes to a file.
class child_node {
 public:
  child_node(const std::string& config_path, const std::string& log_path) : log_(log_path) {
    pid_ = ::fork();
    if (pid_ == 0) {
      // Dies with the test: a test binary that crashes must not leave nodes running (orphans of
      // a crashed run kept gossiping and skewed every later benchmark on the machine).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 2);
      ::dup2(fd, 1);
      ::execl(meridian_bin().c_str(), "meridian", "run", "--config", config_path.c_str(),
              static_cast<char*>(nullptr));
      _exit(127);
    }
  }
  ~child_node() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Returns false once the process has exited (reaping it).
  bool running() {
    if (exited_) return false;
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) exited_ = true;
    return !exited_;
  }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // Waits for the process to exit; returns its exit code or -1 on timeout/signal.
  int wait_exit(std::chrono::milliseconds limit = 10s) {
    int status = 0;
    bool done = eventually(
        [&] {
          pid_t r = ::waitpid(pid_, &status, WNOHANG);
          return r == pid_;
        },
        limit);
    if (!done) return -1;
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  // Peak resident set size in KiB (VmHWM), or -1.
  long peak_rss_kib() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string log_;
};

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

}  // namespace meridian::testing
