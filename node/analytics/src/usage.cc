#include "meridian/analytics/usage.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "meridian/storage/store.h"

namespace meridian::node {
namespace {

// Bucket i holds latencies up to 100 us * 1.35^i: 100 us .. about 98 s over 47 bounds, each
// bucket 35 % wider than the one before (so a percentile is off by at most that much).
const std::array<uint64_t, usage_point::buckets - 1> latency_bounds = [] {
  std::array<uint64_t, usage_point::buckets - 1> b{};
  double v = 100.0;
  for (auto& x : b) {
    x = static_cast<uint64_t>(std::llround(v));
    v *= 1.35;
  }
  return b;
}();

constexpr char dimension_chars[usage_dimensions] = {'c', 'k', 'r', 'v'};
constexpr const char* dimension_names[usage_dimensions] = {"consumer", "key", "route", "version"};

std::string_view or_none(std::string_view v) {
  return v.empty() ? usage_none : v;
}

}  // namespace

bool parse_usage_dimension(std::string_view name, usage_dimension* out) {
  for (size_t i = 0; i < usage_dimensions; ++i) {
    if (name == dimension_names[i]) {
      *out = static_cast<usage_dimension>(i);
      return true;
    }
  }
  return false;
}

const char* to_string(usage_dimension d) {
  return dimension_names[static_cast<size_t>(d)];
}

uint64_t usage_point::latency_bound_us(size_t i) {
  return latency_bounds[std::min(i, latency_bounds.size() - 1)];
}

// For each bit width of a latency, the first bucket whose bound reaches 2^(width-1): from there
// the bucket is at most three steps on (1.35^3 > 2), so no search per request.
const std::array<uint8_t, 65> first_bucket_by_width = [] {
  std::array<uint8_t, 65> f{};
  for (size_t w = 0; w < f.size(); ++w) {
    const uint64_t low = w == 0 ? 0 : (uint64_t{1} << (w - 1));
    size_t i = 0;
    while (i < latency_bounds.size() && latency_bounds[i] < low) ++i;
    f[w] = static_cast<uint8_t>(i);
  }
  return f;
}();

size_t usage_point::bucket_of(uint64_t latency_us) {
  size_t i = first_bucket_by_width[static_cast<size_t>(std::bit_width(latency_us))];
  while (i < latency_bounds.size() && latency_bounds[i] < latency_us) ++i;
  return i;
}

void usage_point::merge(const usage_point& o) {
  requests += o.requests;
  errors += o.errors;
  bytes += o.bytes;
  for (size_t i = 0; i < buckets; ++i) latency[i] += o.latency[i];
}

double usage_point::percentile_ms(double q) const {
  uint64_t total = 0;
  for (uint64_t c : latency) total += c;
  if (total == 0) return 0;
  const double target = q * static_cast<double>(total);
  double seen = 0;
  for (size_t i = 0; i < buckets; ++i) {
    if (latency[i] == 0) continue;
    if (seen + static_cast<double>(latency[i]) >= target) {
      double low = i == 0 ? 0.0 : static_cast<double>(latency_bounds[i - 1]);
      double high = i < latency_bounds.size() ? static_cast<double>(latency_bounds[i]) : low * 1.35;
      double within = (target - seen) / static_cast<double>(latency[i]);
      return (low + (high - low) * within) / 1000.0;
    }
    seen += static_cast<double>(latency[i]);
  }
  return static_cast<double>(latency_bounds.back()) / 1000.0;
}

nlohmann::json usage_point::to_json() const {
  auto l = nlohmann::json::array();
  for (size_t i = 0; i < buckets; ++i)
    if (latency[i]) l.push_back({i, latency[i]});
  return {{"r", requests}, {"e", errors}, {"b", bytes}, {"l", std::move(l)}};
}

bool usage_point::from_json(const nlohmann::json& j, usage_point* out) {
  if (!j.is_object()) return false;
  usage_point p;
  const std::pair<const char*, uint64_t*> fields[] = {
      {"r", &p.requests}, {"e", &p.errors}, {"b", &p.bytes}};
  for (auto [name, field] : fields) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_unsigned()) return false;
    *field = it->get<uint64_t>();
  }
  auto l = j.find("l");
  if (l == j.end() || !l->is_array()) return false;
  for (const auto& pair : *l) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_number_unsigned() ||
        !pair[1].is_number_unsigned())
      return false;
    auto i = pair[0].get<uint64_t>();
    if (i >= buckets) return false;
    p.latency[i] += pair[1].get<uint64_t>();
  }
  *out = p;
  return true;
}

