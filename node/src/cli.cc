// The operator's command line against a node's admin API: `meridian members`, `health`,
// `config get`, `config apply FILE` (declarative: the diff against the cluster's config, then
// the changes) and `keys list|create|revoke`. Tables for people, --json for scripts.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "meridian/admin/admin_client.h"
#include "meridian/config/config.h"
#include "meridian/config/config_json.h"
#include "meridian/node/node.h"

namespace meridian::node {
namespace {

using nlohmann::json;

struct options {
  admin_endpoint endpoint;
  bool json_output = false;
  bool dry_run = false;
  bool keep_extra = false;  // config apply: leave objects the file does not name
  std::string expires_in;   // keys create
  std::vector<std::string> args;
};

void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: meridian COMMAND [--admin URL] [--token-file FILE] [--json]\n"
      "  members                      the cluster's members and their states\n"
      "  members forget ID            declare a dead member gone for good (strict rate\n"
      "                               limits stop counting it for their majorities)\n"
      "  health                       the cluster's health as this node sees it\n"
      "  config get                   routes, upstreams and consumers in effect\n"
      "  config apply FILE            show what FILE changes, then apply it\n"
      "      [--dry-run] [--no-delete]\n"
      "  keys list CONSUMER           a consumer's API keys\n"
      "  keys create CONSUMER [--expires-in 30d]\n"
      "  keys revoke CONSUMER KEY_ID\n"
      "The token comes from --token-file, MERIDIAN_TOKEN or MERIDIAN_TOKEN_FILE; the admin\n"
      "API from --admin (default http://127.0.0.1:9901). https: --ca-file, and\n"
      "--cert/--key for an admin API that asks for a client certificate.\n");
}

std::string read_file(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot read " + path;
    return {};
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// Parses flags (anywhere) and positional arguments. Returns an error message or "".
std::string parse_options(int argc, char** argv, int from, options* o) {
  std::string token_file;
  for (int i = from; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    if (a == "--admin") {
      if (!value(&o->endpoint.url)) return "--admin needs a URL";
    } else if (a == "--token-file") {
      if (!value(&token_file)) return "--token-file needs a file";
    } else if (a == "--ca-file") {
      if (!value(&o->endpoint.ca_file)) return "--ca-file needs a file";
    } else if (a == "--cert") {
      if (!value(&o->endpoint.cert_file)) return "--cert needs a file";
    } else if (a == "--key") {
      if (!value(&o->endpoint.key_file)) return "--key needs a file";
    } else if (a == "--expires-in") {
      if (!value(&o->expires_in)) return "--expires-in needs a duration";
    } else if (a == "--json") {
      o->json_output = true;
    } else if (a == "--dry-run") {
      o->dry_run = true;
    } else if (a == "--no-delete") {
      o->keep_extra = true;
    } else if (a == "--help" || a == "-h") {
      o->args.insert(o->args.begin(), "help");
    } else if (a.size() > 1 && a[0] == '-') {
      return "unknown option " + a;
    } else {
      o->args.push_back(a);
    }
  }
  if (token_file.empty()) {
    if (const char* t = std::getenv("MERIDIAN_TOKEN"); t && *t) {
      o->endpoint.token = t;
    } else if (const char* f = std::getenv("MERIDIAN_TOKEN_FILE"); f && *f) {
      token_file = f;
    }
  }
  if (!token_file.empty()) {
    std::string error;
    o->endpoint.token = trim_line(read_file(token_file, &error));
    if (!error.empty()) return error;
  }
  if (o->endpoint.cert_file.empty() != o->endpoint.key_file.empty())
    return "--cert and --key go together";
  return {};
}

// Calls the admin API; on failure prints why (the node's JSON error message when it sent one)
// and returns nullopt.
std::optional<json> call(const options& o, const std::string& method, const std::string& path,
                         const std::string& body = {}, int* status = nullptr) {
  auto r = admin_call(o.endpoint, method, path, body);
  if (status) *status = r.status;
  if (r.status == 0) {
    std::fprintf(stderr, "meridian: %s\n", r.error.c_str());
    return std::nullopt;
  }
  auto j = json::parse(r.body, nullptr, false);
  if (r.status / 100 != 2) {
    std::string why = j.is_object() && j.contains("message") && j["message"].is_string()
                          ? j["message"].get<std::string>()
                          : r.body;
    std::fprintf(stderr, "meridian: %s %s: %d %s\n", method.c_str(), path.c_str(), r.status,
                 why.c_str());
    if (r.status == 401) std::fprintf(stderr, "meridian: check the admin token\n");
    return std::nullopt;
  }
  if (j.is_discarded()) {
    std::fprintf(stderr, "meridian: %s %s: the answer is not JSON\n", method.c_str(), path.c_str());
    return std::nullopt;
  }
  return j;
}

std::string text_of(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_array()) {
    std::string out;
    for (const auto& e : v) out += (out.empty() ? "" : ",") + text_of(e);
    return out;
  }
  return v.dump();
}

