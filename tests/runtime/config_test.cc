#include "eplb/config.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "eplb/formats.h"

namespace eplb {
namespace {

std::string ErrorOf(const std::string& text) {
  auto c = ParseRuntimeConfig(text, "cfg.json");
  EXPECT_FALSE(c.ok()) << text;
  return c.ok() ? "" : c.status().message();
}

TEST(ConfigTest, DefaultsAndEveryKey) {
  auto d = ParseRuntimeConfig("{}", "inline");
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->dynamic_eplb);
  EXPECT_EQ(d->algorithm, "swift");
  auto c = ParseRuntimeConfig(R"({"eplb_config": {"dynamic_eplb": true,
      "expert_heat_collection_interval": 10, "algorithm_execution_interval": 3,
      "num_redundant_experts": 64, "expert_map_path": "a.json", "expert_map_record_path": "b.json",
      "algorithm": "deepseek", "max_layers_in_flight": 2, "imbalance_threshold": 0.95,
      "transfer_timeout_ms": 500}})",
                              "inline");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->dynamic_eplb);
  EXPECT_EQ(c->expert_heat_collection_interval, 10);
  EXPECT_EQ(c->algorithm_execution_interval, 3);
  EXPECT_EQ(c->num_redundant_experts, 64);
  EXPECT_EQ(c->expert_map_path, "a.json");
  EXPECT_EQ(c->expert_map_record_path, "b.json");
  EXPECT_EQ(c->algorithm, "deepseek");
  EXPECT_EQ(c->max_layers_in_flight, 2);
  EXPECT_DOUBLE_EQ(c->imbalance_threshold, 0.95);
  EXPECT_DOUBLE_EQ(c->algorithm_options.skip_balancedness, 0.95);
  EXPECT_EQ(c->transfer_timeout_ms, 500);
  // Round trip through the resolved form.
  auto again = ParseRuntimeConfig(RuntimeConfigToJson(*c), "again");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(RuntimeConfigToJson(*again), RuntimeConfigToJson(*c));
}

TEST(ConfigTest, ErrorsNameKeyExpectationAndValue) {
  EXPECT_EQ(ErrorOf(R"({"dynamic_eplb": "yes"})"),
            "cfg.json: eplb_config.dynamic_eplb: expected true or false, got \"yes\"");
  EXPECT_EQ(
      ErrorOf(R"({"expert_heat_collection_interval": 1.5})"),
      "cfg.json: eplb_config.expert_heat_collection_interval: expected an integer >= 1, got 1.5");
  EXPECT_EQ(ErrorOf(R"({"algorithm_execution_interval": 0})"),
            "cfg.json: eplb_config.algorithm_execution_interval: expected an integer >= 1, got 0");
  EXPECT_EQ(ErrorOf(R"({"num_redundant_experts": -1})"),
            "cfg.json: eplb_config.num_redundant_experts: expected an integer >= 0, got -1");
  EXPECT_EQ(ErrorOf(R"({"num_redundant_experts": true})"),
            "cfg.json: eplb_config.num_redundant_experts: expected an integer >= 0, got true");
  EXPECT_EQ(ErrorOf(R"({"expert_map_path": 3})"),
            "cfg.json: eplb_config.expert_map_path: expected a string, got 3");
  EXPECT_EQ(ErrorOf(R"({"expert_map_record_path": null})"),
            "cfg.json: eplb_config.expert_map_record_path: expected a string, got null");
  EXPECT_EQ(ErrorOf(R"({"algorithm": "magic"})"),
            "cfg.json: eplb_config.algorithm: expected one of deepseek, swift, got \"magic\"");
  EXPECT_EQ(
      ErrorOf(R"({"max_layers_in_flight": 0})"),
      "cfg.json: eplb_config.max_layers_in_flight: expected an integer in [1, 1048576], got 0");
  EXPECT_EQ(ErrorOf(R"({"imbalance_threshold": 1.5})"),
            "cfg.json: eplb_config.imbalance_threshold: expected a number in (0, 1], got 1.5");
  EXPECT_EQ(ErrorOf(R"({"transfer_timeout_ms": "10"})"),
            "cfg.json: eplb_config.transfer_timeout_ms: expected an integer in [1, 86400000], got "
            "\"10\"");
  EXPECT_NE(ErrorOf(R"({"dynamic_epbl": true})")
                .find("unknown key \"dynamic_epbl\" (did you mean \"dynamic_eplb\"?)"),
            std::string::npos);
  EXPECT_EQ(ErrorOf("[1]"), "cfg.json: expected a JSON object, got [1]");
  EXPECT_EQ(ErrorOf("{nope"), "cfg.json: not valid JSON");
  EXPECT_EQ(ErrorOf(R"({"eplb_config": {}, "x": 1})"),
            "cfg.json: \"eplb_config\" must be the only top-level key");
}

TEST(ConfigTest, LoadsInlineOrFromFile) {
  auto inline_cfg = LoadRuntimeConfig(R"(  {"dynamic_eplb": true})");
  ASSERT_TRUE(inline_cfg.ok());
  EXPECT_TRUE(inline_cfg->dynamic_eplb);
  auto missing = LoadRuntimeConfig("/nonexistent/eplb.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/nonexistent/eplb.json"), std::string::npos);
}

TEST(ConfigTest, ResolvesSlotsPerRankAndChecksTheMap) {
  RuntimeConfig c;
  c.num_redundant_experts = 64;
  auto s = ResolveSlotsPerRank(c, 256, 64);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, 5);
  c.num_redundant_experts = 60;
  auto bad = ResolveSlotsPerRank(c, 256, 64);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("nearest valid values: 0 or 64"), std::string::npos)
      << bad.status().message();
  // A map of another shape is rejected with both shapes named.
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/eplb_config_map.json";
  Placement p(1, 2, 4, 8, {0, 1, 2, 3, 4, 5, 6, 7});
  ASSERT_TRUE(WriteExpertMap(path, p, MapFormat::kVllmAscend).ok());
  c.num_redundant_experts = 0;
  c.expert_map_path = path;
  EXPECT_TRUE(ResolveSlotsPerRank(c, 8, 2).ok());
  c.num_redundant_experts = 8;
  auto mismatch = ResolveSlotsPerRank(c, 8, 2);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.status().message().find("has 2 ranks x 4 slots, the configuration needs 2 "
                                             "ranks x 8 slots"),
            std::string::npos)
      << mismatch.status().message();
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace eplb
