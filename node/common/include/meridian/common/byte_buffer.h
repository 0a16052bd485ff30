#pragma once
// A growable byte buffer with a read cursor: bytes are appended at the end and consumed from the
// front. Cheaper than std::string appends on the forwarding path (no zero-fill, no SSO checks).
// Not thread-safe; owned by one connection.
//
// A write in flight points into the buffer (Asio keeps the pointer until the socket is
// writable), while the owner goes on appending: pin() before starting such a write keeps the
// bytes it points at where they are until unpin() — growth or compaction then copies into a new
// block and keeps the pinned one alive, instead of moving the bytes in place or freeing them.
// Only growth and compaction: consume the written bytes (or clear) after unpin(), not before.

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <vector>

namespace meridian::node {

class byte_buffer {
 public:
  byte_buffer() = default;
  explicit byte_buffer(size_t capacity) { reserve(capacity); }
  byte_buffer(const byte_buffer&) = delete;
  byte_buffer& operator=(const byte_buffer&) = delete;
  ~byte_buffer() {
    free_block(data_, capacity_);
    free_block(retired_, retired_capacity_);
  }

  const char* data() const { return data_ + begin_; }
  char* data() { return data_ + begin_; }
  size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  size_t capacity() const { return capacity_; }
  std::string_view view() const { return {data(), size()}; }

  // Space after the end, at least n bytes once prepare(n) returned.
  char* tail() { return data_ + end_; }
  size_t tail_size() const { return capacity_ - end_; }

  // Makes room for n more bytes at the tail (compacting before growing); returns tail().
  char* prepare(size_t n) {
    if (capacity_ - end_ >= n) return tail();
    if (data_ && data_ == pinned_) {
      move_to_new_block(size() + n);
      return tail();
    }
    if (begin_ > 0) compact();
    if (capacity_ - end_ < n) reserve(end_ + n);
    return tail();
  }
  void commit(size_t n) { end_ += n; }
  void consume(size_t n) {
    begin_ += n;
    if (begin_ >= end_) begin_ = end_ = 0;
  }
  void clear() { begin_ = end_ = 0; }

  void append(const char* p, size_t n) {
    if (capacity_ - end_ >= n) [[likely]] {
      if (n) std::memcpy(data_ + end_, p, n);  // p may be null for an empty view
      end_ += n;
      return;
    }
    append_slow(p, n);
  }
  void append(std::string_view s) { append(s.data(), s.size()); }
  void append(char c) {
    *prepare(1) = c;
    ++end_;
  }
  // Appends n in decimal.
  void append_decimal(uint64_t n) {
    char tmp[20];
    char* p = tmp + sizeof(tmp);
    do {
      *--p = static_cast<char>('0' + n % 10);
      n /= 10;
    } while (n);
    append(p, tmp + sizeof(tmp) - p);
  }
  // Appends n in lower-case hexadecimal (chunk sizes).
  void append_hex(uint64_t n) {
    char tmp[16];
    char* p = tmp + sizeof(tmp);
    do {
      *--p = "0123456789abcdef"[n & 15];
      n >>= 4;
    } while (n);
    append(p, tmp + sizeof(tmp) - p);
  }

  // Grows, then appends (kept out of line so that append's fast path inlines).
  [[gnu::noinline]] void append_slow(const char* p, size_t n) {
    std::memcpy(prepare(n), p, n);
    end_ += n;
  }

  // Keeps the bytes now in the buffer where they are until unpin() (see the top).
  void pin() { pinned_ = data_; }
  void unpin() {
    pinned_ = nullptr;
    free_block(retired_, retired_capacity_);
    retired_ = nullptr;
    retired_capacity_ = 0;
  }

  // Moves unread bytes to the front.
  void compact() {
    if (begin_ == 0) return;
    if (data_ == pinned_) {
      move_to_new_block(capacity_);
      return;
    }
    std::memmove(data_, data_ + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  // Frees the memory when empty (idle connections hold no buffer).
  void release_if_empty() {
    if (begin_ != end_ || !data_ || data_ == pinned_) return;
    free_block(data_, capacity_);
    data_ = nullptr;
    capacity_ = begin_ = end_ = 0;
  }
  void reserve(size_t n) {
    if (n <= capacity_) return;
    if (capacity_ == 0 && n <= block_size) {
      data_ = take_block();
      capacity_ = block_size;
      return;
    }
    size_t grown = capacity_ ? capacity_ * 2 : 4096;
    if (grown < n) grown = n;
    char* p = static_cast<char*>(std::malloc(grown));
    if (!p) throw std::bad_alloc();
    if (data_) {
      std::memcpy(p, data_, end_);
      retire(data_, capacity_);
    }
    data_ = p;
    capacity_ = grown;
  }

  // Buffers of block_size come from a per-thread cache: connections take one while they have
  // bytes in flight and give it back when idle, without a trip through malloc.
  static constexpr size_t block_size = 16 * 1024;

 private:
  // The unread bytes into a block of at least n bytes, at its front; the old block is kept while
  // pinned.
  void move_to_new_block(size_t n) {
    size_t used = size();
    // The same size when the bytes fit (a compaction by copy): a buffer that is always pinned
    // and never drains (a stream to a slow reader) must not double at every move.
    size_t cap = n <= block_size  ? block_size
                 : n <= capacity_ ? capacity_
                                  : std::max(n, capacity_ * 2);
    char* p = cap == block_size ? take_block() : static_cast<char*>(std::malloc(cap));
    if (!p) throw std::bad_alloc();
    if (used) std::memcpy(p, data(), used);
    retire(data_, capacity_);
    data_ = p;
    capacity_ = cap;
    begin_ = 0;
    end_ = used;
  }
  // Gives a block back, unless a write in flight points into it.
  void retire(char* p, size_t capacity) {
    if (p && p == pinned_) {
      free_block(retired_, retired_capacity_);
      retired_ = p;
      retired_capacity_ = capacity;
    } else {
      free_block(p, capacity);
    }
  }

  static std::vector<char*>& block_cache() {
    thread_local std::vector<char*> cache;
    thread_local struct cleanup {
      ~cleanup() {
        for (char* p : block_cache()) std::free(p);
      }
    } on_exit;
    (void)on_exit;
    return cache;
  }
  static char* take_block() {
    auto& cache = block_cache();
    if (!cache.empty()) {
      char* p = cache.back();
      cache.pop_back();
      return p;
    }
    char* p = static_cast<char*>(std::malloc(block_size));
    if (!p) throw std::bad_alloc();
    return p;
  }
  static void free_block(char* p, size_t capacity) {
    if (!p) return;
    if (capacity == block_size && block_cache().size() < 256) {
      block_cache().push_back(p);
    } else {
      std::free(p);
    }
  }

  char* data_ = nullptr;
  size_t capacity_ = 0;
  size_t begin_ = 0;
  size_t end_ = 0;
  const char* pinned_ = nullptr;  // the block a write in flight points into
  char* retired_ = nullptr;       // that block, once the bytes moved on
  size_t retired_capacity_ = 0;
};

}  // namespace meridian::node
