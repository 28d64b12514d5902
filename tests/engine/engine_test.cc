// The expert-parallel engine against the dense reference, with ranks as threads of the in-process
// backend: equal outputs at every step, with a static placement and through the controller's
// rebalances (the placement changes, the math must not); load accounting; skewed, shiftable
// traffic; bad input.
#include "eplb/engine.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <thread>

#include "eplb/runtime.h"
#include "testing/engine_setup.h"
#include "testing/random_cases.h"

namespace eplb {
namespace {

constexpr double kTolerance = 1e-5;

EngineOptions SmallOptions() { return testing::SmallEngineOptions(7, 15000); }

RuntimeConfig DynamicConfig(const std::string& algorithm = "swift") {
  return testing::SmallDynamicConfig(15000, algorithm);
}

// What one rank saw over a run.
struct RankLog {
  std::string error;  // first problem, or ""
  double max_difference = 0;
  int64_t steps = 0;
  int64_t steps_after_a_commit = 0;  // steps that used a routing epoch > 0 on some layer
  int64_t rows_sent = 0;
  std::vector<std::vector<int64_t>> rows_per_step_layer;  // [step][layer]: rows computed here
  std::vector<Controller::Commit> commits;
  RuntimeMetrics metrics;
};

// Checks one step's result against the reference; returns the first problem or "".
std::string CheckStep(const EngineOptions& o, const DenseReference& ref, int rank, int64_t step,
                      int shift, const StepResult& res, RankLog& log) {
  const std::vector<float> expected = ref.Forward(step, shift, rank);
  const double d = MaxRelativeDifference(res.outputs, expected);
  log.max_difference = std::max(log.max_difference, d);
  if (!(d <= kTolerance)) {
    return "rank " + std::to_string(rank) + " step " + std::to_string(step) +
           ": outputs differ from the dense reference by " + std::to_string(d);
  }
  if (!res.controller_status.ok()) return "controller: " + res.controller_status.ToString();
  if (static_cast<int>(res.expert_cpu_ms.size()) != o.layers) return "expert_cpu_ms size";
  for (double ms : res.expert_cpu_ms) {
    if (!(ms >= 0 && std::isfinite(ms))) return "bad expert_cpu_ms";
  }
  if (static_cast<int>(res.rank_expert_cpu_ms.size()) < 1 ||
      !(res.critical_path_ms + 1e-9 >= res.mean_path_ms)) {
    return "gathered timings missing or critical path below the mean";
  }
  std::vector<int64_t> rows;
  for (const auto& slots : res.tokens_per_slot) {
    rows.push_back(std::accumulate(slots.begin(), slots.end(), int64_t{0}));
  }
  log.rows_per_step_layer.push_back(std::move(rows));
  log.rows_sent += res.rows_sent;
  ++log.steps;
  for (uint64_t e : res.epochs) {
    if (e > 0) {
      ++log.steps_after_a_commit;
      break;
    }
  }
  return "";
}

// Every layer of every step: the rows computed over all ranks are all tokens' top-k choices.
void ExpectRowsAddUp(const EngineOptions& o, const std::vector<RankLog>& logs) {
  const int ranks = static_cast<int>(logs.size());
  for (size_t s = 0; s < logs[0].rows_per_step_layer.size(); ++s) {
    for (int l = 0; l < o.layers; ++l) {
      int64_t sum = 0;
      for (const RankLog& log : logs) sum += log.rows_per_step_layer.at(s).at(l);
      ASSERT_EQ(sum, int64_t{ranks} * o.tokens * o.top_k) << "step " << s << " layer " << l;
    }
  }
}

class EngineDynamicTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineDynamicTest, MatchesTheDenseReferenceThroughRebalances) {
  // spdlog creates its registry on first use; the controllers' workers would otherwise race to
  // do it, behind a guard that ThreadSanitizer cannot see inside the uninstrumented library.
  spdlog::default_logger();
  const EngineOptions o = SmallOptions();
  const int ranks = 4;
  auto ref = DenseReference::Create(o);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  auto control_world = MakeInProcessWorld(ranks);
  auto engine_world = MakeInProcessWorld(ranks);
  std::vector<RankLog> logs(ranks);
  std::vector<int64_t> shift_step(ranks, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      RankLog& log = logs[r];
      auto ctl =
          Controller::Create(DynamicConfig(GetParam()), {.layers = o.layers, .experts = o.experts},
                             control_world[r].get());
      if (!ctl.ok()) {
        log.error = ctl.status().ToString();
        return;
      }
      auto engine = MoeEngine::Create(o, engine_world[r].get(), std::move(*ctl));
      if (!engine.ok()) {
        log.error = engine.status().ToString();
        return;
      }
      Controller* c = (*engine)->controller();
      // Shift 0 until a rebalance has committed and its cycle is over, then shift 1 (other hot
      // experts) until another has. Every condition below changes at the same step on every rank
      // (the controller is step-deterministic), so all ranks run the same steps.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      int shift = 0;
      size_t commits_at_shift = 0;
      for (int64_t step = 0;; ++step) {
        const size_t commits = c->CommitLog().size();
        const bool idle = !c->CycleInProgress();
        if (shift == 0 && step >= 24 && commits > 0 && idle) {
          shift = 1;
          shift_step[r] = step;
          commits_at_shift = commits;
        } else if (shift == 1 && step >= shift_step[r] + 24 && commits > commits_at_shift && idle) {
          break;
        }
        if (std::chrono::steady_clock::now() > deadline) {
          log.error = "no two rebalances within 60 s";
          break;
        }
        auto res = (*engine)->Forward(step, shift);
        if (!res.ok()) {
          log.error = res.status().ToString();
          break;
        }
        log.error = CheckStep(o, *ref, r, step, shift, *res, log);
        if (!log.error.empty()) {
          engine_world[r]->Abort("rank " + std::to_string(r) + " failed its check");  // fail fast
          break;
        }
      }
      log.commits = c->CommitLog();
      log.metrics = c->Metrics();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < ranks; ++r) ASSERT_EQ(logs[r].error, "") << "rank " << r;
  for (int r = 1; r < ranks; ++r) {
    EXPECT_EQ(logs[r].commits, logs[0].commits) << "rank " << r;
    EXPECT_EQ(logs[r].steps, logs[0].steps) << "rank " << r;
    EXPECT_EQ(shift_step[r], shift_step[0]) << "rank " << r;
  }
  const RankLog& log = logs[0];
  EXPECT_GE(log.commits.size(), 2u);
  bool after_shift = false;
  for (const auto& commit : log.commits) after_shift |= commit.step > shift_step[0];
  EXPECT_TRUE(after_shift) << "no commit after the shift";
  EXPECT_GT(log.steps_after_a_commit, 0);
  EXPECT_EQ(log.metrics.layers_rolled_back, 0);
  EXPECT_GT(log.metrics.slots_changed_total, 0);
  EXPECT_GE(log.metrics.last_balancedness_after, log.metrics.last_balancedness_before);
  ExpectRowsAddUp(o, logs);
  std::printf("engine (%s): %lld steps, shift at %lld, %zu commits, max relative difference %.3g\n",
              GetParam().c_str(), static_cast<long long>(log.steps),
              static_cast<long long>(shift_step[0]), log.commits.size(), log.max_difference);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, EngineDynamicTest, ::testing::Values("swift", "deepseek"),
                         [](const auto& info) { return info.param; });

// Runs `steps` steps of a static placement on `ranks` threads; shift changes halfway.
std::vector<RankLog> RunStatic(const EngineOptions& o, const Placement& p, int steps) {
  const int ranks = p.ranks();
  auto ref = DenseReference::Create(o);
  std::vector<RankLog> logs(ranks);
  if (!ref.ok()) {
    logs[0].error = ref.status().ToString();
    return logs;
  }
  auto world = MakeInProcessWorld(ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      auto engine = MoeEngine::Create(o, world[r].get(), p);
      if (!engine.ok()) {
        logs[r].error = engine.status().ToString();
        world[r]->Abort("create failed");
        return;
      }
      for (int step = 0; step < steps && logs[r].error.empty(); ++step) {
        const int shift = step < steps / 2 ? 0 : 3;
        auto res = (*engine)->Forward(step, shift);
        if (!res.ok()) {
          logs[r].error = res.status().ToString();
          break;
        }
        for (uint64_t e : res->epochs) {
          if (e != 0) logs[r].error = "a static placement changed epoch";
        }
        if (logs[r].error.empty())
          logs[r].error = CheckStep(o, *ref, r, step, shift, *res, logs[r]);
        if (!logs[r].error.empty())
          world[r]->Abort("rank " + std::to_string(r) + " failed its check");
      }
    });
  }
  for (auto& t : threads) t.join();
  return logs;
}

