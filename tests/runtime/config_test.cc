#include "eplb/config.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eplb/formats.h"
#include "formats/scratch_dir.h"

namespace eplb {
namespace {

using ::eplb::testing::ScratchDir;

// The error of parsing `text` as "cfg.json"; fails the test when parsing succeeds.
std::string ErrorOf(const std::string& text) {
  StatusOr<RuntimeConfig> c = ParseRuntimeConfig(text, "cfg.json");
  EXPECT_FALSE(c.ok()) << text;
  if (c.ok()) return "";
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << c.status().message();
  EXPECT_EQ(c.status().message().find('\n'), std::string::npos) << "not one line: " << text;
  return c.status().message();
}

std::string ErrorOf(const Status& s) {
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message().find('\n'), std::string::npos) << s.message();
  return s.message();
}

std::string ErrorOf(const StatusOr<int>& s) {
  EXPECT_FALSE(s.ok());
  if (s.ok()) return "";
  EXPECT_EQ(s.status().message().find('\n'), std::string::npos) << s.status().message();
  return s.status().message();
}

void ExpectSameConfig(const RuntimeConfig& a, const RuntimeConfig& b) {
  EXPECT_EQ(a.dynamic_eplb, b.dynamic_eplb);
  EXPECT_EQ(a.expert_heat_collection_interval, b.expert_heat_collection_interval);
  EXPECT_EQ(a.algorithm_execution_interval, b.algorithm_execution_interval);
  EXPECT_EQ(a.num_redundant_experts, b.num_redundant_experts);
  EXPECT_EQ(a.expert_map_path, b.expert_map_path);
  EXPECT_EQ(a.expert_map_record_path, b.expert_map_record_path);
  EXPECT_EQ(a.algorithm, b.algorithm);
  EXPECT_EQ(a.expert_load_path, b.expert_load_path);
  EXPECT_EQ(a.expert_heat_windows, b.expert_heat_windows);
  EXPECT_EQ(a.max_layers_in_flight, b.max_layers_in_flight);
  EXPECT_EQ(a.imbalance_threshold, b.imbalance_threshold);  // exact: the text round-trips doubles
  EXPECT_EQ(a.transfer_timeout_ms, b.transfer_timeout_ms);
  EXPECT_EQ(a.balancer_threads, b.balancer_threads);
  EXPECT_EQ(a.algorithm_options.threads, b.algorithm_options.threads);
  EXPECT_EQ(a.algorithm_options.skip_balancedness, b.algorithm_options.skip_balancedness);
  EXPECT_EQ(a.algorithm_options.target_balancedness, b.algorithm_options.target_balancedness);
  EXPECT_EQ(a.algorithm_options.max_changes_per_layer, b.algorithm_options.max_changes_per_layer);
  EXPECT_EQ(a.algorithm_options.max_changes_per_cycle, b.algorithm_options.max_changes_per_cycle);
  EXPECT_EQ(a.algorithm_options.min_gain_per_change, b.algorithm_options.min_gain_per_change);
  EXPECT_EQ(a.algorithm_options.inter_node_cost, b.algorithm_options.inter_node_cost);
}

const std::vector<std::string> kKeys = {"dynamic_eplb",
                                        "expert_heat_collection_interval",
                                        "algorithm_execution_interval",
                                        "num_redundant_experts",
                                        "expert_map_path",
                                        "expert_map_record_path",
                                        "algorithm",
                                        "expert_load_path",
                                        "expert_heat_windows",
                                        "max_layers_in_flight",
                                        "imbalance_threshold",
                                        "transfer_timeout_ms",
                                        "balancer_threads",
                                        "target_balancedness",
                                        "max_changes_per_layer",
                                        "max_changes_per_cycle",
                                        "inter_node_cost",
                                        "min_gain_per_change"};

constexpr char kEveryKey[] = R"({"dynamic_eplb": true, "expert_heat_collection_interval": 10,
    "algorithm_execution_interval": 3, "num_redundant_experts": 64,
    "expert_map_path": "a.json", "expert_map_record_path": "b.json", "algorithm": "deepseek",
    "expert_load_path": "c.csv", "expert_heat_windows": 5, "max_layers_in_flight": 2, "imbalance_threshold": 0.95, "transfer_timeout_ms": 500,
    "balancer_threads": 3, "target_balancedness": 0.98, "max_changes_per_layer": 7,
    "max_changes_per_cycle": 4294967296, "inter_node_cost": 1.5, "min_gain_per_change": 0.25})";