// --- recorder

usage_recorder::usage_recorder(unsigned shards, size_t max_names)
    : max_names_(std::max<size_t>(1, max_names)) {
  for (unsigned i = 0; i < std::max(1u, shards); ++i) shards_.push_back(std::make_unique<shard>());
}

void usage_recorder::record(unsigned shard_index, const usage_event& e) {
  auto& s = *shards_[shard_index % shards_.size()];
  const std::string_view names[usage_dimensions] = {or_none(e.consumer), or_none(e.key_id),
                                                    or_none(e.route), or_none(e.version)};
  const size_t bucket = usage_point::bucket_of(e.latency_us);
  const bool error = e.status >= 500;
  std::lock_guard lock(s.mu);
  for (size_t d = 0; d < usage_dimensions; ++d) {
    // Most requests of a worker name what the one before did: the last hit of each dimension
    // is kept (map nodes stay put until a drain swaps the maps, which empties the cache).
    auto& last = s.last[d];
    usage_point* hit = last.point && last.name == names[d] ? last.point : nullptr;
    if (!hit) {
      auto& m = s.names[d];
      auto it = m.find(names[d]);
      if (it == m.end()) {
        // Beyond the cap a new name counts as "(other)" (which may itself be the one over).
        std::string_view name = m.size() < max_names_ ? names[d] : usage_other;
        it = m.find(name);
        if (it == m.end()) it = m.emplace(std::string(name), usage_point{}).first;
      }
      hit = &it->second;
      // Remembered under the name asked for: an "(other)" entry stands for this name too.
      last.point = hit;
      last.name.assign(names[d]);
    }
    usage_point& p = *hit;
    ++p.requests;
    p.errors += error;
    p.bytes += e.bytes;
    ++p.latency[bucket];
  }
}

void usage_recorder::drain(usage_batch& out) {
  for (auto& s : shards_) {
    usage_batch taken;
    {
      std::lock_guard lock(s->mu);
      taken.swap(s->names);
      for (auto& l : s->last) l.point = nullptr;
    }
    for (size_t d = 0; d < usage_dimensions; ++d) {
      for (auto& [name, p] : taken[d]) {
        auto [it, fresh] = out[d].try_emplace(name, p);
        if (!fresh) it->second.merge(p);
      }
    }
  }
}

uint64_t usage_series::total_requests() const {
  uint64_t n = 0;
  for (const auto& [t, p] : points) n += p.requests;
  return n;
}

// --- store

std::string usage_store::record_key(char resolution, usage_dimension d, int64_t start) {
  char key[32];
  std::snprintf(key, sizeof key, "%c/%c/%013lld", resolution,
                dimension_chars[static_cast<size_t>(d)], static_cast<long long>(start));
  return key;
}

usage_store::usage_store(options o, storage::store* db, int64_t now_ms) : opt_(o), db_(db) {
  const int64_t minute = now_ms - now_ms % minute_ms;
  const int64_t hour = now_ms - now_ms % hour_ms;
  for (size_t d = 0; d < usage_dimensions; ++d) {
    load('m', static_cast<usage_dimension>(d), minute, &minute_[d]);
    load('h', static_cast<usage_dimension>(d), hour, &hour_[d]);
  }
}

void usage_store::load(char resolution, usage_dimension d, int64_t start, open_bucket* into) {
  into->start = start;
  into->names.clear();
  into->dirty = false;
  if (!db_) return;
  std::string value;
  if (!db_->get(storage::family::analytics, record_key(resolution, d, start), &value).is_ok())
    return;
  auto j = nlohmann::json::parse(value, nullptr, false);
  if (!j.is_object()) return;
  for (auto& [name, pj] : j.items()) {
    usage_point p;
    if (usage_point::from_json(pj, &p)) into->names[name] = p;
  }
}

void usage_store::add_capped(usage_names& names, const std::string& name,
                             const usage_point& p) const {
  auto it = names.find(name);
  if (it == names.end()) {
    const std::string& key = names.size() < opt_.max_names ? name : std::string(usage_other);
    it = names.try_emplace(key).first;
  }
  it->second.merge(p);
}

