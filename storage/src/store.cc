#include "meridian/storage/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>

#include <array>

namespace meridian::storage {
namespace {

constexpr std::array<const char*, 5> family_names = {"default", "config", "counters", "breakers",
                                                     "membership"};

status to_status(const rocksdb::Status& s) {
  if (s.ok()) return status::ok();
  if (s.IsNotFound()) return status::not_found();
  return status::error(s.ToString());
}

class rocksdb_store final : public store {
 public:
  rocksdb_store(std::unique_ptr<rocksdb::DB> db, std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : db_(std::move(db)), handles_(std::move(handles)) {}

  ~rocksdb_store() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }

  status get(family f, std::string_view key, std::string* value) override {
    return to_status(db_->Get(rocksdb::ReadOptions(), handle(f), to_slice(key), value));
  }

  status put(family f, std::string_view key, std::string_view value,
             write_options options) override {
    return to_status(db_->Put(to_rocksdb(options), handle(f), to_slice(key), to_slice(value)));
  }

  status remove(family f, std::string_view key, write_options options) override {
    return to_status(db_->Delete(to_rocksdb(options), handle(f), to_slice(key)));
  }

  status write(const std::vector<write_op>& ops, write_options options) override {
    rocksdb::WriteBatch batch;
    for (const auto& op : ops) {
      auto s = op.value ? batch.Put(handle(op.where), op.key, *op.value)
                        : batch.Delete(handle(op.where), op.key);
      if (!s.ok()) return to_status(s);
    }
    return to_status(db_->Write(to_rocksdb(options), &batch));
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

  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
};

}  // namespace

std::unique_ptr<store> store::open(const std::string& dir, std::string* error) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_open_files = 256;
  options.keep_log_file_num = 4;
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
  return std::make_unique<rocksdb_store>(std::unique_ptr<rocksdb::DB>(raw), std::move(handles));
}

}  // namespace meridian::storage