void ExpectEveryKey(const RuntimeConfig& c) {
  EXPECT_TRUE(c.dynamic_eplb);
  EXPECT_EQ(c.expert_heat_collection_interval, 10);
  EXPECT_EQ(c.algorithm_execution_interval, 3);
  EXPECT_EQ(c.num_redundant_experts, 64);
  EXPECT_EQ(c.expert_map_path, "a.json");
  EXPECT_EQ(c.expert_map_record_path, "b.json");
  EXPECT_EQ(c.algorithm, "deepseek");
  EXPECT_EQ(c.expert_load_path, "c.csv");
  EXPECT_EQ(c.expert_heat_windows, 5);
  EXPECT_EQ(c.max_layers_in_flight, 2);
  EXPECT_EQ(c.imbalance_threshold, 0.95);
  EXPECT_EQ(c.algorithm_options.skip_balancedness, 0.95);
  EXPECT_EQ(c.transfer_timeout_ms, 500);
  EXPECT_EQ(c.balancer_threads, 3);
  EXPECT_EQ(c.algorithm_options.threads, 3);
  EXPECT_EQ(c.algorithm_options.target_balancedness, 0.98);
  EXPECT_EQ(c.algorithm_options.max_changes_per_layer, 7);
  EXPECT_EQ(c.algorithm_options.max_changes_per_cycle, int64_t{1} << 32);
  EXPECT_EQ(c.algorithm_options.inter_node_cost, 1.5);
  EXPECT_EQ(c.algorithm_options.min_gain_per_change, 0.25);
}