void usage_store::write(char resolution, usage_dimension d, const open_bucket& b,
                        std::string* error, bool* ok) {
  if (!db_ || !b.dirty) return;
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, p] : b.names) j[name] = p.to_json();
  auto s = db_->put(storage::family::analytics, record_key(resolution, d, b.start),
                    j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  if (!s.is_ok()) {
    *ok = false;
    if (error) *error = s.message();
  }
}

void usage_store::roll(int64_t now_ms) {
  const int64_t minute = now_ms - now_ms % minute_ms;
  const int64_t hour = now_ms - now_ms % hour_ms;
  bool ok = true;
  for (size_t d = 0; d < usage_dimensions; ++d) {
    auto dim = static_cast<usage_dimension>(d);
    // A clock that steps back keeps counting into the bucket it is in (never rewrites the past).
    if (minute > minute_[d].start) {
      write('m', dim, minute_[d], nullptr, &ok);
      minute_[d] = open_bucket{minute, {}, false};
    }
    if (hour > hour_[d].start) {
      write('h', dim, hour_[d], nullptr, &ok);
      hour_[d] = open_bucket{hour, {}, false};
    }
  }
}

void usage_store::add(const usage_batch& batch, int64_t now_ms) {
  std::lock_guard lock(mu_);
  roll(now_ms);
  for (size_t d = 0; d < usage_dimensions; ++d) {
    for (const auto& [name, p] : batch[d]) {
      add_capped(minute_[d].names, name, p);
      add_capped(hour_[d].names, name, p);
    }
    if (!batch[d].empty()) minute_[d].dirty = hour_[d].dirty = true;
  }
}

bool usage_store::persist(int64_t now_ms, std::string* error) {
  std::lock_guard lock(mu_);
  roll(now_ms);
  bool ok = true;
  for (size_t d = 0; d < usage_dimensions; ++d) {
    auto dim = static_cast<usage_dimension>(d);
    // A bucket stays dirty until a write of it succeeds (the next persist tries again).
    for (auto [resolution, bucket] : {std::pair{'m', &minute_[d]}, std::pair{'h', &hour_[d]}}) {
      bool written = true;
      write(resolution, dim, *bucket, error, &written);
      if (written) bucket->dirty = false;
      ok = ok && written;
    }
  }
  // Expiry at most once a minute: records are keyed by time, so each scan stops at the first
  // one still kept.
  if (db_ && now_ms - last_expiry_ >= minute_ms) {
    last_expiry_ = now_ms;
    std::vector<storage::write_op> gone;
    for (size_t d = 0; d < usage_dimensions; ++d) {
      const std::pair<char, int64_t> kept[] = {{'m', opt_.minute_retention_ms},
                                               {'h', opt_.hour_retention_ms}};
      for (auto [resolution, keep_ms] : kept) {
        const std::string cutoff =
            record_key(resolution, static_cast<usage_dimension>(d), now_ms - keep_ms);
        std::string prefix = cutoff.substr(0, 4);
        db_->scan(storage::family::analytics, prefix, [&](std::string_view k, std::string_view) {
          if (k >= cutoff) return false;
          gone.push_back({storage::family::analytics, std::string(k), std::nullopt});
          return true;
        });
      }
    }
    if (!gone.empty()) {
      auto s = db_->write(gone);
      if (!s.is_ok()) {
        ok = false;
        if (error) *error = s.message();
      }
    }
  }
  return ok;
}