TEST(EngineTest, StaticRandomPlacementsMatchTheDenseReference) {
  const EngineOptions o = SmallOptions();
  for (uint64_t seed : {1, 2, 3}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape{
        .layers = o.layers, .experts = o.experts, .ranks = 4, .slots_per_rank = seed == 1 ? 4 : 6};
    const Placement p = testing::RandomPlacement(rng, shape);
    const std::vector<RankLog> logs = RunStatic(o, p, 6);
    for (size_t r = 0; r < logs.size(); ++r) ASSERT_EQ(logs[r].error, "") << "rank " << r;
    ExpectRowsAddUp(o, logs);
    EXPECT_GT(logs[0].rows_sent, 0);
  }
}

TEST(EngineTest, EveryExpertOnEveryRankKeepsAllTokensLocal) {
  EngineOptions o = SmallOptions();
  o.experts = 8;
  const Shape shape{.layers = o.layers, .experts = 8, .ranks = 3, .slots_per_rank = 8};
  std::vector<int> phy2log;
  for (int l = 0; l < o.layers; ++l) {
    for (int r = 0; r < 3; ++r) {
      for (int s = 0; s < 8; ++s) phy2log.push_back((s + r) % 8);
    }
  }
  const Placement p(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts, phy2log);
  const std::vector<RankLog> logs = RunStatic(o, p, 4);
  for (size_t r = 0; r < logs.size(); ++r) {
    ASSERT_EQ(logs[r].error, "") << "rank " << r;
    EXPECT_EQ(logs[r].rows_sent, 0) << "rank " << r << ": a local replica always comes first";
    for (const auto& rows : logs[r].rows_per_step_layer) {
      for (int64_t n : rows) EXPECT_EQ(n, o.tokens * o.top_k);
    }
  }
}

