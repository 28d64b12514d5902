// End-to-end tests of the `eplb` binary: success paths, report keys, and every bad input giving
// exit status 1, a one-line message naming the file, and no output file (an existing one left
// untouched).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace {

namespace fs = std::filesystem;

struct Result {
  int status = -1;
  std::string out;  // stdout and stderr together
};

Result Eplb(const std::string& args) {
  const std::string cmd = std::string(EPLB_CLI_PATH) + " " + args + " 2>&1";
  Result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  const int raw = pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return r;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("eplb_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  std::string Write(const std::string& name, const std::string& text) const {
    std::ofstream(Path(name)) << text;
    return Path(name);
  }
  static std::string Read(const std::string& path) {
    std::ifstream f(path);
    return {std::istreambuf_iterator<char>(f), {}};
  }
  // A bad invocation: exit 1, one line that contains `needle`, `out` neither created nor changed.
  void ExpectError(const std::string& args, const std::string& needle, const std::string& out) {
    const bool existed = fs::exists(out);
    const std::string before = existed ? Read(out) : "";
    const Result r = Eplb(args);
    EXPECT_EQ(r.status, 1) << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_EQ(r.out.rfind("eplb", 0), 0u) << r.out;
    EXPECT_EQ(fs::exists(out), existed) << out;
    if (existed) {
      EXPECT_EQ(Read(out), before);
    }
    for (const auto& e : fs::directory_iterator(dir_)) {
      EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
    }
  }
  fs::path dir_;
};

// 3 MoE layers x 8 experts plus one dense row.
const char* kLoad =
    R"({"logical_count": [[0,0,0,0,0,0,0,0], [90,10,10,10,40,5,5,30], [10,10,60,10,10,10,10,80],
                          [5,5,5,5,5,5,5,5]]})";