TEST(ConfigParseTest, EmptyObjectGivesTheDocumentedDefaults) {
  for (const std::string text : {"{}", " \n{ }\n", R"({"eplb_config": {}})"}) {
    StatusOr<RuntimeConfig> c = ParseRuntimeConfig(text, "cfg.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_FALSE(c->dynamic_eplb);
    EXPECT_EQ(c->expert_heat_collection_interval, 400);
    EXPECT_EQ(c->algorithm_execution_interval, 30);
    EXPECT_EQ(c->num_redundant_experts, 0);
    EXPECT_EQ(c->expert_map_path, "");
    EXPECT_EQ(c->expert_map_record_path, "");
    EXPECT_EQ(c->algorithm, "swift");
    EXPECT_EQ(c->expert_heat_windows, 1);
    EXPECT_EQ(c->max_layers_in_flight, 4);
    EXPECT_EQ(c->imbalance_threshold, 0.99);
    EXPECT_EQ(c->transfer_timeout_ms, 10000);
    EXPECT_EQ(c->balancer_threads, 1);
    ExpectSameConfig(*c, RuntimeConfig{});
  }
}

TEST(ConfigParseTest, ReadsEveryKeyBare) {
  StatusOr<RuntimeConfig> c = ParseRuntimeConfig(kEveryKey, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  ExpectEveryKey(*c);
}

TEST(ConfigParseTest, ReadsEveryKeyWrapped) {
  StatusOr<RuntimeConfig> c =
      ParseRuntimeConfig(std::string(R"({"eplb_config": )") + kEveryKey + "}", "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  ExpectEveryKey(*c);
}

TEST(ConfigParseTest, DerivesSkipBalancednessAndKeepsOtherAlgorithmOptions) {
  StatusOr<RuntimeConfig> c = ParseRuntimeConfig(R"({"imbalance_threshold": 1})", "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->imbalance_threshold, 1.0);
  EXPECT_EQ(c->algorithm_options.skip_balancedness, 1.0);
  EXPECT_EQ(c->algorithm_options.target_balancedness, AlgorithmOptions{}.target_balancedness);
  EXPECT_EQ(c->algorithm_options.max_changes_per_layer, -1);
}

TEST(ConfigParseTest, AcceptsEveryBalancerNameAndEmptyPaths) {
  for (const std::string& name : BalancerNames()) {
    StatusOr<RuntimeConfig> c =
        ParseRuntimeConfig(R"({"algorithm": ")" + name + R"(", "expert_map_path": "",
                               "expert_map_record_path": ""})",
                           "cfg.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->algorithm, name);
    EXPECT_EQ(c->expert_map_path, "");
  }
}

TEST(ConfigParseTest, AcceptsTheEdgesOfEachRange) {
  StatusOr<RuntimeConfig> c = ParseRuntimeConfig(
      R"({"expert_heat_collection_interval": 1, "algorithm_execution_interval": 2147483647,
          "num_redundant_experts": 0, "max_layers_in_flight": 1, "imbalance_threshold": 1e-9,
          "transfer_timeout_ms": 1})",
      "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->algorithm_execution_interval, 2147483647);
  EXPECT_EQ(c->imbalance_threshold, 1e-9);
}

// One bad value of one key and the exact message it must give.
struct BadValue {
  std::string text;
  std::string message;
};

class ConfigBadValueTest : public ::testing::TestWithParam<BadValue> {};

TEST_P(ConfigBadValueTest, IsRejectedNamingKeyExpectationAndValue) {
  EXPECT_EQ(ErrorOf(GetParam().text), GetParam().message);
  // The same message (same origin) when wrapped.
  EXPECT_EQ(ErrorOf(R"({"eplb_config": )" + GetParam().text + "}"), GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(
    WrongType, ConfigBadValueTest,
    ::testing::Values(
        BadValue{
            R"({"dynamic_eplb": "yes"})",
            R"(cfg.json: eplb_config.dynamic_eplb: expected a boolean (true or false), got "yes")"},
        BadValue{R"({"dynamic_eplb": 1})",
                 "cfg.json: eplb_config.dynamic_eplb: expected a boolean (true or false), got 1"},
        BadValue{R"({"expert_heat_collection_interval": 1.5})",
                 "cfg.json: eplb_config.expert_heat_collection_interval: expected an integer >= 1, "
                 "got 1.5"},
        BadValue{R"({"expert_heat_collection_interval": 400.0})",
                 "cfg.json: eplb_config.expert_heat_collection_interval: expected an integer >= 1, "
                 "got 400.0"},
        BadValue{R"({"algorithm_execution_interval": "30"})",
                 "cfg.json: eplb_config.algorithm_execution_interval: expected an integer >= 1, "
                 "got \"30\""},
        BadValue{R"({"num_redundant_experts": true})",
                 "cfg.json: eplb_config.num_redundant_experts: expected an integer >= 0, got true"},
        BadValue{R"({"num_redundant_experts": null})",
                 "cfg.json: eplb_config.num_redundant_experts: expected an integer >= 0, got null"},
        BadValue{R"({"expert_map_path": 3})",
                 "cfg.json: eplb_config.expert_map_path: expected a string, got 3"},
        BadValue{R"({"expert_map_record_path": null})",
                 "cfg.json: eplb_config.expert_map_record_path: expected a string, got null"},
        BadValue{R"({"expert_map_record_path": ["a"]})",
                 "cfg.json: eplb_config.expert_map_record_path: expected a string, got an array"},
        BadValue{
            R"({"algorithm": 1})",
            "cfg.json: eplb_config.algorithm: expected one of \"deepseek\", \"swift\" (a string), "
            "got 1"},
        BadValue{R"({"expert_heat_windows": 2.0})",
                 "cfg.json: eplb_config.expert_heat_windows: expected an integer in [1, 256], got "
                 "2.0"},
        BadValue{R"({"max_layers_in_flight": {"n": 2}})",
                 "cfg.json: eplb_config.max_layers_in_flight: expected an integer >= 1, got an "
                 "object"},
        BadValue{
            R"({"imbalance_threshold": "0.9"})",
            R"(cfg.json: eplb_config.imbalance_threshold: expected a number in (0, 1], got "0.9")"},
        BadValue{R"({"imbalance_threshold": true})",
                 "cfg.json: eplb_config.imbalance_threshold: expected a number in (0, 1], got "
                 "true"},
        BadValue{R"({"transfer_timeout_ms": "10"})",
                 "cfg.json: eplb_config.transfer_timeout_ms: expected an integer >= 1, got "
                 "\"10\""},
        BadValue{R"({"transfer_timeout_ms": false})",
                 "cfg.json: eplb_config.transfer_timeout_ms: expected an integer >= 1, got "
                 "false"},
        BadValue{
            R"({"target_balancedness": "0.97"})",
            R"(cfg.json: eplb_config.target_balancedness: expected a number in (0, 1], got "0.97")"},
        BadValue{R"({"max_changes_per_layer": 2.5})",
                 "cfg.json: eplb_config.max_changes_per_layer: expected an integer >= -1, got 2.5"},
        BadValue{R"({"max_changes_per_cycle": null})",
                 "cfg.json: eplb_config.max_changes_per_cycle: expected an integer >= -1, got "
                 "null"},
        BadValue{R"({"inter_node_cost": "2"})",
                 "cfg.json: eplb_config.inter_node_cost: expected a number >= 1, got \"2\""}));

INSTANTIATE_TEST_SUITE_P(
    OutOfRange, ConfigBadValueTest,
    ::testing::Values(
        BadValue{R"({"expert_heat_collection_interval": 0})",
                 "cfg.json: eplb_config.expert_heat_collection_interval: expected an integer >= 1, "
                 "got 0"},
        BadValue{R"({"algorithm_execution_interval": -3})",
                 "cfg.json: eplb_config.algorithm_execution_interval: expected an integer >= 1, "
                 "got -3"},
        BadValue{R"({"algorithm_execution_interval": 2147483648})",
                 "cfg.json: eplb_config.algorithm_execution_interval: expected an integer in [1, "
                 "2147483647], got 2147483648"},
        BadValue{R"({"num_redundant_experts": -1})",
                 "cfg.json: eplb_config.num_redundant_experts: expected an integer >= 0, got -1"},
        BadValue{R"({"num_redundant_experts": 18446744073709551615})",
                 "cfg.json: eplb_config.num_redundant_experts: expected an integer in [0, "
                 "2147483647], got 18446744073709551615"},
        BadValue{
            R"({"algorithm": "magic"})",
            R"(cfg.json: eplb_config.algorithm: expected one of "deepseek", "swift", got "magic")"},
        BadValue{
            R"({"algorithm": "Swift"})",
            R"(cfg.json: eplb_config.algorithm: expected one of "deepseek", "swift", got "Swift")"},
        BadValue{R"({"expert_heat_windows": 0})",
                 "cfg.json: eplb_config.expert_heat_windows: expected an integer in [1, 256], got "
                 "0"},
        BadValue{R"({"expert_heat_windows": 257})",
                 "cfg.json: eplb_config.expert_heat_windows: expected an integer in [1, 256], got "
                 "257"},
        BadValue{R"({"max_layers_in_flight": 0})",
                 "cfg.json: eplb_config.max_layers_in_flight: expected an integer >= 1, got 0"},
        BadValue{R"({"imbalance_threshold": 0})",
                 "cfg.json: eplb_config.imbalance_threshold: expected a number in (0, 1], got 0"},
        BadValue{R"({"imbalance_threshold": 1.5})",
                 "cfg.json: eplb_config.imbalance_threshold: expected a number in (0, 1], got 1.5"},
        BadValue{R"({"imbalance_threshold": -0.5})",
                 "cfg.json: eplb_config.imbalance_threshold: expected a number in (0, 1], got "
                 "-0.5"},
        BadValue{R"({"transfer_timeout_ms": 0})",
                 "cfg.json: eplb_config.transfer_timeout_ms: expected an integer >= 1, got 0"},
        BadValue{R"({"balancer_threads": 0})",
                 "cfg.json: eplb_config.balancer_threads: expected an integer in [1, 256], got 0"},
        BadValue{R"({"balancer_threads": 257})",
                 "cfg.json: eplb_config.balancer_threads: expected an integer in [1, 256], got "
                 "257"},
        BadValue{R"({"balancer_threads": 2.5})",
                 "cfg.json: eplb_config.balancer_threads: expected an integer in [1, 256], got "
                 "2.5"},
        BadValue{R"({"target_balancedness": 0})",
                 "cfg.json: eplb_config.target_balancedness: expected a number in (0, 1], got 0"},
        BadValue{R"({"max_changes_per_layer": -2})",
                 "cfg.json: eplb_config.max_changes_per_layer: expected an integer >= -1, got -2"},
        BadValue{R"({"max_changes_per_layer": 2147483648})",
                 "cfg.json: eplb_config.max_changes_per_layer: expected an integer in [-1, "
                 "2147483647], got 2147483648"},
        BadValue{R"({"max_changes_per_cycle": -5})",
                 "cfg.json: eplb_config.max_changes_per_cycle: expected an integer >= -1, got -5"},
        BadValue{R"({"max_changes_per_cycle": 18446744073709551615})",
                 "cfg.json: eplb_config.max_changes_per_cycle: expected an integer in [-1, "
                 "9223372036854775807], got 18446744073709551615"},
        BadValue{R"({"inter_node_cost": 0.5})",
                 "cfg.json: eplb_config.inter_node_cost: expected a number >= 1, got 0.5"},
        BadValue{R"({"inter_node_cost": -2})",
                 "cfg.json: eplb_config.inter_node_cost: expected a number >= 1, got -2"},
        BadValue{R"({"min_gain_per_change": -0.5})",
                 "cfg.json: eplb_config.min_gain_per_change: expected a number >= 0, got -0.5"}));

// A configuration built in code gets the parser's words (less the origin) for every value out of
// range: each key's range is written once and serves both.
TEST(ValidateRuntimeConfigTest, ConfigsBuiltInCodeGetTheParsersWords) {
  EXPECT_TRUE(ValidateRuntimeConfig(RuntimeConfig{}).ok());
  struct Case {
    std::string json;
    void (*set)(RuntimeConfig&);
  };
  const std::vector<Case> cases = {
      {R"({"expert_heat_collection_interval": 0})",
       [](RuntimeConfig& c) { c.expert_heat_collection_interval = 0; }},
      {R"({"algorithm_execution_interval": -3})",
       [](RuntimeConfig& c) { c.algorithm_execution_interval = -3; }},
      {R"({"num_redundant_experts": -1})", [](RuntimeConfig& c) { c.num_redundant_experts = -1; }},
      {R"({"algorithm": "magic"})", [](RuntimeConfig& c) { c.algorithm = "magic"; }},
      {R"({"expert_heat_windows": 257})", [](RuntimeConfig& c) { c.expert_heat_windows = 257; }},
      {R"({"max_layers_in_flight": 0})", [](RuntimeConfig& c) { c.max_layers_in_flight = 0; }},
      {R"({"imbalance_threshold": 1.5})", [](RuntimeConfig& c) { c.imbalance_threshold = 1.5; }},
      {R"({"transfer_timeout_ms": 0})", [](RuntimeConfig& c) { c.transfer_timeout_ms = 0; }},
      {R"({"balancer_threads": 0})", [](RuntimeConfig& c) { c.balancer_threads = 0; }},
      {R"({"target_balancedness": 0})",
       [](RuntimeConfig& c) { c.algorithm_options.target_balancedness = 0; }},
      {R"({"max_changes_per_layer": -2})",
       [](RuntimeConfig& c) { c.algorithm_options.max_changes_per_layer = -2; }},
      {R"({"max_changes_per_cycle": -5})",
       [](RuntimeConfig& c) { c.algorithm_options.max_changes_per_cycle = -5; }},
      {R"({"inter_node_cost": 0.5})",
       [](RuntimeConfig& c) { c.algorithm_options.inter_node_cost = 0.5; }},
  };
  for (const Case& k : cases) {
    RuntimeConfig c;
    k.set(c);
    const Status s = ValidateRuntimeConfig(c);
    EXPECT_EQ("cfg.json: " + std::string(s.message()), ErrorOf(k.json)) << k.json;
  }
  // JSON has no infinity or NaN, a struct has: both are out of range.
  RuntimeConfig c;
  c.algorithm_options.inter_node_cost = std::numeric_limits<double>::infinity();
  EXPECT_EQ(ValidateRuntimeConfig(c).message(),
            "eplb_config.inter_node_cost: expected a number >= 1, got inf");
  c = RuntimeConfig{};
  c.imbalance_threshold = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(ValidateRuntimeConfig(c).message(),
            "eplb_config.imbalance_threshold: expected a number in (0, 1], got nan");
  // ResolveSlotsPerRank (and so `eplb check-config` and Controller::Create) checks them first.
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 16, 4)),
            "eplb_config.imbalance_threshold: expected a number in (0, 1], got nan");
}

TEST(ConfigParseTest, EveryKeyHasATypeError) {
  // An array is the wrong type for every key.
  for (const std::string& key : kKeys) {
    const std::string message = ErrorOf(R"({")" + key + R"(": []})");
    EXPECT_EQ(message.rfind("cfg.json: eplb_config." + key + ": expected ", 0), 0) << message;
    EXPECT_TRUE(message.ends_with(", got []")) << message;
  }
}

TEST(ConfigParseTest, LongStringValuesAreShortened) {
  const std::string message = ErrorOf(R"({"algorithm": ")" + std::string(500, 'x') + R"("})");
  EXPECT_LT(message.size(), 200u) << message;
  EXPECT_TRUE(message.ends_with("...\"")) << message;
}

TEST(ConfigParseTest, UnknownKeySuggestsTheNearestKnownKey) {
  EXPECT_EQ(ErrorOf(R"({"dynamic_epbl": true})"),
            "cfg.json: eplb_config.dynamic_epbl: unknown key (did you mean \"dynamic_eplb\"?); "
            "known keys: dynamic_eplb, expert_heat_collection_interval, "
            "algorithm_execution_interval, num_redundant_experts, expert_map_path, "
            "expert_map_record_path, algorithm, expert_load_path, expert_heat_windows, "
            "max_layers_in_flight, "
            "imbalance_threshold, "
            "transfer_timeout_ms, balancer_threads, target_balancedness, max_changes_per_layer, "
            "max_changes_per_cycle, inter_node_cost, min_gain_per_change");
  EXPECT_NE(ErrorOf(R"({"eplb_config": {"num_redundant_expert": 4}})")
                .find("eplb_config.num_redundant_expert: unknown key (did you mean "
                      "\"num_redundant_experts\"?)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(R"({"algorithms": "swift"})").find("(did you mean \"algorithm\"?)"),
            std::string::npos);
}

TEST(ConfigParseTest, UnknownKeyFarFromEveryKnownKeyListsTheKnownKeys) {
  const std::string message = ErrorOf(R"({"eplb_policy_type": 1})");
  EXPECT_EQ(message.rfind("cfg.json: eplb_config.eplb_policy_type: unknown key; known keys: ", 0),
            0)
      << message;
  EXPECT_EQ(message.find("did you mean"), std::string::npos) << message;
  for (const std::string& key : kKeys) EXPECT_NE(message.find(key), std::string::npos) << key;
}

TEST(ConfigParseTest, OddKeysAreQuotedAndStayOnOneLine) {
  EXPECT_EQ(ErrorOf("{\"a\\nb\": 1}").rfind(R"(cfg.json: eplb_config."a\nb": unknown key;)", 0), 0);
  EXPECT_EQ(ErrorOf(R"({"": 1})").rfind(R"(cfg.json: eplb_config."": unknown key;)", 0), 0);
}

TEST(ConfigParseTest, DuplicateKeysAreRejected) {
  EXPECT_EQ(ErrorOf(R"({"dynamic_eplb": true, "dynamic_eplb": false})"),
            "cfg.json: eplb_config.dynamic_eplb: expected once, given more than once");
  EXPECT_EQ(ErrorOf(R"({"eplb_config": {"algorithm": "swift", "algorithm": "deepseek"}})"),
            "cfg.json: eplb_config.algorithm: expected once, given more than once");
  EXPECT_EQ(ErrorOf(R"({"eplb_config": {}, "eplb_config": {}})"),
            "cfg.json: eplb_config: expected once, given more than once");
}

TEST(ConfigParseTest, NotJsonNamesLineAndColumn) {
  const std::string one = ErrorOf("{nope");
  EXPECT_EQ(one.rfind("cfg.json: line 1, column 3: not valid JSON: ", 0), 0) << one;
  const std::string two = ErrorOf("{\n  \"dynamic_eplb\": tru\n}");
  EXPECT_EQ(two.rfind("cfg.json: line 2, column ", 0), 0) << two;
  EXPECT_NE(two.find("not valid JSON"), std::string::npos) << two;
  // The place is counted as for load files and expert maps: input that ends on an empty line
  // stops at its column 1.
  EXPECT_EQ(ErrorOf("{\"dynamic_eplb\":\n"),
            "cfg.json: line 2, column 1: not valid JSON: syntax error while parsing value - "
            "unexpected end of input; expected '[', '{', or a literal");
  EXPECT_EQ(ErrorOf(""), "cfg.json: is empty, expected a JSON object");
  EXPECT_EQ(ErrorOf(" \n\t"), "cfg.json: is empty, expected a JSON object");
  EXPECT_EQ(ErrorOf(R"({"transfer_timeout_ms": 1e400})").rfind("cfg.json: ", 0), 0);
  EXPECT_NE(ErrorOf("{} {}").find("not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf("{\"a\": \"\xff\"}").find("not valid JSON"), std::string::npos);
  EXPECT_NE(ErrorOf(std::string(100000, '[')).find("not valid JSON"), std::string::npos);
}

TEST(ConfigParseTest, NotAnObjectIsRejected) {
  const std::string expected =
      "cfg.json: expected a JSON object (the eplb_config keys, bare or as {\"eplb_config\": "
      "{...}}), got ";
  EXPECT_EQ(ErrorOf("[1]"), expected + "an array");
  EXPECT_EQ(ErrorOf("3"), expected + "3");
  EXPECT_EQ(ErrorOf(R"("swift")"), expected + "\"swift\"");
  EXPECT_EQ(ErrorOf("null"), expected + "null");
}

TEST(ConfigParseTest, WrapperMustBeTheOnlyKeyAndAnObject) {
  EXPECT_EQ(ErrorOf(R"({"eplb_config": {}, "dynamic_eplb": true})"),
            "cfg.json: eplb_config: expected the only top-level key when present, got also "
            "\"dynamic_eplb\"");
  EXPECT_EQ(ErrorOf(R"({"eplb_config": [1]})"),
            "cfg.json: eplb_config: expected an object, got an array");
  EXPECT_EQ(ErrorOf(R"({"eplb_config": null})"),
            "cfg.json: eplb_config: expected an object, got null");
  // A nested wrapper is an unknown key, not a second wrapper.
  EXPECT_EQ(ErrorOf(R"({"eplb_config": {"eplb_config": {}}})")
                .rfind("cfg.json: eplb_config.eplb_config: unknown key;", 0),
            0);
}

TEST(ConfigLoadTest, InlineJsonAfterWhitespace) {
  StatusOr<RuntimeConfig> c = LoadRuntimeConfig(" \n\t{\"dynamic_eplb\": true}");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->dynamic_eplb);
  StatusOr<RuntimeConfig> bad = LoadRuntimeConfig(R"({"dynamic_eplb": "yes"})");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(
      bad.status().message(),
      R"(inline config: eplb_config.dynamic_eplb: expected a boolean (true or false), got "yes")");
}

TEST(ConfigLoadTest, FileNamesItselfInErrors) {
  ScratchDir dir;
  dir.Put("good.json", std::string(R"({"eplb_config": )") + kEveryKey + "}");
  StatusOr<RuntimeConfig> c = LoadRuntimeConfig(dir / "good.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  ExpectEveryKey(*c);
  dir.Put("bad.json", R"({"max_layers_in_flight": 0})");
  StatusOr<RuntimeConfig> bad = LoadRuntimeConfig(dir / "bad.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), dir / "bad.json" +
                                        ": eplb_config.max_layers_in_flight: expected an integer "
                                        ">= 1, got 0");
  StatusOr<RuntimeConfig> missing = LoadRuntimeConfig(dir / "missing.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find(dir / "missing.json"), std::string::npos)
      << missing.status().message();
}

TEST(ConfigJsonTest, WritesEveryKeyWrappedAndPretty) {
  const std::string text = RuntimeConfigToJson(RuntimeConfig{});
  EXPECT_NE(text.find('\n'), std::string::npos) << text;
  const nlohmann::json doc = nlohmann::json::parse(text);
  ASSERT_TRUE(doc.is_object());
  ASSERT_EQ(doc.size(), 1u) << text;
  const nlohmann::json& keys = doc.at("eplb_config");
  EXPECT_EQ(keys.size(), kKeys.size()) << text;
  for (const std::string& key : kKeys) EXPECT_TRUE(keys.contains(key)) << key;
  EXPECT_EQ(keys.at("algorithm"), "swift");
  EXPECT_EQ(keys.at("imbalance_threshold"), 0.99);
  EXPECT_EQ(keys.at("expert_map_path"), "");
  // Keys come in the order of config.h, not sorted.
  EXPECT_LT(text.find("dynamic_eplb"), text.find("algorithm\""));
}

TEST(ConfigJsonTest, RoundTripsDefaultsAndEveryKey) {
  StatusOr<RuntimeConfig> every = ParseRuntimeConfig(kEveryKey, "cfg.json");
  ASSERT_TRUE(every.ok()) << every.status().message();
  RuntimeConfig odd;
  odd.imbalance_threshold = 0.1 + 0.2;  // not exactly representable in short decimal
  odd.expert_map_path = "/tmp/dir with spaces/\"quoted\"\\map.json";
  odd.num_redundant_experts = 2147483647;
  odd.algorithm_options.skip_balancedness = odd.imbalance_threshold;
  odd.algorithm_options.target_balancedness = 0.1 + 0.7;
  odd.algorithm_options.inter_node_cost = 1.0 / 3 + 1;
  odd.algorithm_options.max_changes_per_cycle = std::numeric_limits<int64_t>::max();
  odd.algorithm_options.min_gain_per_change = 0.25;  // before: not a key, read back as 1e-5
  for (const RuntimeConfig& c : {RuntimeConfig{}, *every, odd}) {
    StatusOr<RuntimeConfig> again = ParseRuntimeConfig(RuntimeConfigToJson(c), "again");
    ASSERT_TRUE(again.ok()) << again.status().message();
    ExpectSameConfig(*again, c);
  }
}

TEST(ConfigJsonTest, InvalidUtf8PathDoesNotThrow) {
  RuntimeConfig c;
  c.expert_map_record_path = "bad\xff.json";
  const std::string text = RuntimeConfigToJson(c);
  EXPECT_NE(text.find("expert_map_record_path"), std::string::npos);
  EXPECT_TRUE(ParseRuntimeConfig(text, "again").ok());
}

TEST(ResolveSlotsPerRankTest, DividesExpertsPlusRedundancyOverRanks) {
  RuntimeConfig c;
  c.num_redundant_experts = 64;
  StatusOr<int> s = ResolveSlotsPerRank(c, 256, 64);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(*s, 5);
  c.num_redundant_experts = 0;
  EXPECT_EQ(*ResolveSlotsPerRank(c, 256, 256), 1);
  EXPECT_EQ(*ResolveSlotsPerRank(c, 8, 1), 8);
  c.num_redundant_experts = 1;
  EXPECT_EQ(*ResolveSlotsPerRank(c, 3, 4), 1);  // one expert replicated, every rank one slot
}

TEST(ResolveSlotsPerRankTest, RejectsNonPositiveShape) {
  const RuntimeConfig c;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 0, 4)), "model: experts must be > 0, got 0");
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, -8, 4)), "model: experts must be > 0, got -8");
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 8, 0)), "model: ranks must be > 0, got 0");
}

