#pragma once
// A background thread that runs a task every `period` until stopped; stop() wakes it at once
// (no waiting out the period) and joins. For the node's housekeeping loops: write-behind of
// counters, JWKS refresh, cluster maintenance.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace meridian::node {

class periodic_thread {
 public:
  periodic_thread() = default;
  ~periodic_thread() { stop(); }
  periodic_thread(const periodic_thread&) = delete;
  periodic_thread& operator=(const periodic_thread&) = delete;

  // Starts running task every period (the first run after one period). Call once.
  void start(std::chrono::milliseconds period, std::function<void()> task) {
    thread_ = std::thread([this, period, task = std::move(task)] {
      std::unique_lock lock(mu_);
      while (!cv_.wait_for(lock, period, [&] { return stop_; })) {
        lock.unlock();
        task();
        lock.lock();
      }
    });
  }
  // Stops and joins; returns at once when not running. Idempotent.
  void stop() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  bool running() const { return thread_.joinable(); }

 private:
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

}  // namespace meridian::node