// Prints rows under a header, each column as wide as its widest cell.
void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size() && c < width.size(); ++c)
      width[c] = std::max(width[c], r[c].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (size_t c = 0; c < header.size(); ++c) {
      std::string cell = c < cells.size() ? cells[c] : "";
      out += cell;
      if (c + 1 < header.size()) out += std::string(width[c] - cell.size() + 2, ' ');
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    std::printf("%s\n", out.c_str());
  };
  line(header);
  for (const auto& r : rows) line(r);
}

int members(const options& o) {
  auto j = call(o, "GET", "/cluster/members");
  if (!j) return 1;
  if (o.json_output) {
    std::printf("%s\n", j->dump(2).c_str());
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& m : (*j)["members"]) {
    rows.push_back({text_of(m.value("id", json())), text_of(m.value("region", json())),
                    text_of(m.value("zone", json())), text_of(m.value("address", json())),
                    text_of(m.value("state", json())), text_of(m.value("incarnation", json()))});
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    return std::tie(a[1], a[0]) < std::tie(b[1], b[0]);
  });
  print_table({"ID", "REGION", "ZONE", "ADDRESS", "STATE", "INCARNATION"}, rows);
  return 0;
}

int forget_member(const options& o, const std::string& id) {
  auto j = call(o, "DELETE", "/cluster/members/" + id);
  if (!j) return 1;
  if (o.json_output) {
    std::printf("%s\n", j->dump(2).c_str());
  } else {
    std::printf("forgot %s: strict rate limits no longer count it\n", id.c_str());
  }
  return 0;
}

int health(const options& o) {
  auto j = call(o, "GET", "/cluster/health");
  if (!j) return 1;
  if (o.json_output) {
    std::printf("%s\n", j->dump(2).c_str());
    return 0;
  }
  const json& h = *j;
  std::printf("status:          %s\n", text_of(h.value("status", json())).c_str());
  std::printf("self:            %s\n", text_of(h.value("self", json())).c_str());
  std::printf("config version:  %s%s\n", text_of(h.value("config_version", json())).c_str(),
              h.value("converged", false) ? " (converged)" : " (not converged)");
  if (h.contains("members")) {
    const auto& m = h["members"];
    std::printf(
        "members:         %s alive, %s suspect, %s dead, %s left\n",
        text_of(m.value("alive", json(0))).c_str(), text_of(m.value("suspect", json(0))).c_str(),
        text_of(m.value("dead", json(0))).c_str(), text_of(m.value("left", json(0))).c_str());
  }
  if (h.contains("regions") && h["regions"].is_object()) {
    std::printf("\n");
    std::vector<std::vector<std::string>> rows;
    const json rtt = h.value("region_rtt_ms", json::object());
    for (const auto& [region, counts] : h["regions"].items()) {
      rows.push_back({region, text_of(counts.value("alive", json(0))),
                      text_of(counts.value("suspect", json(0))),
                      text_of(counts.value("dead", json(0))),
                      rtt.contains(region) ? text_of(rtt[region]) + " ms" : "-"});
    }
    print_table({"REGION", "ALIVE", "SUSPECT", "DEAD", "RTT"}, rows);
  }
  return h.value("status", std::string()) == "healthy" ? 0 : 3;
}

std::string match_text(const json& m) {
  std::string out;
  for (const char* k : {"path", "path_prefix", "path_regex", "host"}) {
    if (m.contains(k)) out += (out.empty() ? "" : " ") + std::string(k) + "=" + text_of(m[k]);
  }
  if (m.contains("methods")) out += (out.empty() ? "" : " ") + text_of(m["methods"]);
  return out.empty() ? "*" : out;
}