TEST_F(CliTest, PlanWritesMapAndReportWithEveryKey) {
  const std::string load = Write("load.json", kLoad);
  const Result r = Eplb("plan --load " + load + " --ranks 4 --slots-per-rank 3 --out " +
                        Path("map.json") + " --report " + Path("report.json"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("dense rows left out: 0"), std::string::npos) << r.out;
  auto report = nlohmann::json::parse(Read(Path("report.json")));
  for (const char* key : {"algorithm", "layers", "ranks", "slots_per_rank", "balancedness_before",
                          "balancedness_after", "balancedness_upper_bound", "slots_changed",
                          "slots_total", "bytes_moved", "compute_ms", "dense_rows", "repairs",
                          "skipped_layers", "per_layer_balancedness_after", "options", "policy"}) {
    EXPECT_TRUE(report.contains(key)) << key;
  }
  EXPECT_EQ(report["policy"], "global");
  EXPECT_NE(r.out.find("algorithm    swift, global policy"), std::string::npos) << r.out;
  EXPECT_EQ(report["options"]["target_balancedness"], 0.97);
  EXPECT_EQ(report["options"]["inter_node_cost"], 2.0);
  EXPECT_EQ(report["options"]["max_changes_per_cycle"], -1);
  EXPECT_EQ(report["layers"], 3);
  EXPECT_EQ(report["slots_total"], 3 * 12);
  EXPECT_EQ(report["dense_rows"], nlohmann::json::array({0}));
  EXPECT_EQ(report["per_layer_balancedness_after"].size(), 3u);
  // No --current: every slot is placed fresh, one DeepSeek-V3 FP8 expert (3 x 7168 x 2048 bytes)
  // loaded per slot.
  EXPECT_EQ(report["baseline"], "id-order");
  EXPECT_EQ(report["slots_changed"], 3 * 12);
  EXPECT_EQ(report["bytes_moved"], int64_t{3} * 12 * 44040192);
  EXPECT_GE(report["balancedness_after"].get<double>(),
            report["balancedness_before"].get<double>());
  EXPECT_LE(report["balancedness_after"].get<double>(),
            report["balancedness_upper_bound"].get<double>() + 1e-9);
  // The map validates, converts, and serves as --current: re-planning the same load moves nothing.
  EXPECT_EQ(Eplb("validate " + Path("map.json")).status, 0);
  ASSERT_EQ(Eplb("convert " + Path("map.json") + " --to sglang --out " + Path("s.json")).status, 0);
  EXPECT_EQ(Eplb("validate " + Path("s.json") + " --ranks 4").status, 0);
  const Result again = Eplb("plan --load " + load + " --ranks 4 --slots-per-rank 3 --current " +
                            Path("s.json") + " --report " + Path("again.json"));
  ASSERT_EQ(again.status, 0) << again.out;
  const auto again_report = nlohmann::json::parse(Read(Path("again.json")));
  EXPECT_EQ(again_report["slots_changed"], 0);
  EXPECT_EQ(again_report["bytes_moved"], 0);
  EXPECT_EQ(again_report["baseline"], "current");
  EXPECT_DOUBLE_EQ(again_report["balancedness_before"].get<double>(),
                   report["balancedness_after"].get<double>());
  const Result stats =
      Eplb("stats --load " + load + " --map " + Path("map.json") + " --ranks 4 --slots-per-rank 3");
  ASSERT_EQ(stats.status, 0) << stats.out;
  EXPECT_NE(stats.out.find("mean balancedness"), std::string::npos);
}

TEST_F(CliTest, ValidatePrintsASummary) {
  const std::string map = Write(
      "map.json",
      R"({"physical_to_logical_map": [[0,1,2,3,4,5,6,7,0,1,2,4], [7,6,5,4,3,2,1,0,7,6,5,4]]})");
  const Result r = Eplb("validate " + map + " --ranks 4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("2 layers, 4 ranks x 3 slots, 8 logical experts, 1 to 2 replicas"),
            std::string::npos)
      << r.out;
}

TEST_F(CliTest, ConvertRoundTripsBetweenLayouts) {
  ASSERT_EQ(Eplb("plan --generate --layers 3 --experts 16 --ranks 4 --slots-per-rank 5 --out " +
                 Path("v.json") + " --format vllm-ascend")
                .status,
            0);
  ASSERT_EQ(Eplb("convert " + Path("v.json") + " --to sglang --out " + Path("s.json")).status, 0);
  ASSERT_EQ(
      Eplb("convert " + Path("s.json") + " --ranks 4 --to vllm-ascend --out " + Path("v2.json"))
          .status,
      0);
  EXPECT_EQ(Read(Path("v.json")), Read(Path("v2.json")));
  EXPECT_NE(Read(Path("s.json")).find("physical_to_logical_map"), std::string::npos);
}

TEST_F(CliTest, StatsPrintsOneRowPerMoeLayerAndTheMean) {
  const std::string load = Write("load.csv", "# three layers\n0,0,0,0\n4,1,1,2\n1,1,1,1\n");
  const Result r = Eplb("stats --load " + load + " --ranks 2 --slots-per-rank 2");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 4) << r.out;  // header, 2 rows, mean
  EXPECT_NE(r.out.find("dense rows left out: 0"), std::string::npos) << r.out;
  const Result gen = Eplb("stats --generate --layers 2 --ranks 64 --slots-per-rank 5");
  ASSERT_EQ(gen.status, 0) << gen.out;
  EXPECT_NE(gen.out.find("mean balancedness"), std::string::npos);
}

