#pragma once
// Usage analytics: requests, errors, bytes and latency per consumer, per API key, per route and
// per API version, counted on this node and kept in RocksDB with downsampling.
//
//   usage_recorder  the data path's side: each worker records finished exchanges into its own
//                   shard (a mutex only the worker and the collector take, so uncontended);
//   usage_store     the collector's side: drains the recorder into the open minute and hour,
//                   writes them to the store's analytics family (every persist, and at stop),
//                   forgets minutes after a day and hours after 90 days, and answers queries.
//
// Cardinality is bounded at both ends: at most max_names names per dimension per shard between
// drains and per bucket in the store; a name beyond that counts under "(other)". So a client
// inventing consumers or keys cannot grow memory or the store, and the sum over any dimension
// stays the node's total (requests without a consumer count under "(none)").
//
// Summing over the cluster is the caller's (the node asks its peers for their points and merges
// them: usage_point::merge is exact, the latency histogram included).

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace meridian::storage {
class store;
}

namespace meridian::node {

enum class usage_dimension : uint8_t { consumer = 0, key = 1, route = 2, version = 3 };
constexpr size_t usage_dimensions = 4;
// "consumer", "key", "route", "version" -> the dimension; false for anything else.
bool parse_usage_dimension(std::string_view name, usage_dimension* out);
const char* to_string(usage_dimension d);

// The counts of one series in one minute or hour. Latency in log-spaced buckets (bucket i holds
// latencies up to latency_bound_us(i); the last one everything longer), so points merge exactly
// and percentiles come from the merged histogram.
struct usage_point {
  static constexpr size_t buckets = 48;
  static uint64_t latency_bound_us(size_t i);  // upper bound of bucket i (i < buckets - 1)
  static size_t bucket_of(uint64_t latency_us);

  uint64_t requests = 0;
  uint64_t errors = 0;  // answers with status >= 500 (the gateway's or the upstream's)
  uint64_t bytes = 0;   // request and response body bytes
  std::array<uint64_t, buckets> latency{};

  void merge(const usage_point& o);
  // Returns the q-quantile (0 < q < 1) of the latency in milliseconds, interpolated within its
  // bucket; 0 without requests.
  double percentile_ms(double q) const;
  // Compact JSON for the store and for peers: {"r","e","b","l":[[bucket,count],...]}.
  nlohmann::json to_json() const;
  // Reads what to_json wrote; false (and *out untouched) for anything else.
  static bool from_json(const nlohmann::json& j, usage_point* out);
};

// One finished exchange, as the data path hands it over (views valid for the call).
struct usage_event {
  std::string_view route;     // empty: no route matched
  std::string_view consumer;  // empty: anonymous
  std::string_view key_id;    // the API key that authenticated it, or empty
  std::string_view version;   // the route's api_version, or empty
  int status = 0;
  uint64_t bytes = 0;
  uint64_t latency_us = 0;
};

// The names that stand for "nothing" and "too many".
inline constexpr std::string_view usage_none = "(none)";
inline constexpr std::string_view usage_other = "(other)";

using usage_names = std::map<std::string, usage_point, std::less<>>;
using usage_batch = std::array<usage_names, usage_dimensions>;

// The data path's side. record() from worker `shard` only; drain() from any one thread.
class usage_recorder {
 public:
  usage_recorder(unsigned shards, size_t max_names);
  void record(unsigned shard, const usage_event& e);
  // Moves everything recorded since the last drain into out (merged into what out holds).
  void drain(usage_batch& out);

 private:
  struct shard {
    std::mutex mu;
    usage_batch names;
    struct last_hit {
      std::string name;  // owned: the event's views die with the call
      usage_point* point = nullptr;
    };
    std::array<last_hit, usage_dimensions> last;
  };
  size_t max_names_;
  std::vector<std::unique_ptr<shard>> shards_;
};

// One series of a query: a name and its points in time order.
struct usage_series {
  std::string key;
  std::vector<std::pair<int64_t, usage_point>> points;  // bucket start (Unix ms) -> counts
  uint64_t total_requests() const;
};

class usage_store {
 public:
  struct options {
    size_t max_names = 1000;                           // per dimension per bucket
    int64_t minute_retention_ms = 24LL * 3600 * 1000;  // per-minute points kept this long
    int64_t hour_retention_ms = 90LL * 24 * 3600 * 1000;
  };
  static constexpr int64_t minute_ms = 60'000;
  static constexpr int64_t hour_ms = 3'600'000;
  static constexpr int64_t day_ms = 86'400'000;

  // db may be null (points kept in memory for the open minute and hour only). Reads back the
  // open minute and hour from db, so a restart within them goes on counting where it stopped.
  usage_store(options o, storage::store* db, int64_t now_ms);

  // Adds a drained batch at Unix ms now (the buckets now falls in). Thread-safe.
  void add(const usage_batch& batch, int64_t now_ms);
  // Writes the open buckets that changed and deletes expired ones. Returns false and sets
  // *error when the store refuses. Thread-safe.
  bool persist(int64_t now_ms, std::string* error);

  // Returns the series of dimension d with points in [since, until) at step minute_ms, hour_ms
  // or day_ms (hours summed into UTC days), busiest first. Thread-safe.
  std::vector<usage_series> query(usage_dimension d, int64_t since_ms, int64_t until_ms,
                                  int64_t step_ms) const;

 private:
  struct open_bucket {
    int64_t start = -1;
    usage_names names;
    bool dirty = false;
  };
  static std::string record_key(char resolution, usage_dimension d, int64_t start);
  void roll(int64_t now_ms);                      // under mu_
  void write(char resolution, usage_dimension d,  // under mu_
             const open_bucket& b, std::string* error, bool* ok);
  void load(char resolution, usage_dimension d, int64_t start, open_bucket* into);
  void add_capped(usage_names& names, const std::string& name, const usage_point& p) const;

  options opt_;
  storage::store* db_;
  mutable std::mutex mu_;
  std::array<open_bucket, usage_dimensions> minute_;
  std::array<open_bucket, usage_dimensions> hour_;
  int64_t last_expiry_ = 0;
};

// Serialises query results for the admin API: points with percentiles (SPEC's shape) and a
// summary of the whole range per series, or raw (histograms, for a peer that merges them).
nlohmann::json usage_series_json(const std::vector<usage_series>& series, bool raw);

// Series from several nodes summed: name -> bucket start -> counts.
using usage_merge = std::map<std::string, std::map<int64_t, usage_point>>;
// Adds series into m.
void merge_usage_series(const std::vector<usage_series>& series, usage_merge& m);
// Adds raw series (the "series" of usage_series_json(..., true)) into m; false when j is not
// that shape (then m may hold part of it: merge a peer's answer into a scratch merge first).
bool merge_raw_usage_series(const nlohmann::json& j, usage_merge& m);
// Returns the merged series, busiest first.
std::vector<usage_series> finish_usage_merge(usage_merge&& m);

}  // namespace meridian::node
