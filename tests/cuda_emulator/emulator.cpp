// The CUDA emulator's runtime (see emulator.h): the resident blocks (one OS thread each, one running at a
// time), the scheduler of a block's threads over ucontext fibers, the collectives, mma.sync and the few
// runtime API calls our launchers make.
#include "emulator.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <link.h>
#include <sys/mman.h>
#include <torch/library.h>
#include <ucontext.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace rsf_emu {
namespace {

// 256 KiB: ample for our kernels, and small enough that AddressSanitizer clears the shadow of a fiber
// stack at each switch with a memset rather than a page release (a syscall per switch).
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kDefaultDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute
constexpr int kOptinDynamicShared = 227 * 1024;      // sm_90's opt-in maximum per block
constexpr int kResidentBlocks = 4;                   // blocks of a launch in flight at once (default)

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

int optin_dynamic_shared() { return env_int("RSF_EMU_SMEM_OPTIN", kOptinDynamicShared); }

// Threads of a block wait at a barrier until its generation moves on.
struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

struct PendingCopy {  // a cp.async not yet waited for
  void* dst;
  const void* src;
  int src_bytes;
};

struct Fiber {
  std::vector<PendingCopy> copies;
  uint64_t copies_issued = 0;
  ucontext_t context{};
  void* stack = nullptr;
  uint3 index{};
  int lane = 0, warp = 0;
  bool done = false;
  const Barrier* waiting_at = nullptr;  // null: runnable
  const char* waiting_in = "";
  uint64_t wait_generation = 0;
};

struct Warp {
  std::map<unsigned, Barrier> barriers;  // one per lane mask: disjoint sub-warp groups sync independently
  int live = 0;
  unsigned char slots[32][kWarpSlotBytes]{};
};

struct Block {
  uint3 index{};
  dim3 dim, grid;
  int live = 0;
  Barrier barrier;
  int reduction = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<unsigned char> dynamic_shared;
  const std::function<void()>* body = nullptr;
  bool switch_requested = false;  // a thread passed a switch_point: hand the baton on
  std::string error;
};

// The blocks of a launch in flight at once, each run by its own OS thread (so each has its own static
// __shared__ variables, thread_local in emulator.h). A baton lets one of them run at a time; the one
// holding it hands it to a random resident block whenever a __syncthreads completes or a thread passes
// a switch_point (an integer atomic), so blocks interleave where code between blocks can go wrong (a
// shared global scratch, a "last block" reduction before the others' writes). Not at every fence or
// warp collective: each hand-over lets the other blocks catch up, which would close those windows. For
// the same reason a block that just did an integer atomic (counted itself done, say) is, every other
// time, set aside: it runs again only once no other resident block can, so the others run to their own
// atomics, or to their end, while its threads after the atomic wait.
struct Residency {
  std::mutex mutex;
  std::condition_variable changed;
  int turn = 0;                 // the resident slot that holds the baton
  std::vector<char> running;    // per slot: still taking blocks
  std::vector<char> set_aside;  // per slot: chosen only when no other running slot is left
  std::vector<uint3> queue;     // block indices in launch order
  size_t next = 0;
  std::mt19937 rng;
  std::string error;  // of the first failed block
};

// The emulation is one OS thread at a time: a launch holds this lock throughout, and its resident blocks
// pass a baton (Residency).
std::mutex launch_mutex;
Residency* residency = nullptr;  // of the running launch
thread_local int slot = 0;       // this OS thread's resident slot
thread_local ucontext_t scheduler_context;
thread_local Block* current_block = nullptr;
thread_local Fiber* current_fiber = nullptr;
cudaError_t last_error = cudaSuccess;
std::map<const void*, size_t> max_dynamic_shared;  // per kernel, set by cudaFuncSetAttribute
std::vector<std::vector<void*>> stacks;  // reused across launches: [slot][thread index]
int64_t mma_calls = 0;                   // warp-level mma.sync calls since the library was loaded

void* stack_for(int thread) {
  std::vector<void*>& mine = stacks[slot];
  while (static_cast<int>(mine.size()) <= thread) {
    void* s = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map a fiber stack");
    mine.push_back(s);
  }
  return mine[thread];
}

// Called by the baton holder: gives the baton to a random running slot (possibly its own; one not set
// aside if there is any) and returns when it is this slot's turn again; a slot that stopped running
// returns at once. after_atomic: this slot comes from an integer atomic and is set aside every other time.
void hand_over(bool after_atomic) {
  Residency& r = *residency;
  if (after_atomic && r.running[slot] && std::bernoulli_distribution(0.5)(r.rng)) r.set_aside[slot] = 1;
  std::vector<int> candidates, aside;
  for (int s = 0; s < static_cast<int>(r.running.size()); ++s) {
    if (r.running[s]) (r.set_aside[s] ? aside : candidates).push_back(s);
  }
  if (candidates.empty()) candidates.swap(aside);
  if (candidates.empty()) return;
  const int next = candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(r.rng)];
  r.set_aside[next] = 0;
  if (next == slot) return;
  std::unique_lock<std::mutex> lock(r.mutex);
  r.turn = next;
  r.changed.notify_all();
  if (r.running[slot]) r.changed.wait(lock, [&] { return r.turn == slot; });
}

