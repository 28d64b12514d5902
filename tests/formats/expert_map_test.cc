// Expert maps: both layouts, the ranks/experts parameters, round trips on random placements,
// atomic writes, and one test per malformed input (each message names the file and the place).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "eplb/formats.h"
#include "formats/scratch_dir.h"
#include "testing/random_cases.h"

namespace eplb {
namespace {

using json = nlohmann::json;
using testing::ScratchDir;

// 2 layers x 2 devices x 2 slots over 4 experts.
const char kVllm[] = R"({
  "moe_layer_count": 2,
  "layer_list": [
    {"layer_id": 0, "device_count": 2,
     "device_list": [{"device_id": 0, "device_expert": [0, 1]},
                     {"device_id": 1, "device_expert": [2, 3]}]},
    {"layer_id": 1, "device_count": 2,
     "device_list": [{"device_id": 0, "device_expert": [3, 2]},
                     {"device_id": 1, "device_expert": [1, 0]}]}
  ]
})";

// 2 layers x 4 physical slots over 4 experts.
const char kSglang[] = R"({"physical_to_logical_map": [[0, 1, 2, 3], [3, 2, 1, 0]]})";

TEST(MapFormatTest, NamesRoundTripAndUnknownNameIsRejected) {
  for (MapFormat f : {MapFormat::kVllmAscend, MapFormat::kSglang}) {
    StatusOr<MapFormat> back = ParseMapFormat(MapFormatName(f));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, f);
  }
  EXPECT_EQ(MapFormatName(MapFormat::kVllmAscend), "vllm-ascend");
  EXPECT_EQ(MapFormatName(MapFormat::kSglang), "sglang");
  StatusOr<MapFormat> bad = ParseMapFormat("deepep");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "unknown expert-map format \"deepep\"; expected \"vllm-ascend\" or \"sglang\"");
}

TEST(ExpertMapTest, ParsesVllmAscend) {
  StatusOr<MapFile> m = ParseExpertMap(kVllm, "map.json");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->format, MapFormat::kVllmAscend);
  EXPECT_EQ(m->placement, Placement(2, 2, 2, 4, {0, 1, 2, 3, 3, 2, 1, 0}));
}

TEST(ExpertMapTest, ParsesVllmAscendWithGivenExpertsAndRanks) {
  StatusOr<MapFile> m = ParseExpertMap(kVllm, "map.json", /*experts=*/4, /*ranks=*/2);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->placement, Placement(2, 2, 2, 4, {0, 1, 2, 3, 3, 2, 1, 0}));
}

TEST(ExpertMapTest, ParsesSglangWithOneSlotPerRankByDefault) {
  StatusOr<MapFile> m = ParseExpertMap(kSglang, "map.json");
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->format, MapFormat::kSglang);
  EXPECT_EQ(m->placement, Placement(2, 4, 1, 4, {0, 1, 2, 3, 3, 2, 1, 0}));
}

TEST(ExpertMapTest, ParsesSglangWithGivenRanks) {
  StatusOr<MapFile> m = ParseExpertMap(kSglang, "map.json", /*experts=*/-1, /*ranks=*/2);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->placement, Placement(2, 2, 2, 4, {0, 1, 2, 3, 3, 2, 1, 0}));
}

TEST(ExpertMapTest, SerializesTheDocumentedLayouts) {
  const Placement p(1, 2, 2, 3, {0, 1, 2, 0});
  EXPECT_EQ(SerializeExpertMap(p, MapFormat::kSglang),
            "{\n  \"physical_to_logical_map\": [\n    [0, 1, 2, 0]\n  ]\n}\n");
  const json v = json::parse(SerializeExpertMap(p, MapFormat::kVllmAscend));
  EXPECT_EQ(v, json::parse(R"({"moe_layer_count": 1, "layer_list": [
      {"layer_id": 0, "device_count": 2,
       "device_list": [{"device_id": 0, "device_expert": [0, 1]},
                       {"device_id": 1, "device_expert": [2, 0]}]}]})"));
}

