// The runtime's safety invariants, with the in-process backend (ranks as threads) and many cycles
// of skewed loads that change over time:
// - every slot a routing snapshot names holds exactly that expert's bytes (both tensors), at the
//   start of every step and again just before Step(): no snapshot names a slot being written;
// - a slot never changes while a send that reads it is pending (sends here read their source
//   lazily, when they really go out, and complete late);
// - every rank commits each layer at the same step and ends with the same epochs and placement;
// plus rollback on timed-out transfers, plan-hash mismatch, a late worker, a rank that leaves,
// static record/load, and bad configuration, maps and input.
#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "eplb/formats.h"
#include "eplb/runtime.h"
#include "runtime/fake_engine.h"
#include "runtime/internal/mover.h"

namespace eplb {
namespace {

using namespace std::chrono_literals;

// Forwards to another communicator, with point-to-point requests of its own:
// - a send reads its source bytes only when it "goes out", after `delay` polls, and completes
//   then (a DMA engine that starts late); sends to one destination with one tag still go out in
//   the order they were started; a receive completes `delay` polls late;
// - `stall_p2p`: this rank's sends and receives never complete (a send is never delivered);
// - `corrupt_hash`: this rank reports a different plan hash.
// It keeps the source span of every send that has not completed, so a test can check that no
// slot changes under a pending send.
class TestComm : public Communicator {
 public:
  TestComm(Communicator* inner, int max_delay) : inner_(inner), max_delay_(max_delay) {}
  ~TestComm() override { EXPECT_TRUE(pending_sends_.empty()) << "requests outlive the comm"; }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const char* backend() const override { return inner_->backend(); }

  StatusOr<Request> ISend(int dst, int tag, std::span<const std::byte> data) override {
    auto r = std::make_unique<P2P>(this, /*send=*/true, dst, tag, NextDelay());
    r->source = data;
    std::lock_guard lock(mu_);
    pending_sends_[r.get()] = data;
    unsent_[{dst, tag}].push_back(r.get());
    return Request(std::move(r));
  }
  StatusOr<Request> IRecv(int src, int tag, std::span<std::byte> buffer) override {
    auto r = std::make_unique<P2P>(this, /*send=*/false, src, tag, NextDelay());
    if (!stall_p2p) {
      EPLB_ASSIGN_OR_RETURN(r->inner, inner_->IRecv(src, tag, buffer));
    }
    return Request(std::move(r));
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
  StatusOr<bool> Test(Request& request) override {
    auto* p = dynamic_cast<P2P*>(request.get());
    if (p == nullptr) return inner_->Test(request);
    if (p->done) return true;
    if (stall_p2p) return false;
    if (p->delay > 0) {
      --p->delay;
      return false;
    }
    if (p->send) EPLB_RETURN_IF_ERROR(SendUpTo(p));
    EPLB_ASSIGN_OR_RETURN(bool finished, inner_->Test(p->inner));
    if (finished) {
      p->done = true;
      Forget(p);
    }
    return finished;
  }
  Status Wait(Request& request, std::chrono::milliseconds timeout) override {
    if (dynamic_cast<P2P*>(request.get()) == nullptr) return inner_->Wait(request, timeout);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      EPLB_ASSIGN_OR_RETURN(bool finished, Test(request));
      if (finished) return Status::Ok();
      if (std::chrono::steady_clock::now() > deadline) return Status::Timeout("test comm wait");
      std::this_thread::sleep_for(100us);
    }
  }
  void Abort(std::string reason) override { inner_->Abort(std::move(reason)); }
  void DiscardTag(int tag) override {
    inner_->DiscardTag(tag);
    ++discarded_tags;
  }

  // True when a send that has not completed reads any byte of `memory`.
  bool SendPendingOn(std::span<const std::byte> memory) {
    std::lock_guard lock(mu_);
    for (const auto& [request, source] : pending_sends_) {
      if (source.data() < memory.data() + memory.size() &&
          memory.data() < source.data() + source.size()) {
        return true;
      }
    }
    return false;
  }

  bool stall_p2p = false;
  bool corrupt_hash = false;
  std::atomic<int> discarded_tags{0};  // DiscardTag calls

 private:
  struct P2P : RequestBase {
    P2P(TestComm* o, bool s, int p, int t, int d) : owner(o), send(s), peer(p), tag(t), delay(d) {}
    // Destroying a pending send still delivers it (the Communicator contract), unless stalled.
    ~P2P() override {
      if (send && !owner->stall_p2p) (void)owner->SendUpTo(this);
      owner->Forget(this);
    }
    TestComm* owner;
    bool send;
    int peer, tag, delay;
    bool done = false;
    std::span<const std::byte> source;
    Request inner;
  };

