#pragma once
// A shared_ptr that one thread replaces while others read it: what std::atomic<shared_ptr<T>>
// is for. libstdc++ 12 implements that with a lock bit in the control-block pointer that
// ThreadSanitizer cannot see, so every reader and writer would be reported as a race; a mutex
// held for the pointer copy costs the same (one uncontended lock, as that lock bit is) and
// every tool understands it.

#include <memory>
#include <mutex>

namespace meridian::node {

template <class T>
class shared_slot {
 public:
  shared_slot() = default;
  explicit shared_slot(std::shared_ptr<T> p) : p_(std::move(p)) {}
  shared_slot(const shared_slot&) = delete;
  shared_slot& operator=(const shared_slot&) = delete;

  // Returns the current pointer; the object stays alive while the caller holds it.
  std::shared_ptr<T> load() const {
    std::lock_guard lock(mu_);
    return p_;
  }
  // Replaces the pointer; the old object is released outside the lock.
  void store(std::shared_ptr<T> p) {
    {
      std::lock_guard lock(mu_);
      p_.swap(p);
    }
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<T> p_;
};

}  // namespace meridian::node