std::vector<usage_series> usage_store::query(usage_dimension d, int64_t since_ms, int64_t until_ms,
                                             int64_t step_ms) const {
  const char resolution = step_ms >= hour_ms ? 'h' : 'm';
  const int64_t step = resolution == 'h' ? hour_ms : minute_ms;
  // Days are hours summed (UTC days): a 90-day range is 90 points a series, not 2,160.
  const int64_t out_step = step_ms >= day_ms ? day_ms : step;
  auto point_of = [&](int64_t start) { return start - ((start % out_step) + out_step) % out_step; };
  // A bucket is in when it overlaps [since, until).
  const int64_t first = since_ms - ((since_ms % step) + step) % step;
  usage_merge m;
  open_bucket open;
  {
    // The open bucket is copied; the store is read without the lock (the collector and the
    // data path's drains are not held up by a long query).
    std::lock_guard lock(mu_);
    open = (resolution == 'h' ? hour_ : minute_)[static_cast<size_t>(d)];
  }
  if (db_) {
    const std::string from = record_key(resolution, d, first);
    db_->scan(storage::family::analytics, from.substr(0, 4),
              [&](std::string_view k, std::string_view v) {
                if (k < from) return true;
                int64_t start = 0;
                std::from_chars(k.data() + 4, k.data() + k.size(), start);
                if (start >= until_ms) return false;
                if (start == open.start) return true;  // the open bucket is read from memory
                auto j = nlohmann::json::parse(v, nullptr, false);
                if (!j.is_object()) return true;
                for (auto& [name, pj] : j.items()) {
                  usage_point p;
                  if (usage_point::from_json(pj, &p)) m[name][point_of(start)].merge(p);
                }
                return true;
              });
  }
  if (open.start >= first && open.start < until_ms) {
    for (const auto& [name, p] : open.names) m[name][point_of(open.start)].merge(p);
  }
  return finish_usage_merge(std::move(m));
}

// --- merging and JSON

nlohmann::json usage_series_json(const std::vector<usage_series>& series, bool raw) {
  auto out = nlohmann::json::array();
  for (const auto& s : series) {
    auto points = nlohmann::json::array();
    for (const auto& [t, p] : s.points) {
      if (raw) {
        auto j = p.to_json();
        j["t"] = t;
        points.push_back(std::move(j));
        continue;
      }
      auto round3 = [](double v) { return std::round(v * 1000.0) / 1000.0; };
      points.push_back({{"t", t},
                        {"requests", p.requests},
                        {"errors", p.errors},
                        {"bytes", p.bytes},
                        {"p50_ms", round3(p.percentile_ms(0.5))},
                        {"p99_ms", round3(p.percentile_ms(0.99))}});
    }
    if (raw) {
      out.push_back({{"key", s.key}, {"points", std::move(points)}});
      continue;
    }
    // The whole range at once (percentiles from the summed histogram, not from the points').
    usage_point all;
    for (const auto& [t, p] : s.points) all.merge(p);
    auto round3 = [](double v) { return std::round(v * 1000.0) / 1000.0; };
    out.push_back({{"key", s.key},
                   {"points", std::move(points)},
                   {"summary",
                    {{"requests", all.requests},
                     {"errors", all.errors},
                     {"bytes", all.bytes},
                     {"p50_ms", round3(all.percentile_ms(0.5))},
                     {"p99_ms", round3(all.percentile_ms(0.99))}}}});
  }
  return out;
}

void merge_usage_series(const std::vector<usage_series>& series, usage_merge& m) {
  for (const auto& s : series)
    for (const auto& [t, p] : s.points) m[s.key][t].merge(p);
}

bool merge_raw_usage_series(const nlohmann::json& j, usage_merge& m) {
  if (!j.is_array()) return false;
  for (const auto& s : j) {
    if (!s.is_object() || !s.contains("key") || !s["key"].is_string() || !s.contains("points") ||
        !s["points"].is_array())
      return false;
    auto& series = m[s["key"].get<std::string>()];
    for (const auto& pj : s["points"]) {
      usage_point p;
      if (!pj.is_object() || !pj.contains("t") || !pj["t"].is_number_integer() ||
          !usage_point::from_json(pj, &p))
        return false;
      series[pj["t"].get<int64_t>()].merge(p);
    }
  }
  return true;
}

std::vector<usage_series> finish_usage_merge(usage_merge&& m) {
  std::vector<usage_series> out;
  out.reserve(m.size());
  for (auto& [name, points] : m) {
    usage_series s{name, {}};
    s.points.assign(points.begin(), points.end());
    out.push_back(std::move(s));
  }
  std::vector<std::pair<uint64_t, size_t>> order;
  for (size_t i = 0; i < out.size(); ++i) order.emplace_back(out[i].total_requests(), i);
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<usage_series> sorted;
  sorted.reserve(out.size());
  for (auto& [n, i] : order) sorted.push_back(std::move(out[i]));
  return sorted;
}

}  // namespace meridian::node