Fiber& self() {
  if (current_fiber == nullptr) throw std::logic_error("cuda emulator: a device function ran outside a kernel");
  return *current_fiber;
}

// Back to the scheduler; returns when this fiber is scheduled again.
void yield() { swapcontext(&self().context, &scheduler_context); }

[[noreturn]] void fail(const std::string& message) {
  if (current_block->error.empty()) current_block->error = message;
  yield();
  std::abort();  // the scheduler never resumes a fiber of a failed block
}

// Arrive at `barrier` of `expected` threads; waits until the last one arrives.
void arrive_and_wait(Barrier& barrier, int expected, const char* what) {
  Fiber& me = self();
  const uint64_t generation = barrier.generation;
  if (++barrier.arrived == expected) {
    barrier.arrived = 0;
    ++barrier.generation;
    yield();  // the scheduler picks who goes on first
    return;
  }
  me.waiting_at = &barrier;
  me.waiting_in = what;
  me.wait_generation = generation;
  while (barrier.generation == generation) yield();
  me.waiting_at = nullptr;
}

bool blocked(const Fiber& f) { return f.waiting_at != nullptr && f.waiting_at->generation == f.wait_generation; }

void fiber_main() {
  Block& block = *current_block;
  try {
    (*block.body)();
  } catch (const std::exception& e) {
    if (block.error.empty()) block.error = std::string("exception in the kernel: ") + e.what();
  }
  Fiber& me = self();
  if (!me.copies.empty() && block.error.empty()) {
    block.error = "a thread ended with cp.async copies it never waited for (cp.async.wait_all)";
  }
  me.done = true;
  --block.live;
  --block.warps[me.warp].live;
  // Exited threads no longer count at __syncthreads (sm_70+ semantics).
  if (block.barrier.arrived > 0 && block.barrier.arrived == block.live) {
    block.barrier.arrived = 0;
    ++block.barrier.generation;
  }
  // returning resumes uc_link: the scheduler
}

std::string describe_deadlock(const Block& block) {
  std::ostringstream out;
  out << "deadlock in block (" << block.index.x << ", " << block.index.y << ", " << block.index.z
      << "): every live thread waits";
  int shown = 0;
  for (const Fiber& f : block.fibers) {
    if (f.done || shown == 4) continue;
    out << (shown++ == 0 ? ": " : "; ") << "thread (" << f.index.x << ", " << f.index.y << ", " << f.index.z
        << ") in " << f.waiting_in
        << " (warp " << f.warp << " has " << block.warps[f.warp].live << " live lanes)";
  }
  return out.str();
}

