// End-to-end tests of the `eplb` binary: success paths, report keys, and every bad input giving
// exit status 1, a one-line message naming the file, and no output file (an existing one left
// untouched).
#include <gtest/gtest.h>
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
    EXPECT_EQ(fs::exists(out), existed) << out;
    if (existed) EXPECT_EQ(Read(out), before);
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
                          "slots_total", "bytes_moved", "compute_ms", "dense_rows", "repairs"}) {
    EXPECT_TRUE(report.contains(key)) << key;
  }
  EXPECT_EQ(report["layers"], 3);
  EXPECT_EQ(report["slots_total"], 3 * 12);
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
  EXPECT_EQ(nlohmann::json::parse(Read(Path("again.json")))["slots_changed"], 0);
  const Result stats =
      Eplb("stats --load " + load + " --map " + Path("map.json") + " --ranks 4 --slots-per-rank 3");
  ASSERT_EQ(stats.status, 0) << stats.out;
  EXPECT_NE(stats.out.find("mean balancedness"), std::string::npos);
}

TEST_F(CliTest, CheckConfigPrintsTheResolvedConfiguration) {
  const Result r = Eplb(
      "check-config '{\"eplb_config\": {\"num_redundant_experts\": 4}}' --experts 8 --ranks 4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("\"algorithm\": \"swift\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 slots per rank"), std::string::npos) << r.out;
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
  ExpectError("stats --load " + Path("missing.json") + " --ranks 4 --slots-per-rank 3",
              "missing.json", Path("none"));
  ExpectError("plan --ranks 4", "--slots-per-rank", Path("none"));
  ExpectError("check-config '{\"dynamic_eplb\": 1}'", "eplb_config.dynamic_eplb", Path("none"));
  ExpectError("check-config " + Path("missing.json"), "missing.json", Path("none"));
  ExpectError("check-config '{\"num_redundant_experts\": 3}' --experts 8 --ranks 4",
              "num_redundant_experts", Path("none"));
  ExpectError("frobnicate", "frobnicate", Path("none"));
}

}  // namespace