// --load given more than once plans for the sum of the files (a mix of workloads).
TEST_F(CliTest, SeveralLoadsAreSummed) {
  const std::string a = Write("a.csv", "0,0,0,0\n10,0,0,0\n");
  const std::string b = Write("b.json", R"({"logical_count": [[0,0,0,0], [0,0,0,10]]})");
  const std::string shape = " --ranks 2 --slots-per-rank 2 --report " + Path("r.json");
  // Id order: rank 0 holds experts 0 and 1, rank 1 holds 2 and 3.
  ASSERT_EQ(Eplb("plan --load " + a + shape).status, 0);
  EXPECT_EQ(nlohmann::json::parse(Read(Path("r.json")))["balancedness_before"], 0.5);
  const Result r = Eplb("plan --load " + a + " --load " + b + shape);
  ASSERT_EQ(r.status, 0) << r.out;
  const auto report = nlohmann::json::parse(Read(Path("r.json")));
  EXPECT_EQ(report["balancedness_before"], 1.0);
  EXPECT_EQ(report["load"], a + " + " + b);
  EXPECT_EQ(report["dense_rows"], nlohmann::json::array({0}));
  // Files of different shapes, and a bad file among good ones, are errors naming the file.
  const std::string c = Write("c.csv", "1,2,3\n");
  ExpectError("plan --load " + a + " --load " + c + shape, "c.csv: 1 rows x 3 experts", Path("r2"));
  ExpectError(
      "stats --load " + a + " --load " + Path("missing.csv") + " --ranks 2 --slots-per-rank 2",
      "missing.csv", Path("none"));
  const std::string huge = Write("huge.csv", "0,0,0,0\n1e308,0,0,0\n");  // fine alone
  ExpectError("plan --load " + huge + " --load " + huge + shape, "largest double", Path("r2"));
}

// The workflow of scripts/run-default.sh: a fresh placement, then a shifted workload re-planned
// from it moves a few experts and restores the balance.
TEST_F(CliTest, PlanAfterAShiftMovesFewSlots) {
  const std::string shape = " --ranks 64 --slots-per-rank 5";
  ASSERT_EQ(Eplb("plan --generate" + shape + " --out " + Path("p.json")).status, 0);
  const Result r = Eplb("plan --generate --shift 1" + shape + " --current " + Path("p.json") +
                        " --out " + Path("q.json") + " --format sglang --report " + Path("r.json"));
  ASSERT_EQ(r.status, 0) << r.out;
  const auto report = nlohmann::json::parse(Read(Path("r.json")));
  EXPECT_EQ(report["slots_total"], 58 * 320);
  EXPECT_GT(report["slots_changed"].get<int64_t>(), 0);
  EXPECT_LT(report["slots_changed"].get<int64_t>(), 58 * 320 / 4);
  EXPECT_EQ(report["bytes_moved"].get<int64_t>(),
            report["slots_changed"].get<int64_t>() * 44040192);
  EXPECT_LT(report["balancedness_before"].get<double>(), 0.8);
  EXPECT_GT(report["balancedness_after"].get<double>(), 0.95);
  EXPECT_EQ(Eplb("validate " + Path("q.json") + " --ranks 64").status, 0);
}

TEST_F(CliTest, CheckConfigPrintsTheResolvedConfiguration) {
  const Result r = Eplb(
      "check-config '{\"eplb_config\": {\"num_redundant_experts\": 4}}' --experts 8 --ranks 4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("\"algorithm\": \"swift\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 slots per rank"), std::string::npos) << r.out;
}

