// Fuzz target: the forward threads' calls into the Controllers of 2 or 3 in-process ranks, with
// cycles that gather, plan, move and commit: RecordLoad with any layer, length and counts (zero,
// negative, up to and past the int64 range of a window count) in both count types, and Step. Every
// Step must return OK or a RecordLoad error; after every Step each layer's routing snapshot must
// route every expert to slots that hold it, the rank's expert map must name one of them, and each
// of the rank's slots must hold the bytes of the expert the snapshot names.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bytes.h"
#include "eplb/comm.h"
#include "eplb/runtime.h"

namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_controller: %s\n", what.c_str());
  std::abort();
}

using eplb_fuzz::Bytes;

// Mostly ordinary counts, with the edges of the range.
int64_t Count(Bytes& in) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  switch (in.Byte() % 8) {
    case 0:
      return kMax - in.Byte();
    case 1:
      return kMax / 2 + in.Byte();
    case 2:
      return -1 - in.Byte();
    case 3:
      return 0;
    default:
      return (int64_t{in.Byte()} << 8) | in.Byte();
  }
}

// Slot memory: per rank, layer and local slot, the id of the expert its 8 bytes hold.
using Memory = std::vector<std::vector<std::byte>>;
size_t Index(int rank, int layer, int slot, int layers, int S) {
  return (static_cast<size_t>(rank) * layers + layer) * S + slot;
}
int64_t Held(const std::vector<std::byte>& bytes) {
  int64_t id;
  std::memcpy(&id, bytes.data(), sizeof id);
  return id;
}

void CheckRouting(const eplb::Controller& ctl, int rank, int layers, int experts,
                  const Memory& memory) {
  const int S = ctl.slots_per_rank();
  for (int l = 0; l < layers; ++l) {
    const auto r = ctl.Routing(l);
    if (r == nullptr || r->layer != l) Fail("no routing snapshot for layer " + std::to_string(l));
    const int slots = r->ranks * r->slots_per_rank;
    if (static_cast<int>(r->phy2log.size()) != slots ||
        static_cast<int>(r->expert_map.size()) != experts) {
      Fail("layer " + std::to_string(l) + ": snapshot sizes");
    }
    for (int e = 0; e < experts; ++e) {
      const auto replicas = r->log2phy.replicas(e);
      if (replicas.empty()) Fail("layer " + std::to_string(l) + ": no replica routed");
      for (int slot : replicas) {
        if (slot < 0 || slot >= slots || r->phy2log[slot] != e) {
          Fail("layer " + std::to_string(l) + ": routed to a slot that does not hold the expert");
        }
      }
      const int local = r->expert_map[e];
      if (local != -1 && (local < 0 || local >= r->slots_per_rank ||
                          r->phy2log[rank * r->slots_per_rank + local] != e)) {
        Fail("layer " + std::to_string(l) + ": expert map names a wrong slot");
      }
    }
    for (int t = 0; t < S; ++t) {
      if (Held(memory[Index(rank, l, t, layers, S)]) != r->phy2log[rank * S + t]) {
        Fail("layer " + std::to_string(l) + ", local slot " + std::to_string(t) +
             ": its memory holds another expert than the snapshot names");
      }
    }
  }
}

// One rank's forward thread: every rank reads the same calls; rank r's counts are rotated by r
// slots, so the ranks see different loads.
void Drive(eplb::Controller& ctl, int rank, Bytes in, int layers, int experts,
           const Memory& memory) {
  const int S = ctl.slots_per_rank();
  for (int calls = 0; !in.empty() && calls < 512; ++calls) {
    const uint8_t op = in.Byte();
    if (op % 4 == 3) {
      const eplb::Status s = ctl.Step();
      if (!s.ok() && s.message().rfind("RecordLoad: ", 0) != 0) Fail(s.ToString());
      CheckRouting(ctl, rank, layers, experts, memory);
      continue;
    }
    // A layer in range, or now and then any small int; the right length, or now and then one off.
    const int layer = op % 16 == 0 ? static_cast<int8_t>(in.Byte()) : (op >> 2) % layers;
    const int length = op % 32 == 1 ? S + 1 : op % 32 == 2 ? S - 1 : S;
    std::vector<int64_t> counts(length);
    for (int i = 0; i < length; ++i) counts[(i + rank) % length] = Count(in);
    if (op % 4 == 2) {
      std::vector<int32_t> narrow(length);
      for (int i = 0; i < length; ++i) {
        narrow[i] = static_cast<int32_t>(counts[i] % (int64_t{1} << 31));
      }
      ctl.RecordLoad(layer, narrow);
    } else {
      ctl.RecordLoad(layer, counts);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)quiet;
  Bytes in(data, size);
  const int layers = 1 + in.Byte() % 3;
  const int experts = 2 + in.Byte() % 7;
  const uint8_t mode = in.Byte();
  const uint8_t more = in.Byte();
  const int ranks = 2 + (more >> 2) % 2;
  eplb::RuntimeConfig c;
  c.dynamic_eplb = (mode & 1) != 0;
  c.algorithm = (mode & 2) != 0 ? "deepseek" : "swift";
  // 0 to 3 redundant slots, raised until the slots divide by the ranks, lowered while a rank
  // would need two replicas of an expert.
  int redundant = (mode >> 2) % 4;
  redundant += (ranks - (experts + redundant) % ranks) % ranks;
  while ((experts + redundant) / ranks > experts) redundant -= ranks;
  c.num_redundant_experts = redundant;
  c.expert_heat_collection_interval = 1 + (mode >> 4) % 4;
  c.algorithm_execution_interval = 1 + (mode >> 6);
  c.max_layers_in_flight = 1 + more % 3;
  c.balancer_threads = 1 + (more >> 3) % 2;
  c.imbalance_threshold = (more & 0x10) != 0 ? 0.9 : 0.99;
  c.transfer_timeout_ms = 5000;
  auto world = eplb::MakeInProcessWorld(ranks);
  // Slot memory must outlive the controllers (their workers may be moving weights at the end).
  Memory memory;
  std::vector<std::unique_ptr<eplb::Controller>> ctls;
  for (int r = 0; r < ranks; ++r) {
    auto created =
        eplb::Controller::Create(c, {.layers = layers, .experts = experts}, world[r].get());
    if (!created.ok()) Fail(created.status().ToString());
    ctls.push_back(std::move(*created));
  }
  const int S = ctls[0]->slots_per_rank();
  memory.assign(static_cast<size_t>(ranks) * layers * S, std::vector<std::byte>(8));
  for (int r = 0; r < ranks; ++r) {
    for (int l = 0; l < layers; ++l) {
      for (int s = 0; s < S; ++s) {
        auto& bytes = memory[Index(r, l, s, layers, S)];
        const int64_t id = ctls[r]->initial_placement().layer(l)[r * S + s];
        std::memcpy(bytes.data(), &id, sizeof id);
        if (const eplb::Status st = ctls[r]->RegisterExpert(l, s, {std::span(bytes)}); !st.ok()) {
          Fail(st.ToString());
        }
      }
    }
    if (const eplb::Status st = ctls[r]->Start(); !st.ok()) Fail(st.ToString());
  }
  std::vector<std::thread> others;
  for (int r = 1; r < ranks; ++r) {
    others.emplace_back(Drive, std::ref(*ctls[r]), r, in, layers, experts, std::cref(memory));
  }
  Drive(*ctls[0], 0, in, layers, experts, memory);
  for (std::thread& t : others) t.join();
  return 0;
}