void run_block(Block& block, std::mt19937& rng) {
  block.switch_requested = false;
  const int threads = static_cast<int>(block.dim.x * block.dim.y * block.dim.z);
  const int warps = (threads + 31) / 32;
  block.fibers.assign(threads, Fiber{});
  block.warps.assign(warps, Warp{});
  block.live = threads;
  block.barrier = Barrier{};
  std::fill(block.dynamic_shared.begin(), block.dynamic_shared.end(), 0xff);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = block.fibers[t];
    f.index = make_uint3(t % block.dim.x, t / block.dim.x % block.dim.y, t / (block.dim.x * block.dim.y));
    f.lane = t % 32;
    f.warp = t / 32;
    ++block.warps[f.warp].live;
    f.stack = stack_for(t);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &scheduler_context;
    makecontext(&f.context, fiber_main, 0);
  }
  // Each step resumes one runnable thread until it blocks or ends: a random lane of the runnable warp
  // that ranks first in a random order of the warps, drawn anew at every __syncthreads. So one warp runs
  // as far ahead of the others as the code lets it, which exposes a missing barrier.
  std::vector<int> rank(warps), runnable;
  runnable.reserve(threads);
  uint64_t ranked_at = ~uint64_t{0}, handed_at = 0;
  while (block.live > 0) {
    if (block.barrier.generation != handed_at || block.switch_requested) {
      handed_at = block.barrier.generation;
      const bool after_atomic = block.switch_requested;
      block.switch_requested = false;
      hand_over(after_atomic);
      if (!residency->error.empty()) return;  // another block failed: the launch is over
    }
    if (block.barrier.generation != ranked_at) {
      ranked_at = block.barrier.generation;
      std::iota(rank.begin(), rank.end(), 0);
      std::shuffle(rank.begin(), rank.end(), rng);
    }
    runnable.clear();
    int best = warps;
    for (int t = 0; t < threads; ++t) {
      const Fiber& f = block.fibers[t];
      if (f.done || blocked(f) || rank[f.warp] > best) continue;
      if (rank[f.warp] < best) {
        best = rank[f.warp];
        runnable.clear();
      }
      runnable.push_back(t);
    }
    if (runnable.empty()) {
      block.error = describe_deadlock(block);
      return;
    }
    Fiber& f = block.fibers[runnable[std::uniform_int_distribution<size_t>(0, runnable.size() - 1)(rng)]];
    current_fiber = &f;
    swapcontext(&scheduler_context, &f.context);
    current_fiber = nullptr;
    if (!block.error.empty()) return;
  }
}

std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// The checks a real launch makes; the error goes to cudaGetLastError as there.
bool valid_launch(const Config& c) {
  const uint64_t threads = static_cast<uint64_t>(c.block.x) * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0 || threads > kMaxThreads ||
      c.block.z > 64 || c.grid.y > 65535 || c.grid.z > 65535) {
    last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  const auto raised = max_dynamic_shared.find(c.kernel);
  if (c.shared_bytes > (raised == max_dynamic_shared.end() ? kDefaultDynamicShared : raised->second)) {
    last_error = cudaErrorInvalidValue;
    return false;
  }
  return true;
}

float half_bits_to_float(uint16_t bits, bool bf16) {
  return bf16 ? static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()))
              : static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

// Carries out one cp.async: its source bytes, then zeros up to 16.
void land(const PendingCopy& c) {
  std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(16 - c.src_bytes));
}

// This OS thread's copy of the library's thread_local data: the static __shared__ variables of every
// kernel (emulator.h) and the emulator's own few thread_locals above.
struct ThreadData {
  unsigned char* bytes = nullptr;
  size_t size = 0;
};

ThreadData this_threads_data() {
  struct Search {
    uintptr_t inside;  // an address in this library
    ThreadData found;
  } search{reinterpret_cast<uintptr_t>(&run_kernel), {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* arg) {
        Search& s = *static_cast<Search*>(arg);
        bool ours = false;
        const ElfW(Phdr)* tls = nullptr;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          const uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
          if (ph.p_type == PT_LOAD && s.inside >= begin && s.inside < begin + ph.p_memsz) ours = true;
          if (ph.p_type == PT_TLS) tls = &ph;
        }
        if (!ours) return 0;
        if (tls != nullptr) s.found = {static_cast<unsigned char*>(info->dlpi_tls_data), tls->p_memsz};
        return 1;
      },
      &search);
  if (search.found.bytes == nullptr) throw std::logic_error("cuda emulator: cannot find its thread-local data");
  return search.found;
}

// Static shared memory starts a block as 0xff bytes (a NaN pattern), as dynamic shared memory does: a
// kernel that reads what its block never wrote sees garbage, not the previous block's values or zeros.
void poison_static_shared(const ThreadData& data) {
  // Volatile accesses: the compiler sees no way for the memset to reach these variables, so it could move
  // plain loads after it and drop plain stores of the values they held before it.
  volatile int& my_slot = slot;
  Block* volatile& block = current_block;
  const int saved_slot = my_slot;
  Block* const saved_block = block;
  std::memset(data.bytes, 0xff, data.size);  // the emulator's thread_locals too: set again below
  my_slot = saved_slot;
  block = saved_block;
  *const_cast<Fiber* volatile*>(&current_fiber) = nullptr;
}