TEST_F(CliTest, PlanReportsTheHierarchicalPolicyWhenGroupsDivideOverNodes) {
  for (const char* algorithm : {"swift", "deepseek"}) {
    const Result r = Eplb(std::string("plan --generate --layers 2 --experts 32 --ranks 8 ") +
                          "--slots-per-rank 5 --nodes 2 --groups 4 --algorithm " + algorithm +
                          " --report " + Path("h.json"));
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(nlohmann::json::parse(Read(Path("h.json")))["policy"], "hierarchical") << algorithm;
    EXPECT_NE(r.out.find("hierarchical policy (4 groups packed onto 2 nodes)"), std::string::npos)
        << r.out;
  }
  // Three groups do not divide over two nodes: the global policy.
  const Result r = Eplb(
      "plan --generate --layers 2 --experts 33 --ranks 8 --slots-per-rank 5 --nodes 2 --groups 3 "
      "--report " +
      Path("g.json"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(Read(Path("g.json")))["policy"], "global");
}

TEST_F(CliTest, PlanOnTheGeneratorWithDeepSeekReportsRepairs) {
  const Result r = Eplb(
      "plan --generate --layers 4 --ranks 16 --slots-per-rank 20 --algorithm "
      "deepseek --report " +
      Path("r.json"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(nlohmann::json::parse(Read(Path("r.json"))).contains("repairs"));
}

TEST_F(CliTest, BadInputsFailCleanly) {
  const std::string load = Write("load.json", kLoad);
  const std::string out = Path("out.json");
  const std::string shape = " --ranks 4 --slots-per-rank 3 --out " + out;
  ExpectError("plan --load " + Path("missing.json") + shape, "missing.json: cannot open", out);
  ExpectError("plan --load " + Write("bad.json", "{not json") + shape, "bad.json: line 1", out);
  ExpectError("plan --load " + Write("ragged.json", R"({"logical_count": [[1,2],[3]]})") + shape,
              "ragged.json: logical_count[1]", out);
  ExpectError("plan --load " + Write("neg.json", R"({"logical_count": [[1,-2]]})") + shape,
              "neg.json: logical_count[0][1]", out);
  ExpectError("plan --load " + Write("neg.csv", "1,2\n3,nan\n") + shape, "neg.csv: line 2", out);
  ExpectError("plan --load " + load + " --algorithm magic" + shape, "unknown algorithm 'magic'",
              out);
  ExpectError("plan --load " + load + " --format yaml" + shape, "yaml", out);
  ExpectError("plan --load " + load + " --ranks 4 --slots-per-rank 1 --out " + out,
              "fewer than the 8 logical experts", out);
  // A map that names an expert the load does not have, and one of another shape.
  const std::string bad_ids =
      Write("ids.json", R"({"physical_to_logical_map": [[0,1,2,3,4,5,6,7,8,9,10,99]]})");
  ExpectError("plan --load " + load + " --current " + bad_ids + shape, "ids.json", out);
  ASSERT_EQ(Eplb("plan --generate --layers 2 --experts 8 --ranks 4 --slots-per-rank 3 --out " +
                 Path("two_layers.json"))
                .status,
            0);
  ExpectError("plan --load " + load + " --current " + Path("two_layers.json") + shape,
              "two_layers.json", out);
  // An existing output is left untouched by a failing run.
  Write("out.json", "keep me");
  ExpectError("plan --load " + Path("missing.json") + shape, "missing.json", out);
  ExpectError("validate " + bad_ids + " --experts 12", "ids.json", Path("none"));
  ExpectError("convert " + bad_ids + " --to sglang --out " + Path("c.json"), "ids.json",
              Path("c.json"));
  ExpectError("convert " + Path("two_layers.json") + " --to toml --out " + Path("c.json"), "toml",
              Path("c.json"));
  // SGLang -> vllm-ascend needs the rank count (an SGLang map lists slots only).
  const std::string sglang =
      Write("sglang.json", R"({"physical_to_logical_map": [[0,1,2,3,0,1]]})");
  ExpectError("convert " + sglang + " --to vllm-ascend --out " + Path("c.json"), "--ranks",
              Path("c.json"));
  ExpectError("stats --load " + Path("missing.json") + " --ranks 4 --slots-per-rank 3",
              "missing.json", Path("none"));
  ExpectError("plan --ranks 4", "--slots-per-rank", Path("none"));
  ExpectError("check-config '{\"dynamic_eplb\": 1}'", "eplb_config.dynamic_eplb", Path("none"));
  ExpectError("check-config " + Path("missing.json"), "missing.json", Path("none"));
  ExpectError(
      "check-config '{\"expert_map_path\": \"" + Path("nomap.json") + "\"}'",
      "eplb check-config: eplb_config.expert_map_path: " + Path("nomap.json") + ": cannot open",
      Path("none"));
  ExpectError("check-config '{\"num_redundant_experts\": 3}' --experts 8 --ranks 4",
              "num_redundant_experts", Path("none"));
  ExpectError("frobnicate", "frobnicate", Path("none"));
}

TEST_F(CliTest, VersionIsOneLine) {
  const Result r = Eplb("--version");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out.rfind("eplb (SwiftBalancer) ", 0), 0u) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

TEST_F(CliTest, UsageErrorsAreOneLineNamingTheCommand) {
  const std::string out = Path("out.json");
  const std::string shape = " --ranks 4 --slots-per-rank 3 --out " + out;
  const std::string load = Write("load.json", kLoad);
  ExpectError("plan --load " + load + " --seed 3" + shape, "eplb plan: --load excludes --seed",
              out);
  ExpectError("plan --load " + load + " --generate" + shape, "--generate", out);
  ExpectError("plan" + shape, "eplb plan: give exactly one of --load FILE or --generate", out);
  ExpectError("plan --generate --experts 8 --bogus" + shape, "eplb plan: ", out);
  // Generator values that CLI11's own checks let through: a seed past the uint64 range (CLI11
  // would read it as 2^64 - 1), a negative seed, top-k above the experts, a NaN skew.
  for (const char* seed : {"18446744073709551616", "-1", "+5"}) {
    ExpectError(std::string("plan --generate --experts 8 --seed ") + seed + shape,
                std::string("eplb plan: --seed: expected an integer in [0, 2^64 - 1], got ") + seed,
                out);
  }
  ExpectError("plan --generate --experts 8 --top-k 9" + shape,
              "eplb plan: generator options: top_k: expected an integer in [1, experts = 8], got 9",
              out);
  ExpectError("stats --generate --experts 8 --skew nan --ranks 4 --slots-per-rank 3",
              "eplb stats: generator options: skew: expected a number in [0, 4], got nan", out);
  ExpectError("demo --seed -3 --steps 2", "eplb demo: --seed: expected an integer", out);
  ExpectError("demo --shift-at -1 --steps 2", "eplb demo: --shift-at: Value -1 not in range", out);
  ExpectError("demo --nodes 3 --steps 2",
              "eplb demo: rank 0: model: nodes must be > 0 and divide the 4 ranks, got 3", out);
  ExpectError("demo --nodes 2 --eplb off --steps 2",
              "eplb demo: --nodes applies to --eplb sync or async only", out);
  // Before: accepted, and the demo reported "async" while nothing was balanced.
  ExpectError("demo --steps 2 --eplb async --eplb-config '{\"dynamic_eplb\": false}'",
              "eplb demo: --eplb-config: dynamic_eplb false contradicts --eplb async", out);
  ExpectError("demo --steps 2 --eplb off --eplb-config '{\"dynamic_eplb\": true}'",
              "eplb demo: --eplb-config: dynamic_eplb true contradicts --eplb off", out);
  // Found in review: ignored in off mode; the run's own configuration overwritten by its report.
  ExpectError("demo --steps 2 --eplb off --eplb-config '{\"expert_map_record_path\": \"" +
                  Path("rec.json") + "\"}'",
              "eplb demo: --eplb-config: expert_map_record_path applies with --eplb sync or async",
              out);
  const std::string cfg = Write("cfg.json", R"({"expert_heat_collection_interval": 5})");
  ExpectError("demo --steps 2 --eplb-config " + cfg + " --report " + cfg,
              cfg + ": an output that is also an input (a file of the run: " + cfg + ")", cfg);
  // 12 MiB x 2^20 per expert: more than any machine has, refused before anything is allocated.
  ExpectError(
      "demo --hidden 1048576 --ffn 1048576 --steps 2",
      "eplb demo: the experts' weights would take 3342336.0 GiB in this process (4 layers x "
      "68 experts of 12582912.00 MiB: every rank's slots and the dense reference), more "
      "than half of this machine's",
      out);
  // Found in review: the activations were not counted (std::bad_alloc, abort).
  ExpectError(
      "demo --tokens 1048576 --experts 1048576 --top-k 1 --hidden 1 --ffn 1 --layers 1 "
      "--ranks 1 --steps 1 --no-verify",
      "eplb demo: a step's activations would take", out);
  ExpectError("plan --generate --experts 8 --ranks 4 --slots-per-rank 3 --format sglang",
              "--format requires --out", out);
  ExpectError("plan --generate --experts 8 --algorithm deepseek --max-changes-per-layer 2" + shape,
              "--max-changes-per-layer applies to --algorithm swift only", out);
  ExpectError("plan --generate --experts 8 --nodes 3" + shape, "divide the 4 ranks", out);
  ExpectError("plan --generate --experts 8 --target-balancedness 0" + shape,
              "eplb plan: swift: target_balancedness must be in (0, 1], got 0", out);
  ExpectError("plan --generate --experts 8 --inter-node-cost 0.5" + shape,
              "eplb plan: swift: inter_node_cost must be a finite number >= 1, got 0.5", out);
  ExpectError(
      "plan --generate --experts 8 --ranks 4 --slots-per-rank 3 --out " + out + " --report " + out,
      "named for two outputs", out);
  // The same new file under another spelling (before: both written, the report over the map).
  const std::string same = (fs::path(out).parent_path() / "." / fs::path(out).filename()).string();
  ExpectError(
      "plan --generate --experts 8 --ranks 4 --slots-per-rank 3 --out " + same + " --report " + out,
      out + ": named for two outputs (also as " + same + ")", out);
  // One rank works: the demo's default of one redundant slot per rank gives way (before: "32
  // experts + 1 redundant over 1 ranks give 33 slots per rank").
  const Result one = Eplb("demo --ranks 1 --steps 3");
  EXPECT_EQ(one.status, 0) << one.out;
  // The demo checks before it runs (before: the CSV replaced the report after the whole run).
  ExpectError("demo --steps 2 --report " + out + " --csv " + same,
              "eplb demo: " + same + ": named for two outputs (also as " + out + ")", out);
  ExpectError("check-config {} --experts 8", "eplb check-config: --experts requires --ranks",
              Path("none"));
  ExpectError("", "eplb: ", Path("none"));
}

// Found in review on 2026-11-30: values that were read wrongly or silently ignored.
TEST_F(CliTest, ValuesAreReadAsWritten) {
  const std::string out = Path("out.json");
  const std::string gen = "plan --generate --experts 8 --layers 2 ";
  // Integers are decimal: CLI11 read 064 as octal 52 and 0x40 as 64.
  const Result octal = Eplb(gen + "--ranks 064 --slots-per-rank 3 --report " + out);
  ASSERT_EQ(octal.status, 0) << octal.out;
  EXPECT_EQ(nlohmann::json::parse(Read(out))["ranks"], 64);
  fs::remove(out);
  ExpectError(gen + "--ranks 0x40 --slots-per-rank 3 --out " + out,
              "eplb plan: --ranks: expected a decimal integer, got 0x40", out);
  ExpectError(gen + "--ranks 4.0 --slots-per-rank 3 --out " + out,
              "eplb plan: --ranks: expected a decimal integer, got 4.0", out);
  // An empty path was taken as "not given": nothing written, nothing said.
  ExpectError(gen + "--ranks 4 --slots-per-rank 3 --out ''",
              "eplb plan: --out: expected a value, got an empty string", out);
  ExpectError(gen + "--ranks 4 --slots-per-rank 3 --current '' --out " + out,
              "eplb plan: --current: expected a value, got an empty string", out);
  // An unknown option is named (before: "--ranks is required"), also as --name=value.
  ExpectError("plan --bogus", "eplb plan: unknown option --bogus (see eplb plan --help)", out);
  ExpectError("--bogus", "eplb: unknown option --bogus; a command comes first: plan, validate",
              out);
  ExpectError(gen + "--ranks 4 --slots-per-rank 3 --bogus=3 --out " + out,
              "eplb plan: unknown option --bogus", out);
  // An output that cannot be written is refused before the work (the demo ran to the end first).
  ExpectError("demo --steps 2 --report " + Path("no/such/dir/r.json"),
              "eplb demo: " + Path("no/such/dir/r.json") +
                  ": cannot write: " + Path("no/such/dir") + ": No such file or directory",
              out);
  // Options that would be ignored are errors.
  ExpectError(gen + "--ranks 4 --slots-per-rank 3 --max-changes-per-cycle 0 --out " + out,
              "eplb plan: --max-changes-per-cycle caps a re-plan from --current", out);
  EXPECT_EQ(Eplb(gen + "--ranks 4 --slots-per-rank 3 --max-changes-per-layer -1").status, 0);
  ExpectError(gen + "--ranks 4 --slots-per-rank 3 --inter-node-cost 3 --out " + out,
              "eplb plan: --inter-node-cost applies with --nodes > 1 only", out);
  // Byte totals past the int64 range (before: negative totals in the report).
  ExpectError(
      "plan --generate --layers 1024 --experts 8192 --ranks 4096 --slots-per-rank 2 "
      "--algorithm deepseek --expert-bytes 1099511627776 --out " +
          out,
      "eplb plan: --expert-bytes 1099511627776: x 8388608 slots (1024 layers x 8192) "
      "exceeds the int64 range of the byte totals",
      out);
}

// Outputs that would destroy something are refused before anything is written.
TEST_F(CliTest, OutputsNeverReplaceTheLoadOrANonRegularFile) {
  const std::string load = Write("load.json", kLoad);
  const std::string shape = " --ranks 4 --slots-per-rank 3";
  const std::string same = (fs::path(load).parent_path() / "." / "load.json").string();
  ExpectError("plan --load " + load + shape + " --out " + same,
              same + ": an output that is also an input (--load " + load + ")", load);
  ExpectError("plan --load " + load + shape + " --report " + load,
              load + ": an output that is also an input (--load " + load + ")", load);
  // A pipe (as a device would be: renaming over /dev/null replaced it) is refused, not read as
  // a backup (a pipe would block) nor replaced.
  const std::string fifo = Path("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const Result r = Eplb("plan --load " + load + shape + " --out " + fifo);
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find(fifo + ": not a regular file"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::is_fifo(fifo));
  // Through a symlink the file it names is written and the link stays.
  Write("real.json", "old");
  fs::create_symlink(Path("real.json"), Path("link.json"));
  ASSERT_EQ(Eplb("plan --load " + load + shape + " --out " + Path("link.json")).status, 0);
  EXPECT_TRUE(fs::is_symlink(Path("link.json")));
  EXPECT_EQ(Eplb("validate " + Path("real.json")).status, 0);
}

TEST_F(CliTest, ShapeDisagreementsNameTheMap) {
  const std::string load = Write("load.json", kLoad);
  const std::string out = Path("out.json");
  // A vllm-ascend map for 4 ranks given with --ranks 2 (and 6 slots per rank).
  ASSERT_EQ(
      Eplb("plan --load " + load + " --ranks 4 --slots-per-rank 3 --out " + Path("m4.json")).status,
      0);
  ExpectError("plan --load " + load + " --ranks 2 --slots-per-rank 6 --current " + Path("m4.json") +
                  " --out " + out,
              "m4.json", out);
  ExpectError("stats --load " + load + " --ranks 2 --slots-per-rank 6 --map " + Path("m4.json"),
              "m4.json", Path("none"));
  // A map of 16 experts for a load of 8.
  ASSERT_EQ(Eplb("plan --generate --layers 3 --experts 16 --ranks 4 --slots-per-rank 4 --out " +
                 Path("e16.json"))
                .status,
            0);
  ExpectError("plan --load " + load + " --ranks 4 --slots-per-rank 4 --current " +
                  Path("e16.json") + " --out " + out,
              "e16.json", out);
}

TEST_F(CliTest, AFailedSecondWriteLeavesNoOutput) {
  const std::string out = Path("out.json");
  const std::string args =
      "plan --generate --experts 8 --layers 2 --ranks 4 --slots-per-rank 3 "
      "--out " +
      out + " --report " + Path("no/such/dir/report.json");
  ExpectError(args, "report.json", out);  // the map is not left behind
  Write("out.json", "keep me");
  ExpectError(args, "report.json", out);  // nor overwritten
}

}  // namespace
