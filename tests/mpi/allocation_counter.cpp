// Counts every call of the global operator new in this test executable, so a test can check
// that an operation allocates nothing (Eigen's own allocations are caught separately by
// EIGEN_RUNTIME_NO_MALLOC).
#include <atomic>
#include <cstdlib>
#include <new>

#include "mpi/mpi_test_support.hpp"

namespace {
std::atomic<long> allocations{0};
}

long kfopt_mpi_test::allocation_count() { return allocations.load(); }

void* operator new(std::size_t size) {
  ++allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) { return ::operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
