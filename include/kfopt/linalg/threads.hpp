#pragma once
/// \file threads.hpp
/// \brief How many threads kfopt's kernels use, and the pool that runs them.
///
/// **Setting the thread count.** `kfopt::set_threads(n)` is the one way: every kernel that
/// can split its work (the matrix product kernel, and through it the Cholesky inverse, the
/// triangular products and the factor statistics) then uses up to n threads, the caller's
/// included. `kfopt::set_threads(0)`, the initial state, follows `Eigen::nbThreads()`: the
/// number Eigen is told with `Eigen::setNbThreads`, or OpenMP's default when the program is
/// built with `-fopenmp`, and 1 otherwise. kfopt itself needs neither OpenMP nor any flag.
///
/// **Results do not depend on the thread count.** Work is split at fixed boundaries that
/// do not change how any single result is computed (e.g. the product kernel gives each
/// thread whole columns of C, and every entry of C is accumulated in the same order
/// whichever thread computes it), so 1, 2 or 64 threads give bit-identical results.
///
/// **Why a pool on std::thread, not OpenMP.** A header-only library cannot require
/// `-fopenmp` of its users' targets, OpenMP's runtime would compete with a user's own
/// OpenMP regions and Eigen's, and ThreadSanitizer understands the standard library's
/// threads and mutexes but not libgomp's own synchronization (it reports false races unless
/// libgomp itself is rebuilt with it). The pool's workers are started on first use, sleep on
/// a condition variable between jobs (after spinning for up to 100 µs, since a kernel's
/// products come in quick succession and waking a sleeping thread costs tens of
/// microseconds), and live until the program exits.
///
/// **Nesting.** A job started from inside a pool job runs on the calling thread alone, so
/// a kernel called from a parallel loop over layers does not oversubscribe the machine.

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace kfopt {

namespace detail {
inline std::atomic<int>& thread_setting() {
  static std::atomic<int> setting{0};
  return setting;
}
}  // namespace detail

/// Sets the number of threads kfopt's kernels use: n ≥ 1, or 0 to follow
/// `Eigen::nbThreads()` (see the file comment). Takes effect for the next kernel call.
/// Values below 0 are treated as 0.
inline void set_threads(int n) noexcept { detail::thread_setting().store(std::max(0, n)); }

/// The number of threads kfopt's kernels use (≥ 1).
inline int threads() noexcept {
  const int n = detail::thread_setting().load();
  return n > 0 ? n : std::max(1, Eigen::nbThreads());
}

namespace detail {

/// A pool of worker threads that runs one job at a time: `run(count, threads, f)` calls
/// `f(i)` once for every i in [0, count), on up to `threads` threads (the caller is one of
/// them), and returns when all calls have returned. Which thread runs which i is not fixed,
/// so f(i) must compute the same thing whichever thread runs it. The first exception thrown
/// by an f(i) is rethrown by run() after every started call has finished.
class ThreadPool {
 public:
  /// The process's pool.
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
  }

  /// Whether the calling thread is inside a pool job (a worker, or a caller running one).
  static bool inside_job() noexcept { return in_job(); }

  /// While one exists, every job started on the constructing thread runs on that thread
  /// alone, as a nested job does: for a thread of the caller's own that runs kernels beside
  /// the pool's jobs (Kfac's background refresh) without waiting for the pool.
  class SerialScope {
   public:
    SerialScope() noexcept : previous_(in_job()) { in_job() = true; }
    ~SerialScope() { in_job() = previous_; }
    SerialScope(const SerialScope&) = delete;
    SerialScope& operator=(const SerialScope&) = delete;

   private:
    bool previous_;
  };

  /// Jobs run on more than one thread so far.
  std::uint64_t parallel_jobs() {
    return generation_.load();
  }

  template <typename F>
  void run(std::ptrdiff_t count, int threads, F&& f) {
    if (count <= 0) return;
    const int wanted = static_cast<int>(std::min<std::ptrdiff_t>(count, std::max(1, threads)));
    if (wanted == 1 || in_job()) {
      for (std::ptrdiff_t i = 0; i < count; ++i) f(i);
      return;
    }
    std::unique_lock<std::mutex> caller(run_mutex_);  // one job at a time
    Job job;
    job.body = [&f](std::ptrdiff_t i) { f(i); };
    job.count = count;
    ensure_workers(wanted - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      helpers_wanted_.store(wanted - 1);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    in_job() = true;
    work_on(job);
    in_job() = false;
    const auto finished = [&] { return job.finished.load() == count && helpers_active_.load() == 0; };
    spin_until(finished);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, finished);
      job_ = nullptr;
      helpers_wanted_.store(0);
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    std::function<void(std::ptrdiff_t)> body;
    std::ptrdiff_t count = 0;
    std::atomic<std::ptrdiff_t> next{0};
    std::atomic<std::ptrdiff_t> finished{0};  // changed under the pool's mutex
    std::exception_ptr error;                 // guarded by the pool's mutex
  };

  ThreadPool() = default;

  // Spins (politely) until `ready()` or 100 µs have passed; the caller then takes the mutex
  // and, if needed, sleeps on a condition variable with the same predicate.
  template <typename Ready>
  static void spin_until(const Ready& ready) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
    for (unsigned i = 1;; ++i) {
      if (ready()) return;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#else
      std::this_thread::yield();
#endif
      if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return;
    }
  }

  static bool& in_job() noexcept {
    thread_local bool inside = false;
    return inside;
  }

  void ensure_workers(int n) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_.size()) < n) {
      workers_.emplace_back([this, id = static_cast<int>(workers_.size())] { worker(id); });
    }
  }

  // Takes indices until none is left, recording completions and the first error.
  void work_on(Job& job) {
    std::ptrdiff_t done = 0;
    std::exception_ptr error;
    for (;;) {
      const std::ptrdiff_t i = job.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job.count) break;
      try {
        job.body(i);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
      ++done;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    job.finished += done;
    if (error && !job.error) job.error = error;
  }

  void worker(int id) {
    in_job() = true;
    std::uint64_t seen = 0;
    const auto called = [&] {
      return stopping_.load() || (generation_.load() != seen && id < helpers_wanted_.load());
    };
    for (;;) {
      spin_until(called);
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, called);
      if (stopping_.load()) return;
      seen = generation_.load();
      Job* job = job_;
      helpers_active_.fetch_add(1);
      lock.unlock();
      work_on(*job);
      lock.lock();
      helpers_active_.fetch_sub(1);
      done_.notify_all();
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  // Changed under mutex_ only; atomic so that spinning threads may read them without it.
  Job* job_ = nullptr;
  std::atomic<int> helpers_wanted_{0};
  std::atomic<int> helpers_active_{0};
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<bool> stopping_{false};
};

/// Runs `f(i)` for i in [0, count) on up to kfopt::threads() threads (ThreadPool::run).
template <typename F>
void parallel_for(std::ptrdiff_t count, F&& f) {
  if (count <= 1 || threads() == 1) {
    for (std::ptrdiff_t i = 0; i < count; ++i) f(i);
    return;
  }
  ThreadPool::instance().run(count, threads(), std::forward<F>(f));
}

}  // namespace detail
}  // namespace kfopt