TEST(EngineTest, TrafficIsSkewedAndShiftMovesTheHotExperts) {
  EngineOptions o = SmallOptions();
  o.tokens = 256;
  auto world = MakeInProcessWorld(1);
  const Placement p = Placement::IdOrder(
      {.layers = o.layers, .experts = o.experts, .ranks = 1, .slots_per_rank = o.experts});
  auto engine = MoeEngine::Create(o, world[0].get(), p);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  std::vector<int> hottest;
  for (int shift : {0, 1}) {
    std::vector<int64_t> load(o.experts, 0);  // layer 0; slot i holds expert i
    for (int step = 0; step < 4; ++step) {
      auto res = (*engine)->Forward(step, shift);
      ASSERT_TRUE(res.ok()) << res.status().ToString();
      for (int e = 0; e < o.experts; ++e) load[e] += res->tokens_per_slot[0][e];
    }
    const double mean = std::accumulate(load.begin(), load.end(), 0.0) / o.experts;
    const auto top = std::max_element(load.begin(), load.end());
    EXPECT_GE(*top, 3 * mean) << "shift " << shift << ": hottest expert over the mean";
    hottest.push_back(static_cast<int>(top - load.begin()));
  }
  EXPECT_NE(hottest[0], hottest[1]);
  // No skew: no expert is far above the mean.
  o.skew = 0;
  auto flat = MoeEngine::Create(o, world[0].get(), p);
  ASSERT_TRUE(flat.ok());
  auto res = (*flat)->Forward(0, 0);
  ASSERT_TRUE(res.ok());
  const auto& rows = res->tokens_per_slot[0];
  EXPECT_LT(*std::max_element(rows.begin(), rows.end()), 3.0 * o.tokens * o.top_k / o.experts);
}