TEST(ResolveSlotsPerRankTest, IndivisibleSuggestsTheNearestValidRedundancy) {
  RuntimeConfig c;
  c.num_redundant_experts = 60;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 256, 64)),
            "eplb_config.num_redundant_experts: 256 experts + 60 redundant = 316 physical slots "
            "cannot be split evenly over 64 ranks; nearest valid num_redundant_experts: 0 or 64");
  // Below would be negative: only the value above is suggested.
  c.num_redundant_experts = 1;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 6, 4)),
            "eplb_config.num_redundant_experts: 6 experts + 1 redundant = 7 physical slots "
            "cannot be split evenly over 4 ranks; nearest valid num_redundant_experts: 2");
  // Above would give more slots per rank than experts: only the value below.
  c.num_redundant_experts = 5;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 4, 2)),
            "eplb_config.num_redundant_experts: 4 experts + 5 redundant = 9 physical slots "
            "cannot be split evenly over 2 ranks; nearest valid num_redundant_experts: 4");
  // No overflow at the top of the int range.
  c.num_redundant_experts = 2147483647;
  EXPECT_NE(ErrorOf(ResolveSlotsPerRank(c, 2, 2)).find("= 2147483649 physical slots"),
            std::string::npos);
}

TEST(ResolveSlotsPerRankTest, RejectsMoreSlotsPerRankThanExperts) {
  RuntimeConfig c;
  c.num_redundant_experts = 8;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 4, 2)),
            "eplb_config.num_redundant_experts: 4 experts + 8 redundant over 2 ranks give 6 slots "
            "per rank, more than the 4 experts (a rank holds at most one replica of each); nearest "
            "valid num_redundant_experts: 4");
  c.num_redundant_experts = 1;
  EXPECT_NE(ErrorOf(ResolveSlotsPerRank(c, 8, 1)).find("nearest valid num_redundant_experts: 0"),
            std::string::npos);
}