int config_get(const options& o) {
  auto j = call(o, "GET", "/config");
  if (!j) return 1;
  if (o.json_output) {
    std::printf("%s\n", j->dump(2).c_str());
    return 0;
  }
  std::printf("config version %s\n\n", text_of(j->value("version", json())).c_str());
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : j->value("routes", json::array())) {
    std::string extra;
    if (r.contains("auth")) extra += "auth ";
    if (r.contains("rate_limit")) extra += "rate_limit ";
    if (r.contains("grpc_transcode")) extra += "grpc_transcode ";
    if (r.value("websocket", false)) extra += "websocket ";
    rows.push_back({text_of(r.value("name", json())), match_text(r.value("match", json::object())),
                    text_of(r.value("upstream", json())), trim_line(extra)});
  }
  print_table({"ROUTE", "MATCH", "UPSTREAM", "POLICIES"}, rows);
  std::printf("\n");
  rows.clear();
  for (const auto& u : j->value("upstreams", json::array())) {
    std::string targets;
    for (const auto& t : u.value("targets", json::array())) {
      targets += (targets.empty() ? "" : ",") +
                 (t.is_object() ? text_of(t.value("address", json())) : text_of(t));
    }
    rows.push_back({text_of(u.value("name", json())), text_of(u.value("protocol", json("http1"))),
                    text_of(u.value("balance", json())), targets});
  }
  print_table({"UPSTREAM", "PROTOCOL", "BALANCE", "TARGETS"}, rows);
  std::printf("\n");
  rows.clear();
  for (const auto& c : j->value("consumers", json::array())) {
    rows.push_back({text_of(c.value("id", json())), text_of(c.value("groups", json::array()))});
  }
  print_table({"CONSUMER", "GROUPS"}, rows);
  return 0;
}

// The objects of one kind by name, from GET /config's JSON or a file's.
struct kind {
  const char* list;  // "routes"
  const char* key;   // "name" or "id"
  const char* path;  // "/config/routes/"
  const char* noun;  // "route"
};
constexpr kind kinds[] = {{"upstreams", "name", "/config/upstreams/", "upstream"},
                          {"consumers", "id", "/config/consumers/", "consumer"},
                          {"routes", "name", "/config/routes/", "route"}};

std::map<std::string, json> by_name(const json& doc, const kind& k) {
  std::map<std::string, json> out;
  for (const auto& o : doc.value(k.list, json::array())) out[o.value(k.key, std::string())] = o;
  return out;
}

// The keys whose values differ between two objects (top level), for the diff's summary.
std::string changed_keys(const json& from, const json& to) {
  std::set<std::string> keys;
  for (const auto& [k, v] : from.items()) keys.insert(k);
  for (const auto& [k, v] : to.items()) keys.insert(k);
  std::string out;
  for (const auto& k : keys) {
    json a = from.contains(k) ? from[k] : json();
    json b = to.contains(k) ? to[k] : json();
    if (a != b) out += (out.empty() ? "" : ", ") + k;
  }
  return out;
}

int config_apply(const options& o) {
  if (o.args.size() != 3) {
    std::fprintf(stderr, "usage: meridian config apply FILE [--dry-run] [--no-delete]\n");
    return 2;
  }
  const std::string& path = o.args[2];
  std::string error;
  std::string text = read_file(path, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "meridian: %s\n", error.c_str());
    return 1;
  }
  // A file of routes, upstreams and consumers (like decK's); a whole node config works too,
  // its node-local sections ignored. It is checked exactly as a node checks its config.
  bool has_node = text.find("\nnode:") != std::string::npos || text.rfind("node:", 0) == 0;
  auto parsed = parse_config(has_node ? text : "node: {id: cli, region: cli}\n" + text, path);
  if (!parsed.value) {
    for (auto e : parsed.errors) {
      if (!has_node && e.line > 0) --e.line;  // the line we put in front
      std::fprintf(stderr, "%s\n", e.to_string().c_str());
    }
    return 1;
  }
  json wanted = config_to_json(*parsed.value);
  auto current = call(o, "GET", "/config");
  if (!current) return 1;

  struct change {
    char op;  // '+', '~', '-'
    const kind* k;
    std::string name;
    json body;
    std::string detail;
  };
  std::vector<change> changes;
  for (const auto& k : kinds) {
    auto have = by_name(*current, k);
    auto want = by_name(wanted, k);
    for (const auto& [name, obj] : want) {
      auto it = have.find(name);
      if (it == have.end()) {
        changes.push_back({'+', &k, name, obj, ""});
      } else if (it->second != obj) {
        changes.push_back({'~', &k, name, obj, changed_keys(it->second, obj)});
      }
    }
    if (o.keep_extra) continue;
    for (const auto& [name, obj] : have) {
      if (!want.count(name)) changes.push_back({'-', &k, name, json(), ""});
    }
  }
  // Deletions after every creation and in reverse dependency order (routes name upstreams).
  std::stable_sort(changes.begin(), changes.end(), [](const change& a, const change& b) {
    auto rank = [](const change& c) {
      if (c.op != '-') return 0;
      return c.k == &kinds[2] ? 1 : c.k == &kinds[1] ? 2 : 3;
    };
    return rank(a) < rank(b);
  });
  if (o.json_output) {
    json plan = json::array();
    for (const auto& c : changes) {
      plan.push_back({{"op", c.op == '+'   ? "create"
                             : c.op == '~' ? "update"
                                           : "delete"},
                      {"kind", c.k->noun},
                      {"name", c.name},
                      {"fields", c.detail}});
    }
    if (o.dry_run) {
      std::printf("%s\n", json{{"changes", plan}, {"applied", false}}.dump(2).c_str());
      return 0;
    }
  } else {
    if (changes.empty()) {
      std::printf("no changes: the cluster's config (version %s) matches %s\n",
                  text_of(current->value("version", json())).c_str(), path.c_str());
      return 0;
    }
    for (const auto& c : changes) {
      std::printf("%c %s %s%s%s\n", c.op, c.k->noun, c.name.c_str(), c.detail.empty() ? "" : ": ",
                  c.detail.c_str());
    }
    if (o.dry_run) {
      std::printf("(dry run: nothing applied)\n");
      return 0;
    }
  }
  int created = 0, updated = 0, deleted = 0;
  json last_version;
  for (const auto& c : changes) {
    std::string target = c.k->path + c.name;
    auto r = c.op == '-' ? call(o, "DELETE", target) : call(o, "PUT", target, c.body.dump());
    if (!r) {
      std::fprintf(stderr, "meridian: stopped after %d created, %d updated, %d deleted\n", created,
                   updated, deleted);
      return 1;
    }
    if (r->contains("version")) last_version = (*r)["version"];
    (c.op == '+' ? created : c.op == '~' ? updated : deleted)++;
  }
  if (o.json_output) {
    std::printf("%s\n", json{{"created", created},
                             {"updated", updated},
                             {"deleted", deleted},
                             {"version", last_version},
                             {"applied", true}}
                            .dump(2)
                            .c_str());
  } else {
    std::printf("applied: %d created, %d updated, %d deleted (config version %s)\n", created,
                updated, deleted, text_of(last_version).c_str());
  }
  return 0;
}