// Serialize -> parse gives the same placement, for both layouts, on random placements.
TEST(ExpertMapTest, RandomPlacementsRoundTripThroughBothLayouts) {
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng, 5);
    const Placement p = testing::RandomPlacement(rng, shape);
    ASSERT_TRUE(ValidatePlacement(p).ok());

    StatusOr<MapFile> vllm = ParseExpertMap(SerializeExpertMap(p, MapFormat::kVllmAscend), "v");
    ASSERT_TRUE(vllm.ok()) << vllm.status().ToString();
    EXPECT_EQ(vllm->format, MapFormat::kVllmAscend);
    EXPECT_EQ(vllm->placement, p);

    const std::string sglang_text = SerializeExpertMap(p, MapFormat::kSglang);
    StatusOr<MapFile> sglang = ParseExpertMap(sglang_text, "s", shape.experts, shape.ranks);
    ASSERT_TRUE(sglang.ok()) << sglang.status().ToString();
    EXPECT_EQ(sglang->format, MapFormat::kSglang);
    EXPECT_EQ(sglang->placement, p);

    // Without ranks, SGLang's layout gives one slot per rank over the same phy2log.
    StatusOr<MapFile> flat = ParseExpertMap(sglang_text, "s");
    ASSERT_TRUE(flat.ok()) << flat.status().ToString();
    EXPECT_EQ(flat->placement.ranks(), shape.slots());
    EXPECT_EQ(flat->placement.slots_per_rank(), 1);
    EXPECT_EQ(flat->placement.phy2log(), p.phy2log());
  }
}

TEST(ExpertMapTest, WriteThenReadRoundTripsAndLeavesNoTemporaries) {
  ScratchDir dir;
  std::mt19937_64 rng(7);
  Shape shape{.layers = 3, .experts = 16, .ranks = 4, .slots_per_rank = 5};
  const Placement p = testing::RandomPlacement(rng, shape);
  for (MapFormat f : {MapFormat::kVllmAscend, MapFormat::kSglang}) {
    const std::string path = dir / ("map." + MapFormatName(f) + ".json");
    ASSERT_TRUE(WriteExpertMap(path, p, f).ok());
    ASSERT_TRUE(WriteExpertMap(path, p, f).ok());  // replaces
    StatusOr<MapFile> m = ReadExpertMap(path, shape.experts, shape.ranks);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(m->format, f);
    EXPECT_EQ(m->placement, p);
  }
  EXPECT_EQ(dir.Entries(), (std::set<std::string>{"map.sglang.json", "map.vllm-ascend.json"}));
}

TEST(ExpertMapTest, WriteRefusesInvalidPlacementAndKeepsOldFile) {
  ScratchDir dir;
  const std::string path = dir / "map.json";
  dir.Put("map.json", "old");
  const Placement missing_expert(1, 2, 1, 3, {0, 1});
  Status s = WriteExpertMap(path, missing_expert, MapFormat::kVllmAscend);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), path +
                             ": refusing to write an invalid placement: placement has 2 slots "
                             "per layer for 3 logical experts");
  EXPECT_EQ(*ReadFile(path), "old");
  EXPECT_EQ(dir.Entries(), std::set<std::string>{"map.json"});
}

TEST(ExpertMapTest, WriteIntoMissingDirectoryFailsNamingPath) {
  ScratchDir dir;
  const std::string path = dir / "missing/map.json";
  Status s = WriteExpertMap(path, Placement(1, 1, 1, 1, {0}), MapFormat::kSglang);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            path + ": cannot write: " + dir / "missing" + ": No such file or directory");
  EXPECT_TRUE(dir.Entries().empty());
}