TEST(EngineTest, WeightsAndInputsAreDeterministicAndBounded) {
  const EngineOptions o = SmallOptions();
  const ExpertWeights a = MakeExpertWeights(o, 1, 5);
  const ExpertWeights b = MakeExpertWeights(o, 1, 5);
  EXPECT_EQ(a.gate, b.gate);
  EXPECT_EQ(a.up, b.up);
  EXPECT_EQ(a.down, b.down);
  ASSERT_EQ(a.gate.size(), static_cast<size_t>(o.ffn * o.hidden));
  EXPECT_NE(a.gate, MakeExpertWeights(o, 1, 6).gate);
  EXPECT_NE(a.gate, MakeExpertWeights(o, 2, 5).gate);
  EXPECT_NE(a.gate, a.up);
  const float bound = std::sqrt(3.0f / static_cast<float>(o.hidden));
  for (float w : a.gate) EXPECT_LE(std::abs(w), bound);
  EXPECT_EQ(MakeEngineInputs(o, 3, 1), MakeEngineInputs(o, 3, 1));
  EXPECT_NE(MakeEngineInputs(o, 3, 1), MakeEngineInputs(o, 3, 2));
  EXPECT_NE(MakeEngineInputs(o, 3, 1), MakeEngineInputs(o, 4, 1));
  auto ref = DenseReference::Create(o);
  ASSERT_TRUE(ref.ok());
  const std::vector<float> out = ref->Forward(2, 0, 1);
  EXPECT_EQ(out, ref->Forward(2, 0, 1));
  // The experts change the hidden state visibly (a wrong expert could not hide in the residual).
  EXPECT_GT(MaxRelativeDifference(out, MakeEngineInputs(o, 2, 1)), 0.05);
}

TEST(EngineTest, MaxRelativeDifference) {
  const std::vector<float> ref = {1, -4, 2};
  EXPECT_EQ(MaxRelativeDifference(ref, ref), 0);
  EXPECT_DOUBLE_EQ(MaxRelativeDifference(std::vector<float>{1, -4, 3}, ref), 0.25);
  EXPECT_TRUE(std::isinf(MaxRelativeDifference(std::vector<float>{1, -4}, ref)));
  EXPECT_TRUE(std::isinf(MaxRelativeDifference(std::vector<float>{1, NAN, 2}, ref)));
}