// One resident slot's OS thread: runs the launch's next blocks, one after another, while it holds the baton.
void run_slot(int my_slot, const Config& config, const std::function<void()>& body) {
  slot = my_slot;  // also allocates this thread's copy of the thread_local data
  Residency& r = *residency;
  {
    std::unique_lock<std::mutex> lock(r.mutex);
    r.changed.wait(lock, [&] { return r.turn == slot; });
  }
  Block block;
  block.dim = config.block;
  block.grid = config.grid;
  block.body = &body;
  block.dynamic_shared.resize(config.shared_bytes);
  current_block = &block;
  ThreadData data;
  while (r.error.empty() && r.next < r.queue.size()) {
    block.index = r.queue[r.next++];
    block.error.clear();
    try {
      if (data.bytes == nullptr) data = this_threads_data();
      poison_static_shared(data);
      run_block(block, r.rng);
    } catch (const std::exception& e) {  // the emulator's own failure (no fiber stack, no thread data)
      block.error = e.what();
    }
    if (!block.error.empty() && r.error.empty()) r.error = block.error;
  }
  current_block = nullptr;
  r.running[slot] = 0;
  hand_over(false);
}

}  // namespace

void run_kernel(const Config& config, const std::function<void()>& body) {
  const std::lock_guard<std::mutex> lock(launch_mutex);
  if (!valid_launch(config)) return;
  Residency r;
  r.rng.seed(static_cast<unsigned>(env_int("RSF_EMU_SEED", 0)));
  for (unsigned z = 0; z < config.grid.z; ++z)
    for (unsigned y = 0; y < config.grid.y; ++y)
      for (unsigned x = 0; x < config.grid.x; ++x) r.queue.push_back(make_uint3(x, y, z));
  std::shuffle(r.queue.begin(), r.queue.end(), r.rng);
  const int slots = static_cast<int>(std::min<size_t>(std::max(1, env_int("RSF_EMU_RESIDENT", kResidentBlocks)),
                                                      r.queue.size()));
  r.running.assign(slots, 1);
  r.set_aside.assign(slots, 0);
  if (static_cast<int>(stacks.size()) < slots) stacks.resize(slots);
  residency = &r;
  std::vector<std::thread> threads;
  for (int s = 0; s < slots; ++s) threads.emplace_back(run_slot, s, std::cref(config), std::cref(body));
  for (std::thread& t : threads) t.join();
  residency = nullptr;
  if (!r.error.empty()) {
    throw std::runtime_error("cuda emulator: kernel launch with grid " + dims(config.grid) + ", block " +
                             dims(config.block) + ": " + r.error);
  }
}

const uint3& thread_idx() { return self().index; }
const uint3& block_idx() { return current_block->index; }
const dim3& block_dim() { return current_block->dim; }
const dim3& grid_dim() { return current_block->grid; }
int lane_id() { return self().lane; }
void* dynamic_shared_bytes() { return current_block->dynamic_shared.data(); }

void block_barrier() { arrive_and_wait(current_block->barrier, current_block->live, "__syncthreads"); }

int block_reduce_or(int predicate) {
  Block& block = *current_block;
  block_barrier();  // the previous reduction's readers are done
  block.reduction = 0;
  block_barrier();
  if (predicate) block.reduction = 1;
  block_barrier();
  return block.reduction;
}

int block_reduce_and(int predicate) { return block_reduce_or(!predicate) ? 0 : 1; }

void warp_barrier(unsigned mask) {
  Fiber& me = self();
  Warp& warp = current_block->warps[me.warp];
  if (!(mask >> me.lane & 1u)) fail("a warp collective's mask does not contain the calling lane");
  arrive_and_wait(warp.barriers[mask], __builtin_popcount(mask), "a warp collective");
}

const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t bytes) {
  Fiber& me = self();
  Warp& warp = current_block->warps[me.warp];
  warp_barrier(mask);  // every lane has read the previous exchange
  std::memcpy(warp.slots[me.lane], mine, bytes);
  warp_barrier(mask);
  return &warp.slots[0][0];
}

void switch_point() {
  current_block->switch_requested = true;
  yield();
}

void trap(const char* what) { fail(what); }

