// The meridian executable: parses the command line and hands over to the node library.

#include <cstdio>
#include <cstring>
#include <string>

#include "meridian/build_info.h"
#include "meridian/cluster/keyring.h"
#include "meridian/config/config.h"
#include "meridian/node/node.h"

namespace {

void usage(FILE* out) {
  std::fprintf(out,
               "usage:\n"
               "  meridian run --config FILE   run one node (SIGHUP reloads, SIGTERM drains)\n"
               "  meridian validate FILE       check a config file\n"
               "  meridian demo                a local demo in front of a built-in upstream\n"
               "  meridian keygen              print a new base64 32-byte cluster key\n"
               "  meridian version             version, git commit, build type\n"
               "  meridian members | health | config get | config apply FILE | keys ...\n"
               "                               the admin API from the command line (meridian\n"
               "                               members --help)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  std::string cmd = argv[1];
  try {
    if (cmd == "run") {
      std::string path;
      for (int i = 2; i < argc; ++i) {
        if ((!std::strcmp(argv[i], "--config") || !std::strcmp(argv[i], "-c")) && i + 1 < argc) {
          path = argv[++i];
        } else if (!std::strncmp(argv[i], "--config=", 9)) {
          path = argv[i] + 9;
        } else {
          std::fprintf(stderr, "meridian run: unexpected argument '%s'\n", argv[i]);
          return 2;
        }
      }
      if (path.empty()) {
        std::fprintf(stderr, "meridian run: --config FILE is required\n");
        return 2;
      }
      return meridian::node::run_node(path);
    }
    if (cmd == "validate") {
      if (argc != 3) {
        std::fprintf(stderr, "usage: meridian validate FILE\n");
        return 2;
      }
      auto result = meridian::node::load_config(argv[2]);
      if (!result.value) {
        for (const auto& e : result.errors) std::printf("%s\n", e.to_string().c_str());
        return 1;
      }
      // The same checks `run` makes of the files the config names.
      std::vector<std::string> notes;
      auto problems = meridian::node::check_external(*result.value, &notes);
      for (const auto& n : notes) std::fprintf(stderr, "%s: note: %s\n", argv[2], n.c_str());
      for (const auto& p : problems) std::printf("%s: %s\n", argv[2], p.c_str());
      if (!problems.empty()) return 1;
      std::printf("ok\n");
      return 0;
    }
    if (cmd == "demo") return meridian::node::run_demo();
    if (meridian::node::is_cli_command(cmd)) return meridian::node::run_cli(argc, argv);
    if (cmd == "keygen") {
      std::printf("%s\n", meridian::cluster::encode_key(meridian::cluster::generate_key()).c_str());
      return 0;
    }
    if (cmd == "version" || cmd == "--version") {
      std::printf("meridian %s (commit %s, %s build)\n", meridian::build_info::version,
                  meridian::build_info::git_commit, meridian::build_info::build_type);
      return 0;
    }
    if (cmd == "help" || cmd == "--help" || cmd == "-h") {
      usage(stdout);
      return 0;
    }
    std::fprintf(stderr, "meridian: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meridian: %s\n", e.what());
    return 1;
  }
}