TEST(ResolveSlotsPerRankTest, AcceptsAMatchingMapInEitherLayout) {
  ScratchDir dir;
  // 8 experts on 2 ranks x 5 slots (K = 2), one layer.
  const Placement p(1, 2, 5, 8, {0, 1, 2, 3, 4, 5, 6, 7, 0, 1});
  ASSERT_TRUE(WriteExpertMap(dir / "vllm.json", p, MapFormat::kVllmAscend).ok());
  ASSERT_TRUE(WriteExpertMap(dir / "sglang.json", p, MapFormat::kSglang).ok());
  RuntimeConfig c;
  c.num_redundant_experts = 2;
  for (const std::string name : {"vllm.json", "sglang.json"}) {
    c.expert_map_path = dir / name;
    StatusOr<int> s = ResolveSlotsPerRank(c, 8, 2);
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_EQ(*s, 5);
  }
}

TEST(ResolveSlotsPerRankTest, ChecksALoadFileAndRefusesItBesideAMap) {
  ScratchDir dir;
  const std::string path = dir / "load.csv";
  {
    std::ofstream f(path);
    f << "0,0,0,0,0,0,0,0\n5,1,1,1,1,1,1,9\n";
  }
  RuntimeConfig c;
  c.num_redundant_experts = 2;
  c.expert_load_path = path;
  EXPECT_EQ(*ResolveSlotsPerRank(c, 8, 2), 5);
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 6, 2)),
            "eplb_config.expert_load_path: " + path + ": has 8 experts per row, the model 6");
  c.expert_map_path = "map.json";
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 8, 2)),
            "eplb_config.expert_load_path: give expert_map_path or expert_load_path, not both (the "
            "initial placement is either a map or the algorithm's placement for a load)");
  c.expert_map_path.clear();
  c.expert_load_path = dir / "missing.csv";
  EXPECT_NE(ErrorOf(ResolveSlotsPerRank(c, 8, 2)).find("eplb_config.expert_load_path: "),
            std::string::npos);
}