// PTX ISA, "Matrix Fragments for mma.m16n8k16" (16-bit A/B, fp32 C/D), groupID = lane >> 2,
// threadID_in_group = lane % 4; each 32-bit register holds two elements, the lower index in the
// low half. A: registers {a0,a1} {a2,a3} {a4,a5} {a6,a7}; a_i sits at row groupID (+8 for i in
// {2,3,6,7}), column threadID_in_group * 2 + (i & 1) (+8 for i >= 4). B: {b0,b1} {b2,b3}; b_i at
// row threadID_in_group * 2 + (i & 1) (+8 for i >= 2), column groupID. C/D: c_i at row groupID (+8
// for i >= 2), column threadID_in_group * 2 + (i & 1).
void mma_m16n8k16(bool bf16, float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct Fragments {
    uint32_t a[4], b[2];
  };
  static_assert(sizeof(Fragments) <= kWarpSlotBytes);
  const Fragments mine{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const unsigned char* slots = warp_exchange(0xffffffffu, &mine, sizeof(mine));
  auto lane_fragments = [&](int lane) {
    Fragments f;
    std::memcpy(&f, slots + lane * kWarpSlotBytes, sizeof(f));
    return f;
  };
  auto element = [&](uint32_t reg, int i) {
    return half_bits_to_float(static_cast<uint16_t>(i & 1 ? reg >> 16 : reg & 0xffffu), bf16);
  };
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const Fragments f = lane_fragments(lane);
    const int group = lane >> 2, tig = lane & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = group + ((i & 2) ? 8 : 0), col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = element(f.a[i / 2], i);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[row][group] = element(f.b[i / 2], i);
    }
  }
  const int lane = self().lane, group = lane >> 2, tig = lane & 3;
  if (lane == 0) ++mma_calls;
  for (int i = 0; i < 4; ++i) {
    const int row = group + (i >= 2 ? 8 : 0), col = tig * 2 + (i & 1);
    double sum = c[i];  // products of 16-bit values are exact; the hardware's summation order is unspecified
    for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[row][k]) * B[k][col];
    c[i] = static_cast<float>(sum);
  }
}

void ldmatrix_x4(bool trans, uint32_t (&r)[4], const void* row_address) {
  if (reinterpret_cast<uintptr_t>(row_address) % 16 != 0) trap("ldmatrix with a row address not 16-byte aligned");
  const unsigned char* slots = warp_exchange(0xffffffffu, &row_address, sizeof(row_address));
  auto row = [&](int lane) {
    const void* p;
    std::memcpy(&p, slots + lane * kWarpSlotBytes, sizeof(p));
    return static_cast<const uint16_t*>(p);
  };
  const int lane = self().lane, group = lane >> 2, tig = lane & 3;
  for (int m = 0; m < 4; ++m) {
    const uint32_t lo = trans ? row(8 * m + 2 * tig)[group] : row(8 * m + group)[2 * tig];
    const uint32_t hi = trans ? row(8 * m + 2 * tig + 1)[group] : row(8 * m + group)[2 * tig + 1];
    r[m] = lo | (hi << 16);
  }
}

void cp_async_16(void* dst, const void* src, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    trap("cp.async of 16 bytes with an address not 16-byte aligned");
  }
  if (src_bytes < 0 || src_bytes > 16) trap("cp.async with a source size outside [0, 16]");
  Fiber& me = self();
  const PendingCopy copy{dst, src, src_bytes};
  // Every other copy lands at once, the rest at the wait: code that overwrites a buffer still in use
  // and code that reads before its wait both see wrong bytes.
  if ((me.copies_issued++ + me.lane) % 2 == 0) {
    land(copy);
  } else {
    me.copies.push_back(copy);
  }
}

void cp_async_wait_all() {
  for (const PendingCopy& c : self().copies) land(c);
  self().copies.clear();
}

}  // namespace rsf_emu

// ------------------------------------------------------------------------------------------------
// The runtime API calls our launchers make.

extern "C" {

cudaError_t cudaGetLastError() {
  const cudaError_t e = rsf_emu::last_error;
  rsf_emu::last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return rsf_emu::last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidValue:
      return "invalid argument";
    default:
      return "emulated CUDA error";
  }
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int /*device*/) {
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount:
      *value = rsf_emu::env_int("RSF_EMU_SMS", 4);
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = rsf_emu::optin_dynamic_shared();
      return cudaSuccess;
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* /*function*/) {
  *attributes = cudaFuncAttributes{};
  attributes->binaryVersion = rsf_emu::env_int("RSF_EMU_SM", 90);
  attributes->ptxVersion = attributes->binaryVersion;
  attributes->maxThreadsPerBlock = rsf_emu::kMaxThreads;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* function, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > rsf_emu::optin_dynamic_shared()) {
    return cudaErrorInvalidValue;
  }
  const std::lock_guard<std::mutex> lock(rsf_emu::launch_mutex);
  rsf_emu::max_dynamic_shared[function] = static_cast<size_t>(value);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t /*stream*/) {
  std::memset(pointer, value, bytes);
  return cudaSuccess;
}

}  // extern "C"

// Lets tests check which kernel family ran (the tensor-core kernels are the only users of mma.sync).
TORCH_LIBRARY_FRAGMENT(rankseg_fast_emulated, m) {
  m.def("emulated_mma_calls() -> int", [] { return rsf_emu::mma_calls; });
}
