// The runtime's safety invariants with the in-process backend (ranks as threads): bytes behind
// every routing snapshot, same commits at the same steps on every rank, rollback on failed
// transfers, plan-hash mismatch, static record/load, configuration and registration errors.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

#include "eplb/formats.h"
#include "eplb/runtime.h"
#include "runtime/fake_engine.h"

namespace eplb {
namespace {

// Forwards to another communicator; a test overrides what it wants to break.
class ForwardingComm : public Communicator {
 public:
  explicit ForwardingComm(Communicator* inner) : inner_(inner) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const char* backend() const override { return inner_->backend(); }
  StatusOr<Request> ISend(int dst, int tag, std::span<const std::byte> data) override {
    if (drop_send && drop_send(tag)) return Request(new Dropped());
    return inner_->ISend(dst, tag, data);
  }
  StatusOr<Request> IRecv(int src, int tag, std::span<std::byte> buffer) override {
    return inner_->IRecv(src, tag, buffer);
  }
  StatusOr<Request> IAllGather(std::span<const std::byte> send,
                               std::span<std::byte> recv) override {
    if (corrupt_hash && send.size() == sizeof(uint64_t)) {
      uint64_t h;
      std::memcpy(&h, send.data(), sizeof h);
      if (h != 0) h ^= 0x5a5a;
      return inner_->IAllGather(std::as_bytes(std::span(&h, 1)), recv);
    }
    return inner_->IAllGather(send, recv);
  }
  StatusOr<Request> IAllReduce(std::span<const int64_t> in, std::span<int64_t> out,
                               ReduceOp op) override {
    return inner_->IAllReduce(in, out, op);
  }
  StatusOr<Request> IAllReduce(std::span<const double> in, std::span<double> out,
                               ReduceOp op) override {
    return inner_->IAllReduce(in, out, op);
  }
  StatusOr<bool> Test(Request& r) override {
    if (dynamic_cast<Dropped*>(r.get())) return true;
    return inner_->Test(r);
  }
  Status Wait(Request& r, std::chrono::milliseconds timeout) override {
    if (dynamic_cast<Dropped*>(r.get())) return Status::Ok();
    return inner_->Wait(r, timeout);
  }
  void Abort(std::string reason) override { inner_->Abort(std::move(reason)); }

  std::function<bool(int tag)> drop_send;  // sends to drop (they "complete" but never arrive)
  bool corrupt_hash = false;               // this rank reports a different plan hash

