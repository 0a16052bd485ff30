#include "meridian/storage/store.h"

#include <rocksdb/db.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>

#include <sys/statvfs.h>
#include <array>

#include <cstdint>
#include <mutex>
#include <string>

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer (make test-tsan) runs against Debian's RocksDB, which is not instrumented:
// RocksDB's cache-statistics thread locks a mutex that a function-local static map (set up once
// under a guard TSan cannot see in uninstrumented code) holds, and TSan reports the first lock as
// racing with the map's allocation. The same map is reached by its reader (CopyCacheDeleterRoleMap)
// and its writer (RegisterCacheDeleterRole, on the thread that reads the store while the
// statistics thread starts). RocksDB's own code on both sides; nothing of ours.
extern "C" const char* __tsan_default_suppressions() {
  return "race:rocksdb::CopyCacheDeleterRoleMap\n"
         "race:rocksdb::RegisterCacheDeleterRole\n"
         "race:rocksdb::CacheEntryStatsCollector\n";
}
#endif

namespace meridian::storage {
namespace {

// On-disk column family names, by family. The state family keeps the name it had when it held
// only breaker states, so that existing data directories open unchanged.
constexpr std::array<const char*, 6> family_names = {"default",  "config",     "counters",
                                                     "breakers", "membership", "analytics"};

status to_status(const rocksdb::Status& s) {
  if (s.ok()) return status::ok();
  if (s.IsNotFound()) return status::not_found();
  return status::error(s.ToString());
}

class rocksdb_store final : public store {
 public:
  rocksdb_store(std::string dir, std::unique_ptr<rocksdb::DB> db,
                std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : dir_(std::move(dir)), db_(std::move(db)), handles_(std::move(handles)) {}

  ~rocksdb_store() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }

  status get(family f, std::string_view key, std::string* value) override {
    return to_status(db_->Get(rocksdb::ReadOptions(), handle(f), to_slice(key), value));
  }

  status put(family f, std::string_view key, std::string_view value,
             write_options options) override {
    return guarded(
        [&] { return db_->Put(to_rocksdb(options), handle(f), to_slice(key), to_slice(value)); });
  }

  status remove(family f, std::string_view key, write_options options) override {
    return guarded([&] { return db_->Delete(to_rocksdb(options), handle(f), to_slice(key)); });
  }

  status write(const std::vector<write_op>& ops, write_options options) override {
    rocksdb::WriteBatch batch;
    for (const auto& op : ops) {
      auto s = op.value ? batch.Put(handle(op.where), op.key, *op.value)
                        : batch.Delete(handle(op.where), op.key);
      if (!s.ok()) return to_status(s);
    }
    return guarded([&] { return db_->Write(to_rocksdb(options), &batch); });
  }

  status scan(family f, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& visit) override {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handle(f)));
    for (it->Seek(to_slice(prefix)); it->Valid(); it->Next()) {
      auto k = it->key();
      if (!k.starts_with(to_slice(prefix))) break;
      auto v = it->value();
      if (!visit({k.data(), k.size()}, {v.data(), v.size()})) break;
    }
    return to_status(it->status());
  }

  status checkpoint(const std::string& dir) override {
    rocksdb::Checkpoint* raw = nullptr;
    auto s = rocksdb::Checkpoint::Create(db_.get(), &raw);
    if (!s.ok()) return to_status(s);
    std::unique_ptr<rocksdb::Checkpoint> cp(raw);
    return to_status(cp->CreateCheckpoint(dir));
  }

 private:
  static rocksdb::Slice to_slice(std::string_view s) { return {s.data(), s.size()}; }
  static rocksdb::WriteOptions to_rocksdb(write_options o) {
    rocksdb::WriteOptions w;
    w.sync = o.sync;
    return w;
  }
  rocksdb::ColumnFamilyHandle* handle(family f) const { return handles_[static_cast<size_t>(f)]; }

  // Runs one write, one at a time, refusing it while the disk holds less than min_free_bytes.
  //
  // Why: a write that fails in RocksDB (a full disk) stops the database until DB::Resume(), and
  // the Debian RocksDB (7.8, built with assertions) aborts the process when the failed log is
  // touched again -- by a concurrent write (rocksdb#12448), by Resume() or by its own recovery
  // thread. So writes stop before the disk is full (and resume by themselves once there is room),
  // and if one fails anyway the store refuses writes until the node restarts, but keeps reading.
  template <typename Write>
  status guarded(Write&& write) {
    std::lock_guard lock(write_mu_);
    if (!failed_error_.empty()) {
      return status::error(
          "storage refuses writes after an error (restart the node once the "
          "cause is fixed): " +
          failed_error_);
    }
    struct statvfs fs {};
    if (statvfs(dir_.c_str(), &fs) == 0) {
      uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
      if (free_bytes < min_free_bytes) {
        return status::error("disk full: " + std::to_string(free_bytes >> 20) + " MiB free under " +
                             dir_ + ", writes need " + std::to_string(min_free_bytes >> 20) +
                             " MiB; they resume once there is room");
      }
    }
    rocksdb::Status s = write();
    if (!s.ok()) failed_error_ = s.ToString();
    return to_status(s);
  }

  static constexpr uint64_t min_free_bytes = 64ull << 20;
  std::string dir_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::mutex write_mu_;       // serializes writes; guards failed_error_
  std::string failed_error_;  // set by a failed write: no more writes
};

// Keeps RocksDB from recovering from background errors by itself: its recovery thread resumes on
// the log that failed, where RocksDB 7.8 asserts (see guarded()).
class no_auto_recovery final : public rocksdb::EventListener {
 public:
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason, rocksdb::Status,
                            bool* auto_recovery) override {
    *auto_recovery = false;
  }
};

}  // namespace

std::unique_ptr<store> store::open(const std::string& dir, std::string* error) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_open_files = 256;
  options.keep_log_file_num = 4;
  options.listeners.push_back(std::make_shared<no_auto_recovery>());
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const char* name : family_names) {
    families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::Open(options, dir, families, &handles, &raw);
  if (!s.ok()) {
    if (error) *error = "cannot open store in " + dir + ": " + s.ToString();
    return nullptr;
  }
  return std::make_unique<rocksdb_store>(dir, std::unique_ptr<rocksdb::DB>(raw),
                                         std::move(handles));
}

}  // namespace meridian::storage