// Found in review: without a model check-config accepted a missing map, and a record path in a
// missing folder or on a pipe failed only at a later cycle (or hung, for a pipe).
TEST(CheckConfigPathsTest, FilesAreCheckedWithoutAModel) {
  ScratchDir dir;
  RuntimeConfig c;
  EXPECT_TRUE(CheckConfigPaths(c).ok());
  c.expert_map_path = dir / "missing.json";
  EXPECT_EQ(ErrorOf(CheckConfigPaths(c)), "eplb_config.expert_map_path: " + dir / "missing.json" +
                                              ": cannot open: No such file or directory");
  c.expert_map_path.clear();
  c.expert_load_path = dir.path().string();
  EXPECT_EQ(ErrorOf(CheckConfigPaths(c)), "eplb_config.expert_load_path: " + dir.path().string() +
                                              ": cannot read: Is a directory");
  c.expert_load_path.clear();
  c.expert_map_record_path = dir / "no/such/record.json";
  EXPECT_EQ(ErrorOf(CheckConfigPaths(c)),
            "eplb_config.expert_map_record_path: " + dir / "no/such/record.json" +
                ": cannot write: " + dir / "no/such" + ": No such file or directory");
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  c.expert_map_record_path = dir / "fifo";
  EXPECT_EQ(ErrorOf(CheckConfigPaths(c)),
            "eplb_config.expert_map_record_path: " + dir / "fifo" +
                ": not a regular file (a device, pipe or socket); refusing to replace it");
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 8, 2)), ErrorOf(CheckConfigPaths(c)));
  c.expert_map_record_path = dir / "record.json";
  EXPECT_TRUE(CheckConfigPaths(c).ok());
}