TEST(EngineTest, BadOptionsAndPlacementsAreRejected) {
  auto world = MakeInProcessWorld(2);
  const EngineOptions good = SmallOptions();
  const Placement p = Placement::IdOrder(
      {.layers = good.layers, .experts = good.experts, .ranks = 2, .slots_per_rank = 8});
  struct Case {
    std::function<void(EngineOptions&)> change;
    const char* key;
  };
  const std::vector<Case> cases = {
      {[](EngineOptions& o) { o.layers = 0; }, "layers"},
      {[](EngineOptions& o) { o.layers = 20000; }, "layers"},
      {[](EngineOptions& o) { o.experts = 0; }, "experts"},
      {[](EngineOptions& o) { o.top_k = 17; }, "top_k"},
      {[](EngineOptions& o) { o.top_k = 0; }, "top_k"},
      {[](EngineOptions& o) { o.hidden = -1; }, "hidden"},
      {[](EngineOptions& o) { o.ffn = 0; }, "ffn"},
      {[](EngineOptions& o) { o.tokens = 0; }, "tokens"},
      {[](EngineOptions& o) { o.timeout_ms = 0; }, "timeout_ms"},
      {[](EngineOptions& o) { o.skew = -1; }, "skew"},
      {[](EngineOptions& o) { o.skew = NAN; }, "skew"},
  };
  for (const Case& c : cases) {
    EngineOptions o = good;
    c.change(o);
    auto engine = MoeEngine::Create(o, world[0].get(), p);
    ASSERT_FALSE(engine.ok()) << c.key;
    EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(engine.status().message().find(c.key), std::string::npos)
        << engine.status().message();
    EXPECT_FALSE(DenseReference::Create(o).ok()) << c.key;
  }
  EXPECT_FALSE(MoeEngine::Create(good, nullptr, p).ok());
  // A placement for another number of ranks, layers or experts.
  const Placement four_ranks = Placement::IdOrder(
      {.layers = good.layers, .experts = good.experts, .ranks = 4, .slots_per_rank = 4});
  auto wrong = MoeEngine::Create(good, world[0].get(), four_ranks);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("4 ranks"), std::string::npos);
  EngineOptions more_layers = good;
  more_layers.layers = 4;
  EXPECT_FALSE(MoeEngine::Create(more_layers, world[0].get(), p).ok());
  // An invalid placement: expert 0 twice on rank 0, expert 1 nowhere.
  Placement dup = p;
  dup.at(0, 0, 1) = 0;
  auto invalid = MoeEngine::Create(good, world[0].get(), dup);
  ASSERT_FALSE(invalid.ok());
  EXPECT_NE(invalid.status().message().find("layer 0"), std::string::npos)
      << invalid.status().message();
  // Controllers: none, another model, already started.
  auto control = MakeInProcessWorld(2);
  EXPECT_FALSE(MoeEngine::Create(good, world[0].get(), std::unique_ptr<Controller>()).ok());
  auto other = Controller::Create(DynamicConfig(), {.layers = 2, .experts = 16}, control[0].get());
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  auto mismatch = MoeEngine::Create(good, world[0].get(), std::move(*other));
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("initial placement"), std::string::npos);
  // A controller on the engine's own communicator.
  auto shared = Controller::Create(
      DynamicConfig(), {.layers = good.layers, .experts = good.experts}, world[0].get());
  ASSERT_TRUE(shared.ok()) << shared.status().ToString();
  auto same_comm = MoeEngine::Create(good, world[0].get(), std::move(*shared));
  ASSERT_FALSE(same_comm.ok());
  EXPECT_EQ(same_comm.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(same_comm.status().message().find("separate communicators"), std::string::npos)
      << same_comm.status().message();
}

TEST(EngineTest, AFailedExchangeFailsEveryRankAndStaysFailed) {
  const EngineOptions o = SmallOptions();
  const Placement p = Placement::IdOrder(
      {.layers = o.layers, .experts = o.experts, .ranks = 2, .slots_per_rank = 8});
  auto world = MakeInProcessWorld(2);
  std::vector<std::string> first(2), second(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto engine = MoeEngine::Create(o, world[r].get(), p);
      if (!engine.ok()) return;
      if (r == 1) world[1]->Abort("rank 1 gives up");
      auto a = (*engine)->Forward(0, 0);
      first[r] = a.ok() ? "" : a.status().ToString();
      auto b = (*engine)->Forward(1, 0);
      second[r] = b.ok() ? "" : b.status().ToString();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(first[r].find("rank 1 gives up"), std::string::npos) << first[r];
    EXPECT_EQ(second[r], first[r]) << "rank " << r;
  }
}

}  // namespace
}  // namespace eplb