int keys(const options& o) {
  const auto& a = o.args;
  if (a.size() < 3) {
    usage(stderr);
    return 2;
  }
  const std::string& consumer = a[2];
  std::string base = "/config/consumers/" + consumer + "/keys";
  if (a[1] == "list" && a.size() == 3) {
    auto j = call(o, "GET", base);
    if (!j) return 1;
    if (o.json_output) {
      std::printf("%s\n", j->dump(2).c_str());
      return 0;
    }
    std::vector<std::vector<std::string>> rows;
    for (const auto& k : j->value("keys", json::array())) {
      rows.push_back({text_of(k.value("key_id", json())), text_of(k.value("created", json())),
                      text_of(k.value("expires", json())), text_of(k.value("expired", json())),
                      text_of(k.value("requests", json()))});
    }
    print_table({"KEY_ID", "CREATED_MS", "EXPIRES_MS", "EXPIRED", "REQUESTS"}, rows);
    return 0;
  }
  if (a[1] == "create" && a.size() == 3) {
    json body = json::object();
    if (!o.expires_in.empty()) body["expires_in"] = o.expires_in;
    auto j = call(o, "POST", base, body.dump());
    if (!j) return 1;
    if (o.json_output) {
      std::printf("%s\n", j->dump(2).c_str());
    } else {
      std::printf("key_id: %s\nkey: %s\n(the key is shown only now)\n",
                  text_of(j->value("key_id", json())).c_str(),
                  text_of(j->value("key", json())).c_str());
    }
    return 0;
  }
  if (a[1] == "revoke" && a.size() == 4) {
    auto j = call(o, "DELETE", base + "/" + a[3]);
    if (!j) return 1;
    if (o.json_output) {
      std::printf("%s\n", j->dump(2).c_str());
    } else {
      std::printf("revoked %s\n", a[3].c_str());
    }
    return 0;
  }
  usage(stderr);
  return 2;
}

}  // namespace

bool is_cli_command(const std::string& command) {
  return command == "members" || command == "health" || command == "config" || command == "keys";
}

int run_cli(int argc, char** argv) {
  options o;
  std::string error = parse_options(argc, argv, 1, &o);
  if (!error.empty()) {
    std::fprintf(stderr, "meridian: %s\n", error.c_str());
    return 2;
  }
  if (o.args.empty()) {
    usage(stderr);
    return 2;
  }
  const std::string& cmd = o.args[0];
  if (cmd == "help") {
    usage(stdout);
    return 0;
  }
  if (cmd == "members" && o.args.size() == 1) return members(o);
  if (cmd == "members" && o.args.size() == 3 && o.args[1] == "forget")
    return forget_member(o, o.args[2]);
  if (cmd == "health" && o.args.size() == 1) return health(o);
  if (cmd == "config" && o.args.size() == 2 && o.args[1] == "get") return config_get(o);
  if (cmd == "config" && o.args.size() >= 2 && o.args[1] == "apply") return config_apply(o);
  if (cmd == "keys" && o.args.size() >= 2) return keys(o);
  usage(stderr);
  return 2;
}

}  // namespace meridian::node