TEST(ResolveSlotsPerRankTest, RejectsAMapOfAnotherShape) {
  ScratchDir dir;
  const std::string path = dir / "map.json";
  ASSERT_TRUE(
      WriteExpertMap(path, Placement(1, 2, 4, 8, {0, 1, 2, 3, 4, 5, 6, 7}), MapFormat::kVllmAscend)
          .ok());
  RuntimeConfig c;
  c.expert_map_path = path;
  EXPECT_EQ(*ResolveSlotsPerRank(c, 8, 2), 4);
  // Other slots per rank.
  c.num_redundant_experts = 2;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 8, 2)),
            "eplb_config.expert_map_path: " + path +
                ": expected 2 ranks x 5 slots per rank (8 experts + 2 redundant), found 2 ranks x "
                "4 slots per rank");
  // Other ranks: ReadExpertMap's own message, naming the file.
  c.num_redundant_experts = 0;
  const std::string ranks = ErrorOf(ResolveSlotsPerRank(c, 8, 4));
  EXPECT_EQ(ranks.rfind("eplb_config.expert_map_path: " + path + ": ", 0), 0) << ranks;
  EXPECT_NE(ranks.find("4 ranks"), std::string::npos) << ranks;
  // Other experts: ids out of range.
  c.num_redundant_experts = 4;
  const std::string experts = ErrorOf(ResolveSlotsPerRank(c, 4, 2));
  EXPECT_EQ(experts.rfind("eplb_config.expert_map_path: " + path + ": ", 0), 0) << experts;
  // The same total slots split differently (SGLang records no ranks): the shape is named.
  ASSERT_TRUE(
      WriteExpertMap(path, Placement(1, 4, 2, 8, {0, 1, 2, 3, 4, 5, 6, 7}), MapFormat::kSglang)
          .ok());
  c.num_redundant_experts = 0;
  EXPECT_EQ(*ResolveSlotsPerRank(c, 8, 2), 4);
  c.num_redundant_experts = 8;
  EXPECT_EQ(ErrorOf(ResolveSlotsPerRank(c, 8, 2)),
            "eplb_config.expert_map_path: " + path +
                ": expected 2 ranks x 8 slots per rank (8 experts + 8 redundant), found 2 ranks x "
                "4 slots per rank");
}

TEST(ResolveSlotsPerRankTest, RejectsAMissingOrMalformedMap) {
  ScratchDir dir;
  RuntimeConfig c;
  c.expert_map_path = dir / "missing.json";
  const std::string missing = ErrorOf(ResolveSlotsPerRank(c, 8, 2));
  EXPECT_EQ(missing.rfind("eplb_config.expert_map_path: ", 0), 0) << missing;
  EXPECT_NE(missing.find(dir / "missing.json"), std::string::npos) << missing;
  dir.Put("bad.json", "{\"layer_list\": ");
  c.expert_map_path = dir / "bad.json";
  const std::string bad = ErrorOf(ResolveSlotsPerRank(c, 8, 2));
  EXPECT_NE(bad.find(dir / "bad.json"), std::string::npos) << bad;
}

}  // namespace
}  // namespace eplb
