#pragma once
// Durable key-value state of one node, kept in RocksDB under the node's data_dir.
//
// A store holds a fixed set of column families (one per kind of state) so that each kind can be
// iterated, compacted and backed up on its own. Errors are values: every call returns a status
// and never throws. RocksDB types never appear here. All methods are thread-safe.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::storage {

// meta: the store's own records; config: the replicated configuration; counters: rate-limit
// counts; state: the replicated runtime state nodes record (breaker states, OAuth signing keys,
// revocations and used codes, the audit log, keyrings); membership: the last known members;
// analytics: this node's usage counts per minute and per hour (node/analytics).
enum class family { meta, config, counters, state, membership, analytics };

// The result of a store operation: ok, not found, or an error with a message.
class status {
 public:
  static status ok() { return status(code::ok, {}); }
  static status not_found() { return status(code::not_found, "not found"); }
  static status error(std::string message) { return status(code::error, std::move(message)); }

  bool is_ok() const { return code_ == code::ok; }
  bool is_not_found() const { return code_ == code::not_found; }
  const std::string& message() const { return message_; }

 private:
  enum class code { ok, not_found, error };
  status(code c, std::string m) : code_(c), message_(std::move(m)) {}
  code code_;
  std::string message_;
};

struct write_options {
  bool sync = false;  // fsync the write-ahead log before returning (for acknowledged writes)
};

// One write of a batch: a put when value is set, a delete otherwise.
struct write_op {
  family where;
  std::string key;
  std::optional<std::string> value;
};

class store {
 public:
  // Opens (creating if needed) the store in directory dir. Returns nullptr and sets *error when
  // the directory cannot be opened (permissions, another process holding the lock, corruption).
  static std::unique_ptr<store> open(const std::string& dir, std::string* error);

  virtual ~store() = default;

  // Returns ok and sets *value, not_found, or an error.
  virtual status get(family f, std::string_view key, std::string* value) = 0;
  virtual status put(family f, std::string_view key, std::string_view value,
                     write_options options = {}) = 0;
  virtual status remove(family f, std::string_view key, write_options options = {}) = 0;
  // Applies all ops atomically.
  virtual status write(const std::vector<write_op>& ops, write_options options = {}) = 0;
  // Calls visit(key, value) for every key starting with prefix, in key order, until it returns
  // false.
  virtual status scan(family f, std::string_view prefix,
                      const std::function<bool(std::string_view, std::string_view)>& visit) = 0;
  // Writes a consistent point-in-time copy of the store into dir (which must not exist).
  virtual status checkpoint(const std::string& dir) = 0;
};

}  // namespace meridian::storage