TEST(ExpertMapTest, ReadReportsMissingFileAndUsesPathAsOrigin) {
  ScratchDir dir;
  StatusOr<MapFile> missing = ReadExpertMap(dir / "none.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            dir / "none.json" + ": cannot open: No such file or directory");

  dir.Put("bad.json", R"({"physical_to_logical_map": [[0, 1, 1]]})");
  StatusOr<MapFile> bad = ReadExpertMap(dir / "bad.json", -1, 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            dir / "bad.json" +
                ": layer 0, rank 0: logical expert 1 is in both slot 1 and slot 2; "
                "a rank may hold at most one replica of an expert");
}

// ---- malformed input: one case per error path ----

struct BadMap {
  std::string name;
  std::string text;
  std::string message;  // the whole expected message, after "map.json: "
  int experts = -1;
  int ranks = -1;
};

// kVllm or kSglang with one change applied.
std::string Edit(const char* base, const std::function<void(json&)>& edit) {
  json j = json::parse(base);
  edit(j);
  return j.dump();
}
std::string Vllm(const std::function<void(json&)>& edit) { return Edit(kVllm, edit); }
std::string Sglang(const std::function<void(json&)>& edit) { return Edit(kSglang, edit); }

json& Layer(json& j, int l) { return j["layer_list"][l]; }
json& Device(json& j, int l, int r) { return j["layer_list"][l]["device_list"][r]; }

class BadMapTest : public ::testing::TestWithParam<BadMap> {};

TEST_P(BadMapTest, ReportsFileAndPlaceOnOneLine) {
  const BadMap& c = GetParam();
  StatusOr<MapFile> m = ParseExpertMap(c.text, "map.json", c.experts, c.ranks);
  ASSERT_FALSE(m.ok()) << "accepted: " << c.text;
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m.status().message(), "map.json: " + c.message);
  EXPECT_EQ(m.status().message().find('\n'), std::string::npos);
}