  int NextDelay() {
    if (max_delay_ == 0) return 0;
    std::lock_guard lock(mu_);
    return static_cast<int>(rng_() % (max_delay_ + 1));
  }
  void Forget(P2P* p) {
    std::lock_guard lock(mu_);
    pending_sends_.erase(p);
    if (p->send) std::erase(unsent_[{p->peer, p->tag}], p);
  }
  // Sends `p` and every send started before it to the same destination with the same tag that
  // has not gone out yet, in order.
  Status SendUpTo(P2P* p) {
    std::lock_guard lock(mu_);
    std::deque<P2P*>& queue = unsent_[{p->peer, p->tag}];
    if (std::find(queue.begin(), queue.end(), p) == queue.end()) return Status::Ok();
    while (true) {
      P2P* q = queue.front();
      queue.pop_front();
      EPLB_ASSIGN_OR_RETURN(q->inner, inner_->ISend(q->peer, q->tag, q->source));
      if (q == p) return Status::Ok();
    }
  }

  Communicator* inner_;
  int max_delay_;
  std::mutex mu_;
  std::map<const P2P*, std::span<const std::byte>> pending_sends_;
  std::map<std::pair<int, int>, std::deque<P2P*>> unsent_;  // (destination, tag) -> not sent yet
  std::mt19937 rng_{7};
};

struct WorldOptions {
  int ranks = 4;
  int layers = 5;
  int experts = 16;
  RuntimeConfig config;
  int steps = 100;     // at least this many steps ...
  int min_cycles = 0;  // ... and until this many cycles completed or were skipped
  uint64_t seed = 1;
  int max_delay = 3;      // polls a point-to-point request is late (TestComm)
  bool lockstep = false;  // ranks step together, as an engine's all-to-all makes them
  std::function<void(TestComm&)> setup;
  int leaving_rank = -1;       // this rank destroys its controller and communicator ...
  int leave_at = 0;            // ... at this step
  int wait_worker_cycles = 0;  // after the steps, wait for the worker to finish this many cycles
  int nodes = 1;
};

struct RankResult {
  std::string violation;  // first broken invariant, or ""
  std::vector<std::string> step_errors;
  std::vector<Controller::Commit> commits;
  RuntimeMetrics metrics;
  std::vector<int> phy2log;  // all layers, final
  std::vector<uint64_t> epochs;
  std::vector<int> initial;  // all layers
  int slots_per_rank = 0;
  int discarded_tags = 0;  // the communicator's DiscardTag calls
};

std::vector<RankResult> RunWorld(const WorldOptions& o) {
  auto world = MakeInProcessWorld(o.ranks);
  std::vector<RankResult> out(o.ranks);
  std::barrier sync(o.ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < o.ranks; ++r) {
    threads.emplace_back([&, r] {
      RankResult& res = out[r];
      auto comm = std::make_unique<TestComm>(world[r].get(), o.max_delay);
      if (o.setup) o.setup(*comm);
      auto created = Controller::Create(
          o.config, {.layers = o.layers, .experts = o.experts, .nodes = o.nodes}, comm.get());
      if (!created.ok()) {
        res.violation = "Create: " + created.status().ToString();
        if (o.lockstep) sync.arrive_and_drop();
        return;
      }
      std::unique_ptr<Controller> ctl = std::move(*created);
      res.slots_per_rank = ctl->slots_per_rank();
      res.initial = ctl->initial_placement().phy2log();
      testing::FakeEngine engine(ctl.get(), r, o.layers, ctl->slots_per_rank());
      if (Status s = engine.Load(); !s.ok()) res.violation = "Load: " + s.ToString();
      if (Status s = ctl->Start(); res.violation.empty() && !s.ok()) res.violation = s.ToString();
      std::mt19937_64 rng(o.seed * 1000 + r);
      const auto deadline = std::chrono::steady_clock::now() + 60s;
      for (int step = 0; res.violation.empty(); ++step) {
        if (step >= o.steps && !ctl->CycleInProgress()) {
          const RuntimeMetrics m = ctl->Metrics();
          if (m.cycles + m.cycles_skipped >= o.min_cycles || m.disabled) break;
        }
        if (r == o.leaving_rank && step == o.leave_at) {
          ctl.reset();
          comm.reset();
          world[r].reset();
          break;
        }
        if (std::chrono::steady_clock::now() > deadline) {
          res.violation = "not done within 60 s";
          break;
        }
        const std::vector<std::vector<std::byte>> before = engine.Snapshot();
        Status step_error;
        res.violation = engine.RunStep(step / 60, rng, &step_error);
        if (!step_error.ok()) res.step_errors.push_back(step_error.ToString());
        // A slot that Step() changed must not be the source of a pending send.
        const std::vector<std::vector<std::byte>> after = engine.Snapshot();
        for (size_t i = 0; i < after.size() && res.violation.empty(); ++i) {
          if (after[i] == before[i]) continue;
          auto [weights, scales] = engine.SlotMemory(i);
          if (comm->SendPendingOn(weights) || comm->SendPendingOn(scales)) {
            res.violation = "rank " + std::to_string(r) + ": slot " + std::to_string(i) +
                            " overwritten while a send from it was pending";
          }
        }
        if (o.lockstep) sync.arrive_and_wait();
      }
      if (o.lockstep) sync.arrive_and_drop();
      if (!ctl) return;  // left
      // Static mode: the worker counts cycles on its own time (no step decides it).
      while (ctl->Metrics().cycles < o.wait_worker_cycles &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(1ms);
      }
      if (res.violation.empty()) res.violation = engine.Verify();
      res.commits = ctl->CommitLog();
      res.metrics = ctl->Metrics();
      res.discarded_tags = comm->discarded_tags.load();
      for (int l = 0; l < o.layers; ++l) {
        auto snap = ctl->Routing(l);
        res.phy2log.insert(res.phy2log.end(), snap->phy2log.begin(), snap->phy2log.end());
        res.epochs.push_back(snap->epoch);
      }
      ctl.reset();  // before the engine's memory and the communicator go
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

// No violations; every rank holds the same commit log, epochs and placement.
void ExpectAgreement(const std::vector<RankResult>& res, bool allow_step_errors = false) {
  for (size_t r = 0; r < res.size(); ++r) {
    EXPECT_EQ(res[r].violation, "") << "rank " << r;
    if (!allow_step_errors) {
      EXPECT_TRUE(res[r].step_errors.empty()) << "rank " << r << ": " << res[r].step_errors[0];
    }
  }
  for (size_t r = 1; r < res.size(); ++r) {
    EXPECT_EQ(res[r].commits, res[0].commits) << "rank " << r << " committed differently";
    EXPECT_EQ(res[r].epochs, res[0].epochs) << "rank " << r;
    EXPECT_EQ(res[r].phy2log, res[0].phy2log) << "rank " << r;
  }
}

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

class ControllerWorldTest : public ::testing::TestWithParam<int> {};

TEST_P(ControllerWorldTest, ManyCyclesMoveExactBytesAndCommitTogether) {
  const int ranks = GetParam();
  for (uint64_t seed : {1, 2, 3}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    WorldOptions o;
    o.ranks = ranks;
    o.config = DynamicConfig(ranks == 4 ? 8 : 16);
    o.steps = 300;
    o.min_cycles = 12;
    o.seed = seed;
    const auto res = RunWorld(o);
    ExpectAgreement(res);
    const RuntimeMetrics& m = res[0].metrics;
    EXPECT_GE(m.cycles, 12);
    EXPECT_GT(m.layers_committed, 0);
    EXPECT_EQ(m.layers_rolled_back, 0);
    EXPECT_GT(m.slots_changed_total, 0);
    // Epochs count commits per layer; the log's last commit of a layer carries its epoch.
    std::vector<uint64_t> count(o.layers, 0);
    for (const auto& c : res[0].commits) EXPECT_EQ(c.epoch, ++count[c.layer]);
    EXPECT_EQ(res[0].epochs, count);
    // Staging holds at most max_layers_in_flight layers of incoming experts.
    const int64_t expert_bytes = testing::kWeightBytes + testing::kScales * sizeof(float);
    for (const RankResult& r : res) {
      EXPECT_LE(r.metrics.staging_bytes_peak,
                o.config.max_layers_in_flight * r.slots_per_rank * expert_bytes);
    }
    EXPECT_GE(m.last_balancedness_after, 0.0);
    EXPECT_LE(m.last_balancedness_after, 1.0);
  }
}

// Bytes from other nodes: none on one node; all of them when every rank is a node of its own
// (slots keep their experts, so no copy is local); some on 2 nodes of 2 ranks.
TEST(ControllerTest, BytesFromOtherNodesAreCounted) {
  std::map<int, int64_t> between, moved;  // per node count, summed over ranks
  for (int nodes : {1, 2, 4}) {
    SCOPED_TRACE("nodes " + std::to_string(nodes));
    WorldOptions o;
    o.ranks = 4;
    o.nodes = nodes;
    o.config = DynamicConfig(8);
    o.steps = 200;
    o.min_cycles = 6;
    const auto res = RunWorld(o);
    ExpectAgreement(res);
    for (const RankResult& r : res) {
      between[nodes] += r.metrics.inter_node_bytes_total;
      moved[nodes] += r.metrics.bytes_moved_total;
      EXPECT_LE(r.metrics.inter_node_bytes_total, r.metrics.bytes_moved_total);
      EXPECT_LE(r.metrics.last_inter_node_bytes, r.metrics.last_bytes_moved);
    }
    EXPECT_GT(moved[nodes], 0);
  }
  EXPECT_EQ(between[1], 0);
  EXPECT_GT(between[2], 0);
  EXPECT_LT(between[2], moved[2]);
  EXPECT_EQ(between[4], moved[4]);
}

// swift's options from the JSON configuration reach the worker's balancer: a cap of 3 slots per
// cycle holds in every cycle.
TEST(ControllerTest, ChangeCapFromTheConfigurationHolds) {
  WorldOptions o;
  o.ranks = 4;
  auto parsed = ParseRuntimeConfig(
      R"({"dynamic_eplb": true, "expert_heat_collection_interval": 12,
          "algorithm_execution_interval": 2, "num_redundant_experts": 8,
          "max_layers_in_flight": 2, "transfer_timeout_ms": 20000,
          "target_balancedness": 0.99, "max_changes_per_cycle": 3})",
      "cfg");
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  o.config = *parsed;
  o.steps = 200;
  o.min_cycles = 8;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  const RuntimeMetrics& m = res[0].metrics;
  EXPECT_GE(m.cycles, 8);
  EXPECT_GT(m.slots_changed_total, 0);
  EXPECT_LE(m.slots_changed_total, 3 * m.cycles);
}

INSTANTIATE_TEST_SUITE_P(Ranks, ControllerWorldTest, ::testing::Values(4, 8),
                         [](const auto& info) { return "ranks" + std::to_string(info.param); });

TEST(ControllerTest, TheCommitLogKeepsTheLatestCommits) {
  WorldOptions o;
  o.ranks = 2;
  o.layers = 700;
  o.experts = 4;
  o.config = DynamicConfig(2);
  o.config.max_layers_in_flight = 128;
  o.steps = 480;  // the fake engine's loads change every 60 steps
  o.min_cycles = 8;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  const RuntimeMetrics& m = res[0].metrics;
  ASSERT_GT(m.layers_committed, static_cast<int64_t>(Controller::kCommitLogCapacity))
      << "too few commits to fill the log";
  ASSERT_EQ(res[0].commits.size(), Controller::kCommitLogCapacity);
  // The log ends with the last commit of every layer: its epoch is the layer's epoch.
  std::vector<uint64_t> last(o.layers, 0);
  for (const auto& c : res[0].commits) {
    EXPECT_GT(c.epoch, last[c.layer]) << "layer " << c.layer;
    last[c.layer] = c.epoch;
  }
  for (int l = 0; l < o.layers; ++l) {
    if (last[l] > 0) {
      EXPECT_EQ(last[l], res[0].epochs[l]) << "layer " << l;
    }
  }
}

TEST(ControllerTest, SlotsAreNotOverwrittenWhileTheirSendsArePending) {
  // Sends complete up to 40 polls late and read their source only then; ranks in lockstep.
  WorldOptions o;
  o.config = DynamicConfig(8);
  o.config.max_layers_in_flight = 1;
  o.steps = 100;
  o.min_cycles = 4;
  o.max_delay = 40;
  o.lockstep = true;
  o.seed = 9;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  EXPECT_GT(res[0].metrics.layers_committed, 0);
}

TEST(ControllerTest, TransfersThatTimeOutRollTheLayersBackOnEveryRank) {
  WorldOptions o;
  o.config = DynamicConfig(8);
  o.config.transfer_timeout_ms = 300;
  o.steps = 40;
  o.min_cycles = 2;
  o.lockstep = true;
  o.seed = 3;
  // Rank 1's transfers never complete: every layer in which it sends or receives rolls back.
  o.setup = [](TestComm& comm) { comm.stall_p2p = comm.rank() == 1; };
  const auto res = RunWorld(o);
  ExpectAgreement(res, /*allow_step_errors=*/true);
  for (const RankResult& r : res) {
    EXPECT_GT(r.metrics.layers_rolled_back, 0);
    // Each rolled-back layer's tag is discarded, so its late copies are freed, not kept.
    EXPECT_EQ(r.discarded_tags, r.metrics.layers_rolled_back);
  }
  EXPECT_GT(res[1].metrics.transfers_failed, 0);
  ASSERT_FALSE(res[1].step_errors.empty());
  EXPECT_NE(res[1].step_errors[0].find("not done after 300 ms"), std::string::npos)
      << res[1].step_errors[0];
  // Rank 1 can never complete a layer that touches it, so its slots never change.
  const int S = res[1].slots_per_rank;
  for (int l = 0; l < o.layers; ++l) {
    for (int s = 0; s < S; ++s) {
      const size_t i = (static_cast<size_t>(l) * o.ranks + 1) * S + s;
      EXPECT_EQ(res[1].phy2log[i], res[1].initial[i]) << "layer " << l << " slot " << s;
    }
  }
  EXPECT_FALSE(res[0].metrics.disabled);
}

// Several layers that fail between two steps are each returned by a Step (before: the first
// only; the others were logged and counted, never returned).
TEST(ControllerTest, StepReturnsEveryFailureOnce) {
  WorldOptions o;
  o.config = DynamicConfig(8);
  o.config.max_layers_in_flight = 5;  // every layer at once, so they time out together
  o.config.transfer_timeout_ms = 300;
  o.steps = 40;
  o.min_cycles = 2;
  o.lockstep = true;
  o.setup = [](TestComm& comm) { comm.stall_p2p = comm.rank() == 1; };
  const auto res = RunWorld(o);
  ExpectAgreement(res, /*allow_step_errors=*/true);
  // Rank 1 takes part in at least 3 of the 5 layers of the first cycle, and they time out
  // together: 3 errors naming 3 layers (before: 1 per cycle, here 2 in all).
  const std::vector<std::string>& errors = res[1].step_errors;
  ASSERT_GE(errors.size(), 3u);
  std::set<std::string> layers;
  for (size_t i = 0; i < 3; ++i) {
    const size_t at = errors[i].find("layer ");
    ASSERT_NE(at, std::string::npos) << errors[i];
    layers.insert(errors[i].substr(at, errors[i].find(':', at) - at));
  }
  EXPECT_EQ(layers.size(), 3u) << errors[0] << " / " << errors[1] << " / " << errors[2];
}

TEST(ControllerTest, PlanHashMismatchSkipsTheCycle) {
  WorldOptions o;
  o.layers = 3;
  o.config = DynamicConfig(8);
  o.min_cycles = 3;
  o.seed = 4;
  o.setup = [](TestComm& comm) { comm.corrupt_hash = comm.rank() == 2; };
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  for (const RankResult& r : res) {
    EXPECT_GE(r.metrics.cycles_skipped, 3);
    EXPECT_EQ(r.metrics.layers_committed, 0);
    EXPECT_TRUE(r.commits.empty());
  }
}

TEST(ControllerTest, ALateWorkerJustMakesTheCycleLater) {
  // The plan is due 1 step after the gather; steps here take microseconds, the algorithm longer.
  WorldOptions o;
  o.layers = 8;
  o.experts = 64;
  o.config = DynamicConfig(16);
  o.config.algorithm_execution_interval = 1;
  o.config.expert_heat_collection_interval = 6;
  o.steps = 50;
  o.min_cycles = 3;
  o.seed = 5;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  EXPECT_GE(res[0].metrics.cycles, 3);
  EXPECT_GT(res[0].metrics.cycles_late, 0);
  EXPECT_GT(res[0].metrics.layers_committed, 0);
}

TEST(ControllerTest, ARankThatLeavesStopsRebalancingWithoutAHang) {
  WorldOptions o;
  o.config = DynamicConfig(8);
  o.config.transfer_timeout_ms = 2000;
  o.steps = 120;
  o.leaving_rank = 3;
  o.leave_at = 30;
  o.seed = 6;
  const auto res = RunWorld(o);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(res[r].violation, "") << "rank " << r;
    EXPECT_TRUE(res[r].metrics.disabled) << "rank " << r;
    ASSERT_FALSE(res[r].step_errors.empty()) << "rank " << r;
    EXPECT_NE(res[r].step_errors[0].find("rank " + std::to_string(r)), std::string::npos);
  }
}

TEST(ControllerTest, StaticModeRecordsTheProposalAndALaterRunStartsFromIt) {
  const std::string path = ::testing::TempDir() + "/eplb_static_record.json";
  std::filesystem::remove(path);
  WorldOptions o;
  o.layers = 3;
  o.config = DynamicConfig(8);
  o.config.dynamic_eplb = false;
  o.config.expert_map_record_path = path;
  o.steps = 40;              // gathers at steps 12, 24 and 36
  o.wait_worker_cycles = 1;  // a busy worker takes the latest window only
  o.seed = 5;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  for (const RankResult& r : res) {
    EXPECT_TRUE(r.commits.empty());  // static: nothing moves
    EXPECT_EQ(r.phy2log, r.initial);
    EXPECT_GE(r.metrics.cycles, 1);
    EXPECT_GT(r.metrics.last_balancedness_proposed, r.metrics.last_balancedness_before);
    EXPECT_EQ(r.metrics.last_balancedness_after, r.metrics.last_balancedness_before);
  }
  auto map = ReadExpertMap(path, 16, 4);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_NE(map->placement.phy2log(), res[0].phy2log);  // a proposal, not the placement in use
  // A later run (dynamic, to move bytes too) starts from the recorded map.
  WorldOptions next = o;
  next.config.dynamic_eplb = true;
  next.config.expert_map_path = path;
  next.config.expert_map_record_path.clear();
  next.wait_worker_cycles = 0;
  next.min_cycles = 2;
  const auto again = RunWorld(next);
  ExpectAgreement(again);
  EXPECT_EQ(again[0].initial, map->placement.phy2log());
  std::filesystem::remove(path);
}

// expert_heat_windows: the balancer sees the summed load of the latest windows. Two ranks, one
// layer of 4 experts, 2 slots per rank, static mode (the placement stays, so the balancedness it
// reports is that of the load on the initial placement). Window A sends 10 tokens per step to
// rank 0's first slot, window B as many to rank 1's: B alone is 0.5 balanced, A + B is 1.0.
double BalancednessSeenAfterTwoWindows(int heat_windows) {
  constexpr int kRanks = 2, kInterval = 4;
  RuntimeConfig c;
  c.expert_heat_collection_interval = kInterval;  // gathers at steps 4 and 8
  c.algorithm_execution_interval = 2;             // handed over by steps 7 and 11
  c.expert_heat_windows = heat_windows;
  auto world = MakeInProcessWorld(kRanks);
  std::vector<double> seen(kRanks, -1);
  std::barrier sync(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      auto ctl = Controller::Create(c, {.layers = 1, .experts = 4}, world[r].get());
      std::vector<std::vector<std::byte>> mem(2, std::vector<std::byte>(8));
      const bool ready = ctl.ok() && (*ctl)->slots_per_rank() == 2 &&
                         (*ctl)->RegisterExpert(0, 0, {std::span(mem[0])}).ok() &&
                         (*ctl)->RegisterExpert(0, 1, {std::span(mem[1])}).ok() &&
                         (*ctl)->Start().ok();
      if (!ready) {
        ADD_FAILURE() << "rank " << r << ": set-up failed";
        sync.arrive_and_drop();
        return;
      }
      Controller& k = **ctl;
      auto wait_cycles = [&](int n) {
        const auto deadline = std::chrono::steady_clock::now() + 30s;
        while (k.Metrics().cycles < n && std::chrono::steady_clock::now() < deadline) {
          std::this_thread::sleep_for(1ms);
        }
        EXPECT_GE(k.Metrics().cycles, n) << "rank " << r;
      };
      for (int i = 0; i < 11; ++i) {
        const int window = i / kInterval;  // 0: A, 1: B, 2: not gathered
        const int64_t tokens = (window == 0 && r == 0) || (window == 1 && r == 1) ? 10 : 0;
        const std::vector<int64_t> counts = {tokens, 0};
        k.RecordLoad(0, counts);
        // A is planned before B is gathered: a busy worker would otherwise take B only.
        if (i == kInterval + 3) wait_cycles(1);
        EXPECT_TRUE(k.Step().ok()) << "rank " << r << ", step " << i;
        sync.arrive_and_wait();
      }
      wait_cycles(2);
      seen[r] = k.Metrics().last_balancedness_before;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(seen[0], seen[1]);
  return seen[0];
}

TEST(ControllerTest, TheBalancerSeesTheLatestHeatWindowsSummed) {
  EXPECT_DOUBLE_EQ(BalancednessSeenAfterTwoWindows(1), 0.5);  // B alone
  EXPECT_DOUBLE_EQ(BalancednessSeenAfterTwoWindows(2), 1.0);  // A + B
  EXPECT_DOUBLE_EQ(BalancednessSeenAfterTwoWindows(3), 1.0);  // all there are
}

// expert_load_path: every rank starts from the algorithm's placement for the file's MoE rows (an
// all-zero row is a dense layer, left out), and they agree while rebalancing from it.
TEST(ControllerTest, ALoadFileGivesTheInitialPlacement) {
  const std::string path = ::testing::TempDir() + "/eplb_initial_load.csv";
  {
    std::ofstream f(path);
    f << "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0\n";  // dense
    for (int l = 0; l < 3; ++l) {
      for (int e = 0; e < 16; ++e) f << (e == 0 ? "" : ",") << (e == 3 * l ? 200 : 1 + e % 5);
      f << "\n";
    }
  }
  WorldOptions o;
  o.layers = 3;
  o.config = DynamicConfig(8);
  o.config.expert_load_path = path;
  o.min_cycles = 2;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  auto file = ReadLoadFile(path);
  ASSERT_TRUE(file.ok());
  const Shape shape{.layers = 3, .experts = 16, .ranks = 4, .slots_per_rank = 6};
  auto balancer = MakeBalancer("swift", BalancerOptions(o.config));
  ASSERT_TRUE(balancer.ok());
  const Placement expected = (*balancer)->Balance({&file->moe, shape, nullptr})->placement;
  for (const RankResult& r : res) EXPECT_EQ(r.initial, expected.phy2log());
  EXPECT_NE(expected, Placement::IdOrder(shape));
  EXPECT_GT(MeanBalancedness(file->moe, expected), 0.9);

  // A file whose MoE rows do not match the model's layers, and one that is missing.
  auto world = MakeInProcessWorld(4);
  auto error_of = [&](const RuntimeConfig& config, int layers) -> std::string {
    auto r = Controller::Create(config, {.layers = layers, .experts = 16}, world[0].get());
    return r.ok() ? "(created)" : std::string(r.status().message());
  };
  EXPECT_EQ(error_of(o.config, 4),
            "eplb_config.expert_load_path: " + path +
                ": 3 MoE rows (all-zero rows left out: 1), the model has 4 MoE layers");
  RuntimeConfig missing = o.config;
  missing.expert_load_path = path + ".missing";
  EXPECT_NE(error_of(missing, 3).find("eplb_config.expert_load_path: " + path + ".missing"),
            std::string::npos);
  std::filesystem::remove(path);
}

TEST(ControllerTest, DynamicModeRecordsThePlacementInUse) {
  const std::string path = ::testing::TempDir() + "/eplb_dynamic_record.json";
  std::filesystem::remove(path);
  WorldOptions o;
  o.layers = 3;
  o.config = DynamicConfig(8);
  o.config.expert_map_record_path = path;
  o.steps = 60;
  o.min_cycles = 3;
  o.seed = 6;
  const auto res = RunWorld(o);
  ExpectAgreement(res);
  ASSERT_GT(res[0].metrics.layers_committed, 0);
  // The record is written by the worker after the cycle; the controllers are gone by now, and
  // a controller flushes its pending records before it stops.
  auto map = ReadExpertMap(path, 16, 4);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(map->placement.phy2log(), res[0].phy2log);
  std::filesystem::remove(path);
}

TEST(ControllerTest, AnExpertMapOfAnotherShapeIsRejected) {
  const std::string path = ::testing::TempDir() + "/eplb_shape_map.json";
  const Shape shape{.layers = 3, .experts = 16, .ranks = 4, .slots_per_rank = 6};
  ASSERT_TRUE(WriteExpertMap(path, Placement::IdOrder(shape), MapFormat::kVllmAscend).ok());
  RuntimeConfig c = DynamicConfig(8);
  c.expert_map_path = path;
  auto world = MakeInProcessWorld(4);
  auto layers = Controller::Create(c, {.layers = 4, .experts = 16}, world[0].get());
  ASSERT_FALSE(layers.ok());
  EXPECT_NE(layers.status().message().find(path), std::string::npos) << layers.status().message();
  EXPECT_NE(layers.status().message().find("3 layers"), std::string::npos);
  EXPECT_NE(layers.status().message().find("expected 4 layers"), std::string::npos);
  auto eight = MakeInProcessWorld(8);
  c.num_redundant_experts = 16;
  auto ranks = Controller::Create(c, {.layers = 3, .experts = 16}, eight[0].get());
  ASSERT_FALSE(ranks.ok());
  EXPECT_NE(ranks.status().message().find("expert_map_path"), std::string::npos)
      << ranks.status().message();
  c.num_redundant_experts = 8;
  EXPECT_TRUE(Controller::Create(c, {.layers = 3, .experts = 16}, world[0].get()).ok());
  std::filesystem::remove(path);
}

TEST(ControllerTest, BadConfigurationRegistrationAndLoadsAreRejected) {
  auto world = MakeInProcessWorld(4);
  RuntimeConfig c = DynamicConfig(7);  // 16 + 7 does not divide over 4 ranks
  // Create's error message, or "(created)" when it succeeds (which every check below rejects).
  auto error_of = [&](const RuntimeConfig& config) -> std::string {
    auto r = Controller::Create(config, {.layers = 2, .experts = 16}, world[0].get());
    return r.ok() ? "(created)" : std::string(r.status().message());
  };
  EXPECT_NE(error_of(c).find("num_redundant_experts"), std::string::npos);
  c.num_redundant_experts = 0;
  c.max_layers_in_flight = 0;
  EXPECT_NE(error_of(c).find("max_layers_in_flight"), std::string::npos);
  c.max_layers_in_flight = 2;
  c.balancer_threads = 0;
  EXPECT_EQ(error_of(c), "eplb_config.balancer_threads: expected an integer in [1, 256], got 0");
  c.balancer_threads = 2;
  c.expert_heat_windows = 257;
  EXPECT_EQ(error_of(c),
            "eplb_config.expert_heat_windows: expected an integer in [1, 256], got 257");
  c.expert_heat_windows = 1;
  c.imbalance_threshold = 0;
  EXPECT_EQ(error_of(c), "eplb_config.imbalance_threshold: expected a number in (0, 1], got 0");
  c.imbalance_threshold = 0.99;
  c.algorithm_options.target_balancedness = 2;
  EXPECT_EQ(error_of(c), "eplb_config.target_balancedness: expected a number in (0, 1], got 2");
  c.algorithm_options.target_balancedness = 0.97;
  c.expert_map_path = "/nonexistent/map.json";
  EXPECT_NE(error_of(c).find("/nonexistent/map.json"), std::string::npos);
  c.expert_map_path.clear();
  c.algorithm = "nope";
  EXPECT_FALSE(Controller::Create(c, {.layers = 2, .experts = 16}, world[0].get()).ok());
  c.algorithm = "swift";
  EXPECT_FALSE(Controller::Create(c, {.layers = 0, .experts = 16}, world[0].get()).ok());
  // A shape past the algorithm's own limits fails here, before the controller allocates its
  // windows (before: it was created, and the first rebalance failed on the worker).
  auto sixteen = MakeInProcessWorld(16);
  auto wide = Controller::Create(c, {.layers = 2, .experts = 1 << 24}, sixteen[0].get());
  EXPECT_EQ(wide.ok() ? "(created)" : std::string(wide.status().message()),
            "model: swift: ranks x experts = 16 x 16777216 is more than 2^27: its working state "
            "takes up to 6 bytes per rank and expert (deepseek has no such limit)");

  auto ctl = Controller::Create(c, {.layers = 2, .experts = 16}, world[0].get());
  ASSERT_TRUE(ctl.ok());
  Controller& k = **ctl;
  EXPECT_FALSE(k.Step().ok());  // not started
  std::vector<std::vector<std::byte>> mem(8, std::vector<std::byte>(8));
  std::vector<std::byte> other(9);
  EXPECT_FALSE(k.RegisterExpert(2, 0, {std::span(mem[0])}).ok());  // no layer 2
  EXPECT_FALSE(k.RegisterExpert(0, 4, {std::span(mem[0])}).ok());  // 4 slots per rank
  EXPECT_FALSE(k.RegisterExpert(0, 0, {}).ok());                   // no tensors
  EXPECT_TRUE(k.RegisterExpert(0, 0, {std::span(mem[0])}).ok());
  EXPECT_FALSE(k.RegisterExpert(0, 1, {std::span(other)}).ok());  // another tensor size
  EXPECT_FALSE(k.Start().ok());                                   // slots left unregistered
  for (int i = 1; i < 8; ++i) ASSERT_TRUE(k.RegisterExpert(i / 4, i % 4, {std::span(mem[i])}).ok());
  ASSERT_TRUE(k.Start().ok());
  EXPECT_FALSE(k.Start().ok());
  EXPECT_FALSE(k.RegisterExpert(0, 0, {std::span(mem[0])}).ok());  // after Start
  const std::vector<int64_t> three(3, 1);
  k.RecordLoad(0, three);  // 3 counts for 4 slots
  Status s = k.Step();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("RecordLoad: layer 0 with 3 counts"), std::string::npos)
      << s.message();
  EXPECT_TRUE(k.Step().ok());  // reported once
  const std::vector<int32_t> negative{4, 0, -7, 1};
  k.RecordLoad(1, negative);
  s = k.Step();
  EXPECT_EQ(s.message(), "RecordLoad: layer 1, local slot 2: -7 tokens; counts must be >= 0");
  EXPECT_TRUE(k.Step().ok());
  // Counts that would take a window count past the int64 range are refused and undone: the
  // second call is refused whole, and slot 1 keeps the count of the first.
  const int64_t near_max = std::numeric_limits<int64_t>::max() - 10;
  k.RecordLoad(0, std::vector<int64_t>{0, near_max, 0, 0});
  k.RecordLoad(0, std::vector<int64_t>{1, 11, 0, 0});
  s = k.Step();
  EXPECT_EQ(s.message(),
            "RecordLoad: layer 0, local slot 1: 11 tokens overflow the window's count of "
            "9223372036854775797");
  k.RecordLoad(0, std::vector<int64_t>{0, 10, 0, 0});  // exactly the largest int64: fits
  EXPECT_TRUE(k.Step().ok());
  EXPECT_EQ(k.Routing(2), nullptr);
  EXPECT_EQ(k.Routing(1)->epoch, 0u);
}

TEST(ControllerTest, TheDefaultPlacementReplicatesRoundRobinWithoutDuplicates) {
  auto world = MakeInProcessWorld(4);
  RuntimeConfig c = DynamicConfig(8);  // 24 slots for 16 experts
  auto ctl = Controller::Create(c, {.layers = 2, .experts = 16}, world[0].get());
  ASSERT_TRUE(ctl.ok());
  const Placement& p = (*ctl)->initial_placement();
  EXPECT_TRUE(ValidatePlacement(p).ok());
  for (int slot = 0; slot < p.slots(); ++slot) EXPECT_EQ(p.layer(1)[slot], slot % 16);
  auto snap = (*ctl)->Routing(0);
  EXPECT_EQ(snap->expert_map[0], 0);  // rank 0 holds experts 0..5
  EXPECT_EQ(snap->expert_map[5], 5);
  EXPECT_EQ(snap->expert_map[10], -1);
  EXPECT_EQ(snap->log2phy.replicas(0).size(), 2u);  // slot 0 and slot 16
}

TEST(TagPoolTest, SkipsPoisonedTagsAndWrapsAround) {
  runtime_internal::TagPool pool(4);
  EXPECT_EQ(pool.Next(), 0);
  EXPECT_EQ(pool.Next(), 1);
  pool.Poison(2);
  EXPECT_EQ(pool.Next(), 3);
  EXPECT_EQ(pool.Next(), 0);
  EXPECT_EQ(pool.Next(), 1);
  EXPECT_EQ(pool.Next(), 3);
  EXPECT_EQ(pool.usable(), 3);
  pool.Poison(0);
  pool.Poison(1);
  pool.Poison(3);
  EXPECT_EQ(pool.usable(), 0);
  EXPECT_EQ(pool.Next(), -1);
}

TEST(ControllerTest, PrometheusTextNamesEveryMetric) {
  RuntimeMetrics m;
  m.cycles = 3;
  m.last_layer_balancedness_after = {0.5, 0.75};
  const std::string text = PrometheusText(m, 2);
  for (const char* name :
       {"eplb_balancedness", "eplb_expert_load_balance_ratio", "eplb_rebalance_cycles_total",
        "eplb_slots_changed_total", "eplb_bytes_moved_total", "eplb_inter_node_bytes_total",
        "eplb_algorithm_seconds", "eplb_transfer_seconds", "eplb_layers_rolled_back_total",
        "eplb_hook_seconds_total"}) {
    EXPECT_NE(text.find(std::string("# TYPE ") + name + " "), std::string::npos) << name;
    EXPECT_NE(text.find(std::string("# HELP ") + name + " "), std::string::npos) << name;
  }
  EXPECT_NE(text.find("eplb_rebalance_cycles_total{rank=\"2\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("eplb_layer_balancedness{rank=\"2\",layer=\"1\"} 0.75\n"), std::string::npos)
      << text;
}

}  // namespace
}  // namespace eplb