 private:
  struct Dropped : RequestBase {};
  Communicator* inner_;
};

struct RunResult {
  std::vector<std::string> errors;  // per rank, first problem or ""
  std::vector<std::vector<Controller::Commit>> commits;
  std::vector<RuntimeMetrics> metrics;
  std::vector<std::vector<int>> final_phy2log;  // per rank, all layers
};

RuntimeConfig DynamicConfig(int redundant) {
  RuntimeConfig c;
  c.dynamic_eplb = true;
  c.expert_heat_collection_interval = 12;
  c.algorithm_execution_interval = 2;
  c.num_redundant_experts = redundant;
  c.max_layers_in_flight = 2;
  c.transfer_timeout_ms = 20000;
  c.algorithm_options.target_balancedness = 0.99;
  return c;
}

// Runs `ranks` controllers as threads for `steps` steps; `setup` may adjust each rank's comm.
// Steps at least `steps` times and until `min_cycles` cycles have completed (steps are faster than
// the worker here, so how many cycles fit in a number of steps depends on the machine).
RunResult RunWorld(int ranks, int layers, int experts, const RuntimeConfig& config, int steps,
                   uint64_t seed, const std::function<void(ForwardingComm&)>& setup = {},
                   int min_cycles = 0) {
  auto world = MakeInProcessWorld(ranks);
  RunResult out;
  out.errors.resize(ranks);
  out.commits.resize(ranks);
  out.metrics.resize(ranks);
  out.final_phy2log.resize(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      ForwardingComm comm(world[r].get());
      if (setup) setup(comm);
      auto ctl = Controller::Create(config, {.layers = layers, .experts = experts}, &comm);
      if (!ctl.ok()) {
        out.errors[r] = ctl.status().ToString();
        world[r]->Abort("create failed");
        return;
      }
      testing::FakeEngine engine(ctl->get(), r, layers, (*ctl)->slots_per_rank());
      if (Status s = engine.Load(); !s.ok()) {
        out.errors[r] = s.ToString();
        return;
      }
      if (Status s = (*ctl)->Start(); !s.ok()) {
        out.errors[r] = s.ToString();
        return;
      }
      std::mt19937_64 rng(seed * 1000 + r);
      // Run the steps, then finish the cycle in progress (every rank stops at the same step:
      // the phase of the cycle changes at the same steps everywhere).
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      for (int step = 0; out.errors[r].empty(); ++step) {
        if (step >= steps && !(*ctl)->CycleInProgress()) {
          const RuntimeMetrics m = (*ctl)->Metrics();
          if (m.cycles + m.cycles_skipped >= min_cycles) break;
        }
        if (std::chrono::steady_clock::now() > deadline) {
          out.errors[r] = "cycle did not finish within 60 s";
          break;
        }
        out.errors[r] = engine.RunStep(step / 60, rng);
      }
      out.commits[r] = (*ctl)->CommitLog();
      out.metrics[r] = (*ctl)->Metrics();
      for (int l = 0; l < layers; ++l) {
        auto snap = (*ctl)->Routing(l);
        out.final_phy2log[r].insert(out.final_phy2log[r].end(), snap->phy2log.begin(),
                                    snap->phy2log.end());
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

void ExpectAgreement(const RunResult& r) {
  for (size_t i = 0; i < r.errors.size(); ++i) EXPECT_EQ(r.errors[i], "") << "rank " << i;
  for (size_t i = 1; i < r.commits.size(); ++i) {
    EXPECT_EQ(r.commits[i], r.commits[0]) << "rank " << i << " committed differently";
    EXPECT_EQ(r.final_phy2log[i], r.final_phy2log[0]) << "rank " << i;
  }
}

class ControllerWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(ControllerWorldTest, ManyCyclesMoveExactBytesAndCommitTogether) {
  const int ranks = GetParam();
  for (uint64_t seed : {1, 2}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const RunResult r =
        RunWorld(ranks, 5, 16, DynamicConfig(ranks == 4 ? 8 : 16), 300, seed, {}, /*min_cycles=*/4);
    ExpectAgreement(r);
    EXPECT_GE(r.metrics[0].cycles, 3);
    EXPECT_GT(r.metrics[0].layers_committed, 0);
    EXPECT_EQ(r.metrics[0].layers_rolled_back, 0);
    EXPECT_GT(r.metrics[0].slots_changed_total, 0);
    // Epochs count commits per layer: the last commit of each layer carries its epoch.
    std::vector<uint64_t> count(5, 0);
    for (const auto& c : r.commits[0]) EXPECT_EQ(c.epoch, ++count[c.layer]);
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, ControllerWorldTest, ::testing::Values(4, 8),
                         [](const auto& info) { return "ranks" + std::to_string(info.param); });

TEST(ControllerTest, FailedTransfersRollTheLayerBackEverywhere) {
  RuntimeConfig c = DynamicConfig(8);
  c.transfer_timeout_ms = 300;
  // Rank 1 never delivers what it sends for layer 2: receivers time out, all ranks roll back.
  const RunResult r = RunWorld(4, 4, 16, c, 200, 3, [](ForwardingComm& comm) {
    if (comm.rank() == 1) comm.drop_send = [](int tag) { return tag % 4096 == 2; };
  });
  ExpectAgreement(r);
  for (const auto& m : r.metrics) EXPECT_GT(m.layers_rolled_back, 0);
  for (const auto& c : r.commits[0]) EXPECT_NE(c.layer, 2) << "layer 2 must never commit";
}

TEST(ControllerTest, PlanHashMismatchSkipsTheCycle) {
  const RunResult r = RunWorld(4, 3, 16, DynamicConfig(8), 100, 4,
                               [](ForwardingComm& comm) { comm.corrupt_hash = comm.rank() == 2; });
  ExpectAgreement(r);
  for (const auto& m : r.metrics) {
    EXPECT_GT(m.cycles_skipped, 0);
    EXPECT_EQ(m.layers_committed, 0);
  }
}

TEST(ControllerTest, StaticModeRecordsTheProposalAndALaterRunStartsFromIt) {
  const std::string path = ::testing::TempDir() + "/eplb_static_record.json";
  std::filesystem::remove(path);
  RuntimeConfig c = DynamicConfig(8);
  c.dynamic_eplb = false;
  c.expert_map_record_path = path;
  const RunResult r = RunWorld(4, 3, 16, c, 40, 5);
  ExpectAgreement(r);
  EXPECT_TRUE(r.commits[0].empty());  // static: nothing moves
  auto map = ReadExpertMap(path, 16, 4);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_NE(map->placement.phy2log(), r.final_phy2log[0]);  // a proposal, not the placement in use
  // A run that loads the recorded map starts from it.
  RuntimeConfig next = c;
  next.expert_map_path = path;
  next.expert_map_record_path.clear();
  auto world = MakeInProcessWorld(4);
  auto ctl = Controller::Create(next, {.layers = 3, .experts = 16}, world[0].get());
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  EXPECT_EQ((*ctl)->initial_placement(), map->placement);
  std::filesystem::remove(path);
}

TEST(ControllerTest, DynamicModeRecordsThePlacementInUse) {
  const std::string path = ::testing::TempDir() + "/eplb_dynamic_record.json";
  std::filesystem::remove(path);
  RuntimeConfig c = DynamicConfig(8);
  c.expert_map_record_path = path;
  const RunResult r = RunWorld(4, 3, 16, c, 150, 6, {}, /*min_cycles=*/2);
  ExpectAgreement(r);
  ASSERT_GT(r.metrics[0].cycles, 0);
  auto map = ReadExpertMap(path, 16, 4);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(map->placement.phy2log(), r.final_phy2log[0]);
  std::filesystem::remove(path);
}

TEST(ControllerTest, BadConfigurationAndRegistrationAreRejected) {
  auto world = MakeInProcessWorld(4);
  RuntimeConfig c = DynamicConfig(7);  // 16 + 7 does not divide over 4 ranks
  auto bad = Controller::Create(c, {.layers = 2, .experts = 16}, world[0].get());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("num_redundant_experts"), std::string::npos);
  c.num_redundant_experts = 0;
  c.expert_map_path = "/nonexistent/map.json";
  auto missing = Controller::Create(c, {.layers = 2, .experts = 16}, world[0].get());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/map.json"), std::string::npos);
  c.expert_map_path.clear();
  auto ctl = Controller::Create(c, {.layers = 2, .experts = 16}, world[0].get());
  ASSERT_TRUE(ctl.ok());
  std::vector<std::byte> a(8), b(9);
  EXPECT_FALSE((*ctl)->RegisterExpert(2, 0, {std::span(a)}).ok());
  EXPECT_TRUE((*ctl)->RegisterExpert(0, 0, {std::span(a)}).ok());
  EXPECT_FALSE((*ctl)->RegisterExpert(0, 1, {std::span(b)}).ok());  // other tensor size
  EXPECT_FALSE((*ctl)->Start().ok());                               // slots left unregistered
  EXPECT_FALSE((*ctl)->Step().ok());                                // not started
}

TEST(ControllerTest, PrometheusTextNamesEveryMetric) {
  RuntimeMetrics m;
  m.cycles = 3;
  const std::string text = PrometheusText(m, 2);
  for (const char* name :
       {"eplb_balancedness", "eplb_expert_load_balance_ratio", "eplb_rebalance_cycles_total",
        "eplb_slots_changed_total", "eplb_bytes_moved_total", "eplb_algorithm_seconds",
        "eplb_transfer_seconds"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + name), std::string::npos) << name;
  }
  EXPECT_NE(text.find("eplb_rebalance_cycles_total{rank=\"2\"} 3"), std::string::npos) << text;
}

}  // namespace
}  // namespace eplb