const BadMap kBadMaps[] = {
    // Arguments and the document as a whole.
    {"ExpertsArgument", kVllm, "experts must be -1 (from the file) or > 0, got 0", 0},
    {"RanksArgument", kVllm, "ranks must be -1 (from the file) or > 0, got -2", -1, -2},
    {"Empty", "\n", "is empty"},
    {"NotJson", "{\"layer_list\": [}",
     "line 1, column 17: not valid JSON: syntax error while parsing value - unexpected '}'; "
     "expected '[', '{', or a literal"},
    {"DuplicateKey",
     R"({"physical_to_logical_map": [[0, 1]], "physical_to_logical_map": [[1, 0]]})",
     "key \"physical_to_logical_map\" appears twice in one object"},
    {"DuplicateNestedKey",
     R"({"moe_layer_count": 1, "layer_list": [{"layer_id": 0, "layer_id": 0, "device_count": 1,
         "device_list": [{"device_id": 0, "device_expert": [0]}]}]})",
     "key \"layer_id\" appears twice in one object"},
    {"NumberOverflow", R"({"physical_to_logical_map": [[1e400]]})",
     "line 1, column 35: not valid JSON: number overflow parsing '1e400'"},
    {"NotAnObject", "[[0, 1]]",
     "expected a JSON object (vllm-ascend or SGLang expert map), got an array"},
    {"NeitherLayout", R"({"expert_map": []})",
     "expected the keys of exactly one layout, \"moe_layer_count\" and \"layer_list\" "
     "(vllm-ascend) or \"physical_to_logical_map\" (SGLang), found neither"},
    {"BothLayouts", Vllm([](json& j) { j["physical_to_logical_map"] = json::array(); }),
     "expected the keys of exactly one layout, \"moe_layer_count\" and \"layer_list\" "
     "(vllm-ascend) or \"physical_to_logical_map\" (SGLang), found both"},
    // vllm-ascend structure.
    {"MissingLayerCount", Vllm([](json& j) { j.erase("moe_layer_count"); }),
     "top level: missing key \"moe_layer_count\""},
    {"LayerCountNotInteger", Vllm([](json& j) { j["moe_layer_count"] = 2.5; }),
     "moe_layer_count: expected a positive integer, got 2.5"},
    {"LayerCountZero", Vllm([](json& j) { j["moe_layer_count"] = 0; }),
     "moe_layer_count: expected a positive integer, got 0"},
    {"MissingLayerList", Vllm([](json& j) { j.erase("layer_list"); }),
     "top level: missing key \"layer_list\""},
    {"LayerListNotArray", Vllm([](json& j) { j["layer_list"] = "x"; }),
     "layer_list: expected an array, got \"x\""},
    {"LayerCountMismatch", Vllm([](json& j) { j["moe_layer_count"] = 3; }),
     "layer_list: has 2 layers, moe_layer_count is 3"},
    {"LayerNotObject", Vllm([](json& j) { Layer(j, 1) = 7; }),
     "layer_list[1]: expected an object, got 7"},
    {"MissingLayerId", Vllm([](json& j) { Layer(j, 0).erase("layer_id"); }),
     "layer_list[0]: missing key \"layer_id\""},
    {"LayerIdOutOfOrder", Vllm([](json& j) { Layer(j, 1)["layer_id"] = 0; }),
     "layer_list[1].layer_id: expected 1 (in order from 0), got 0"},
    {"LayerIdNotInteger", Vllm([](json& j) { Layer(j, 1)["layer_id"] = "1"; }),
     "layer_list[1].layer_id: expected 1 (in order from 0), got \"1\""},
    {"MissingDeviceCount", Vllm([](json& j) { Layer(j, 0).erase("device_count"); }),
     "layer_list[0]: missing key \"device_count\""},
    {"DeviceCountNegative", Vllm([](json& j) { Layer(j, 0)["device_count"] = -2; }),
     "layer_list[0].device_count: expected a positive integer, got -2"},
    {"MissingDeviceList", Vllm([](json& j) { Layer(j, 1).erase("device_list"); }),
     "layer_list[1]: missing key \"device_list\""},
    {"DeviceListNotArray", Vllm([](json& j) { Layer(j, 1)["device_list"] = json::object(); }),
     "layer_list[1].device_list: expected an array, got an object"},
    {"DeviceCountMismatch", Vllm([](json& j) { Layer(j, 0)["device_count"] = 3; }),
     "layer_list[0].device_list: has 2 devices, device_count is 3"},
    {"DeviceCountDiffersBetweenLayers", Vllm([](json& j) {
       Layer(j, 1)["device_count"] = 1;
       Layer(j, 1)["device_list"].erase(1);
     }),
     "layer_list[1].device_count: is 1, layer_list[0] has 2; every layer needs the same devices"},
    {"RanksDisagreeWithFile", kVllm,
     "layer_list[0].device_count: the file has 2 devices, expected 4 ranks", -1, 4},
    {"DeviceNotObject", Vllm([](json& j) {
       Device(j, 0, 1) = json::array({2, 3});
     }),
     "layer_list[0].device_list[1]: expected an object, got an array"},
    {"MissingDeviceId", Vllm([](json& j) { Device(j, 1, 0).erase("device_id"); }),
     "layer_list[1].device_list[0]: missing key \"device_id\""},
    {"DeviceIdOutOfOrder", Vllm([](json& j) { Device(j, 0, 1)["device_id"] = 2; }),
     "layer_list[0].device_list[1].device_id: expected 1 (in order from 0), got 2"},
    {"MissingDeviceExpert", Vllm([](json& j) { Device(j, 1, 1).erase("device_expert"); }),
     "layer_list[1].device_list[1]: missing key \"device_expert\""},
    {"DeviceExpertNotArray", Vllm([](json& j) { Device(j, 1, 1)["device_expert"] = 1; }),
     "layer_list[1].device_list[1].device_expert: expected an array, got 1"},
    {"DeviceExpertEmpty", Vllm([](json& j) { Device(j, 0, 0)["device_expert"] = json::array(); }),
     "layer_list[0].device_list[0].device_expert: is empty"},
    {"SlotsDifferBetweenDevices", Vllm([](json& j) {
       Device(j, 1, 1)["device_expert"] = json::array({1, 0, 2});
     }),
     "layer_list[1].device_list[1].device_expert: has 3 slots, layer_list[0].device_list[0] has "
     "2; every device needs the same number of slots"},
    // vllm-ascend ids.
    {"FloatId", Vllm([](json& j) { Device(j, 0, 1)["device_expert"][0] = 2.0; }),
     "layer_list[0].device_list[1].device_expert[0]: expected an integer logical expert id, got "
     "2.0"},  // before: "got 2", which read as an integer
    {"StringId", Vllm([](json& j) { Device(j, 1, 0)["device_expert"][1] = "2"; }),
     "layer_list[1].device_list[0].device_expert[1]: expected an integer logical expert id, got "
     "\"2\""},
    {"NullId", Vllm([](json& j) { Device(j, 1, 0)["device_expert"][1] = nullptr; }),
     "layer_list[1].device_list[0].device_expert[1]: expected an integer logical expert id, got "
     "null"},
    {"NegativeId", Vllm([](json& j) { Device(j, 1, 1)["device_expert"][0] = -1; }),
     "layer_list[1].device_list[1].device_expert[0]: logical expert -1 is out of range [0, 4) (a "
     "layer has 4 physical slots)"},
    {"IdBeyondSlots", Vllm([](json& j) { Device(j, 0, 1)["device_expert"][1] = 300; }),
     "layer_list[0].device_list[1].device_expert[1]: logical expert 300 is out of range [0, 4) (a "
     "layer has 4 physical slots)"},
    {"IdBeyondGivenExperts", kVllm,
     "layer_list[0].device_list[1].device_expert[1]: logical expert 3 is out of range [0, 3)", 3},
    {"HugeId", Vllm([](json& j) { Device(j, 0, 0)["device_expert"][0] = 1ULL << 40; }),
     "layer_list[0].device_list[0].device_expert[0]: logical expert 1099511627776 is out of range "
     "[0, 4) (a layer has 4 physical slots)"},
    // Placement checks (ValidatePlacement), named by layer, rank and slot.
    {"DuplicateOnRank", Vllm([](json& j) {
       Device(j, 1, 1)["device_expert"] = {1, 1};
     }),
     "layer 1, rank 1: logical expert 1 is in both slot 0 and slot 1; a rank may hold at most one "
     "replica of an expert"},
    {"ExpertWithoutReplica", Vllm([](json& j) {
       Device(j, 1, 1)["device_expert"] = {1, 2};
     }),
     "layer 1: logical expert 0 has no replica on any rank"},
    {"GivenExpertsWithoutReplica", Vllm([](json& j) {
       Device(j, 0, 1)["device_expert"] = {2, 0};
       Device(j, 1, 0)["device_expert"] = {0, 2};
     }),
     "layer 0: logical expert 3 has no replica on any rank", 4},
    {"MoreExpertsThanSlots", kVllm, "placement has 4 slots per layer for 9 logical experts", 9},
    // SGLang.
    {"SglangMapNotArray", Sglang([](json& j) { j["physical_to_logical_map"] = 3; }),
     "physical_to_logical_map: expected an array, got 3"},
    {"SglangNoLayers", Sglang([](json& j) { j["physical_to_logical_map"] = json::array(); }),
     "physical_to_logical_map: has no layers"},
    {"SglangLayerNotArray", Sglang([](json& j) { j["physical_to_logical_map"][1] = "abc"; }),
     "physical_to_logical_map[1]: expected an array of logical expert ids, got \"abc\""},
    {"SglangLayerEmpty", Sglang([](json& j) { j["physical_to_logical_map"][0] = json::array(); }),
     "physical_to_logical_map[0]: is empty"},
    {"SglangRagged", Sglang([](json& j) { j["physical_to_logical_map"][1].erase(3); }),
     "physical_to_logical_map[1]: has 3 physical slots, physical_to_logical_map[0] has 4"},
    {"SglangRanksDoNotDivide", kSglang,
     "physical_to_logical_map[0]: 4 physical slots per layer cannot be split evenly over 3 ranks",
     -1, 3},
    {"SglangFloatId", Sglang([](json& j) { j["physical_to_logical_map"][1][2] = 1.5; }),
     "physical_to_logical_map[1][2]: expected an integer logical expert id, got 1.5"},
    {"SglangIdOutOfRange", Sglang([](json& j) { j["physical_to_logical_map"][1][2] = 9; }),
     "physical_to_logical_map[1][2]: logical expert 9 is out of range [0, 4)", 4},
    // Before: reported as 9223372036854775807, the value it saturated to.
    {"SglangIdPastInt64", Sglang([](json& j) {
       j["physical_to_logical_map"][1][2] = std::numeric_limits<uint64_t>::max();
     }),
     "physical_to_logical_map[1][2]: logical expert 18446744073709551615 is out of range"},
    {"SglangDuplicateOnRank", Sglang([](json& j) {
       j["physical_to_logical_map"][1] = {3, 2, 0, 0};
     }),
     "layer 1, rank 1: logical expert 0 is in both slot 0 and slot 1; a rank may hold at most one "
     "replica of an expert",
     -1, 2},
    {"SglangExpertWithoutReplica", Sglang([](json& j) { j["physical_to_logical_map"][0][3] = 0; }),
     "layer 0: logical expert 3 has no replica on any rank", 4},
};

INSTANTIATE_TEST_SUITE_P(Formats, BadMapTest, ::testing::ValuesIn(kBadMaps),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace eplb
