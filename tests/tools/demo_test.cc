// eplb demo end to end: all three modes through several rebalances and a workload shift, outputs
// equal to the dense reference within 1e-5 at every step.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace {

nlohmann::json RunDemo(const std::string& mode, const std::string& report,
                       const std::string& more = "") {
  const std::string cmd = std::string(EPLB_CLI_PATH) +
                          " demo --ranks 4 --layers 3 --experts 16 --top-k 2 --hidden 32 --ffn 64 "
                          "--tokens 32 --steps 90 --shift-at 45 " +
                          more + " --eplb " + mode +
                          " --eplb-config '{\"expert_heat_collection_interval\": 10}' --report " +
                          report + " > /dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;
  std::ifstream f(report);
  return nlohmann::json::parse(f, nullptr, false);
}

TEST(DemoTest, EveryModeMatchesTheDenseReferenceThroughRebalances) {
  const std::string dir = ::testing::TempDir();
  for (const std::string mode : {"off", "sync", "async"}) {
    SCOPED_TRACE(mode);
    const std::string report = dir + "/eplb_demo_" + mode + ".json";
    const nlohmann::json r = RunDemo(mode, report);
    ASSERT_TRUE(r.is_object());
    for (const char* key : {"mode",
                            "comm",
                            "ranks",
                            "layers",
                            "experts",
                            "steps",
                            "rebalances",
                            "max_rel_diff_vs_reference",
                            "step_ms_p50",
                            "step_ms_p99",
                            "step_ms_max",
                            "step_ms_p99_rebalancing",
                            "step_ms_p99_quiet",
                            "balancedness_first_window",
                            "balancedness_last_window",
                            "critical_path_ms_first_window",
                            "critical_path_ms_last_window",
                            "slots_changed",
                            "bytes_moved",
                            "nodes",
                            "inter_node_bytes"}) {
      EXPECT_TRUE(r.contains(key)) << key;
    }
    EXPECT_LE(r["max_rel_diff_vs_reference"].get<double>(), 1e-5);
    if (mode == "off") {
      EXPECT_EQ(r["rebalances"], 0);
    } else {
      EXPECT_GE(r["rebalances"].get<int>(), 2);
      EXPECT_GT(r["slots_changed"].get<int>(), 0);
    }
    EXPECT_EQ(r["inter_node_bytes"], 0) << "one node";
    std::filesystem::remove(report);
  }
}

TEST(DemoTest, OnTwoNodesCountsTheBytesFromTheOtherNode) {
  const std::string report = ::testing::TempDir() + "/eplb_demo_nodes.json";
  const nlohmann::json r = RunDemo("async", report, "--nodes 2");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["nodes"], 2);
  EXPECT_LE(r["max_rel_diff_vs_reference"].get<double>(), 1e-5);
  EXPECT_GT(r["bytes_moved"].get<int64_t>(), 0);
  EXPECT_GE(r["inter_node_bytes"].get<int64_t>(), 0);
  EXPECT_LE(r["inter_node_bytes"].get<int64_t>(), r["bytes_moved"].get<int64_t>());
  std::filesystem::remove(report);
}

}  // namespace
