// Load statistics: the three formats, the dense/MoE row split, one test per malformed input
// (each message names the file and the place), and the real files when the data dir is present.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "eplb/formats.h"
#include "formats/scratch_dir.h"
#include "testing/random_cases.h"

namespace eplb {
namespace {

using testing::ScratchDir;

std::vector<double> Row(const LoadMatrix& m, int layer) {
  auto r = m.row(layer);
  return {r.begin(), r.end()};
}

TEST(LoadFileTest, ParsesSglangLogicalCountAndSplitsDenseRows) {
  StatusOr<LoadFile> f =
      ParseLoad(R"({"logical_count": [[0, 0.0, 0], [1.5, 2, 0], [0, 0, 0], [3, 0, 4e2]]})", "x");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->all.layers(), 4);
  EXPECT_EQ(f->all.experts(), 3);
  EXPECT_EQ(f->zero_rows, (std::vector<int>{0, 2}));
  EXPECT_EQ(f->moe_rows, (std::vector<int>{1, 3}));
  ASSERT_EQ(f->moe.layers(), 2);
  EXPECT_EQ(Row(f->moe, 0), (std::vector<double>{1.5, 2, 0}));
  EXPECT_EQ(Row(f->moe, 1), (std::vector<double>{3, 0, 400}));
  EXPECT_EQ(Row(f->all, 2), (std::vector<double>{0, 0, 0}));
}

TEST(LoadFileTest, ParsesCountsWithDeclaredSizesAndExtraKeys) {
  StatusOr<LoadFile> f = ParseLoad(
      R"({"num_experts": 2, "counts": [[1, 2], [3, 4], [5, 6]], "num_layers": 3, "note": "x"})",
      "x");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->all.layers(), 3);
  EXPECT_TRUE(f->zero_rows.empty());
  EXPECT_EQ(f->moe_rows, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(Row(f->moe, 2), (std::vector<double>{5, 6}));
}

TEST(LoadFileTest, ParsesCountsWithoutDeclaredSizes) {
  StatusOr<LoadFile> f = ParseLoad(R"({"counts": [[1, 2]]})", "x");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(Row(f->all, 0), (std::vector<double>{1, 2}));
}

TEST(LoadFileTest, ParsesCsvWithCommentsHeaderBlankLinesAndCrLf) {
  const std::string csv =
      "\xEF\xBB\xBF# recorded on 8 ranks\r\n"
      "e0, e1 ,e2\r\n"
      "\r\n"
      "0,0,0\r\n"
      "  # a comment after the header\n"
      "1, 2.5 ,3e1\n"
      "\n"
      "4,5,6";
  StatusOr<LoadFile> f = ParseLoad(csv, "x.csv");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->all.layers(), 3);
  EXPECT_EQ(f->zero_rows, (std::vector<int>{0}));
  EXPECT_EQ(f->moe_rows, (std::vector<int>{1, 2}));
  EXPECT_EQ(Row(f->moe, 0), (std::vector<double>{1, 2.5, 30}));
  EXPECT_EQ(Row(f->moe, 1), (std::vector<double>{4, 5, 6}));
}

TEST(LoadFileTest, ParsesCsvWithoutHeader) {
  StatusOr<LoadFile> f = ParseLoad("1,2\n3,4\n", "x.csv");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->all.layers(), 2);
  EXPECT_EQ(Row(f->all, 0), (std::vector<double>{1, 2}));
}

// Numbers too small for a double read as 0 in CSV as in JSON (before: CSV took them for
// infinity and refused them); too large ones are refused in both.
TEST(LoadFileTest, CsvReadsUnderflowAsZeroLikeJson) {
  const std::string tiny = "0." + std::string(400, '0') + "1";
  for (const std::string& text :
       std::vector<std::string>{"1e-400,2\n3,4\n", "1E-400,2\n3,4\n", tiny + ",2\n3,4\n"}) {
    StatusOr<LoadFile> csv = ParseLoad(text, "x.csv");
    ASSERT_TRUE(csv.ok()) << csv.status().ToString();
    EXPECT_EQ(Row(csv->all, 0), (std::vector<double>{0, 2}));
  }
  StatusOr<LoadFile> json = ParseLoad(R"({"counts": [[1e-400, 2], [3, 4]]})", "x.json");
  ASSERT_TRUE(json.ok()) << json.status().ToString();
  EXPECT_EQ(Row(json->all, 0), (std::vector<double>{0, 2}));
  const std::string huge = "1" + std::string(400, '0');
  StatusOr<LoadFile> big = ParseLoad(huge + ",2\n3,4\n", "x.csv");
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.status().message().find("expected a non-negative finite number"),
            std::string::npos);
}

TEST(LoadFileTest, ReadLoadFileUsesThePathAsOrigin) {
  ScratchDir dir;
  dir.Put("load.json", R"({"logical_count": [[1, 2]]})");
  StatusOr<LoadFile> f = ReadLoadFile(dir / "load.json");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(Row(f->moe, 0), (std::vector<double>{1, 2}));

  dir.Put("bad.json", R"({"logical_count": [[1, -2]]})");
  StatusOr<LoadFile> bad = ReadLoadFile(dir / "bad.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(
      bad.status().message(),
      dir / "bad.json" + ": logical_count[0][1]: expected a non-negative finite number, got -2");
}

TEST(LoadFileTest, ReadLoadFileReportsMissingFileDirectoryAndEmptyFile) {
  ScratchDir dir;
  StatusOr<LoadFile> missing = ReadLoadFile(dir / "missing.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            dir / "missing.json" + ": cannot open: No such file or directory");

  StatusOr<LoadFile> directory = ReadLoadFile(dir.path().string());
  ASSERT_FALSE(directory.ok());
  EXPECT_EQ(directory.status().message(), dir.path().string() + ": cannot read: Is a directory");

  dir.Put("empty.json", "");
  StatusOr<LoadFile> empty = ReadLoadFile(dir / "empty.json");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().message(), dir / "empty.json" + ": is empty");
}

// Random loads written as SGLang JSON, as "counts" JSON and as CSV all read back exactly.
TEST(LoadFileTest, RandomLoadsReadBackFromEveryFormat) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE(fmt::format("seed {}", seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng, 6);
    LoadMatrix load = testing::RandomLoad(rng, shape);
    load.at(0, 0) += 1;  // at least one row carries load
    std::vector<std::string> rows;
    std::string csv = "# random\n";
    for (int e = 0; e < load.experts(); ++e) csv += fmt::format("{}e{}", e > 0 ? "," : "", e);
    csv += "\n";  // a header: one name per column
    for (int l = 0; l < load.layers(); ++l) {
      rows.push_back(fmt::format("[{}]", fmt::join(load.row(l), ", ")));
      csv += fmt::format("{}\n", fmt::join(load.row(l), ","));
    }
    const std::string json_rows = fmt::format("[{}]", fmt::join(rows, ", "));
    for (const std::string& text :
         {fmt::format(R"({{"logical_count": {}}})", json_rows),
          fmt::format(R"({{"counts": {}, "num_layers": {}, "num_experts": {}}})", json_rows,
                      shape.layers, shape.experts),
          csv}) {
      StatusOr<LoadFile> f = ParseLoad(text, "random");
      ASSERT_TRUE(f.ok()) << f.status().ToString();
      EXPECT_EQ(f->all.values(), load.values());
      EXPECT_EQ(f->zero_rows, load.ZeroRows());
      EXPECT_EQ(f->moe.layers() + static_cast<int>(f->zero_rows.size()), load.layers());
    }
  }
}

// ---- malformed input: one case per error path ----

struct BadLoad {
  std::string name;
  std::string text;
  std::string message;  // the whole expected message, after "load.json: "
};

class BadLoadTest : public ::testing::TestWithParam<BadLoad> {};

TEST_P(BadLoadTest, ReportsFileAndPlaceOnOneLine) {
  const BadLoad& c = GetParam();
  StatusOr<LoadFile> f = ParseLoad(c.text, "load.json");
  ASSERT_FALSE(f.ok()) << "accepted: " << c.text;
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(f.status().message(), "load.json: " + c.message);
  EXPECT_EQ(f.status().message().find('\n'), std::string::npos);
}

const BadLoad kBadLoads[] = {
    {"Empty", "", "is empty"},
    {"OnlyWhitespace", " \n\t\n", "is empty"},
    {"NotJson", "{\"logical_count\": [[1, 2]\n",
     "line 2, column 1: not valid JSON: "
     "syntax error while parsing array - unexpected end of input; expected ']'"},
    // The place is the last character read: a literal cut short by a line break is on its line.
    {"LiteralCutByLineBreak", "{\"counts\": [[1, tru\n]]}",
     "line 1, column 20: not valid JSON: "
     "syntax error while parsing value - invalid literal; last read: '1, tru<U+000A>'"},
    {"JsonNumberOverflow", "{\"logical_count\":\n [[1, 1e999]]}",
     "line 2, column 11: not valid JSON: number overflow parsing '1e999'"},
    {"TopLevelArray", "[[1, 2]]",
     "expected a JSON object with key \"logical_count\" or \"counts\", got an array"},
    {"NeitherKey", R"({"load": [[1]]})",
     "expected exactly one of the keys \"logical_count\" (SGLang) and \"counts\", found neither"},
    {"DuplicateKey", R"({"counts": [[1, 2]], "counts": [[3, 4]]})",
     "key \"counts\" appears twice in one object"},
    {"BothKeys", R"({"logical_count": [[1]], "counts": [[1]]})",
     "expected exactly one of the keys \"logical_count\" (SGLang) and \"counts\", found both"},
    {"MatrixNotArray", R"({"logical_count": 5})",
     "logical_count: expected an array of rows, got 5"},
    {"NoRows", R"({"counts": []})", "counts: has no rows"},
    {"RowNotArray", R"({"logical_count": [[1, 2], {"a": 1}]})",
     "logical_count[1]: expected an array of numbers, got an object"},
    {"EmptyRow", R"({"counts": [[]]})", "counts[0]: row is empty"},
    {"RaggedRow", R"({"logical_count": [[1, 2], [3, 4], [5]]})",
     "logical_count[2]: has 1 values, logical_count[0] has 2"},
    {"NegativeInt", R"({"logical_count": [[1, 2], [3, -3]]})",
     "logical_count[1][1]: expected a non-negative finite number, got -3"},
    {"NegativeFloat", R"({"counts": [[1, -0.5]]})",
     "counts[0][1]: expected a non-negative finite number, got -0.5"},
    {"StringValue", R"({"counts": [[1, "7"]]})",
     "counts[0][1]: expected a non-negative finite number, got \"7\""},
    {"NullValue", R"({"counts": [[null, 1]]})",
     "counts[0][0]: expected a non-negative finite number, got null"},
    {"BoolValue", R"({"counts": [[1, true]]})",
     "counts[0][1]: expected a non-negative finite number, got true"},
    {"NestedValue", R"({"counts": [[1, [2]]]})",
     "counts[0][1]: expected a non-negative finite number, got an array"},
    {"JsonRowSumOverflow", R"({"counts": [[1, 2], [1e308, 1e308]]})",
     "counts[1]: the values sum to more than the largest double (1.79769e+308); scale them down"},
    {"NumLayersMismatch", R"({"counts": [[1], [2]], "num_layers": 3})",
     "num_layers: declares 3, but counts has 2 rows"},
    {"NumExpertsMismatch", R"({"counts": [[1, 2]], "num_experts": 5})",
     "num_experts: declares 5, but counts[0] has 2 values"},
    {"NumLayersPastInt64", R"({"counts": [[1]], "num_layers": 18446744073709551615})",
     "num_layers: declares 18446744073709551615, but counts has 1 rows"},
    {"NumLayersNotInteger", R"({"counts": [[1]], "num_layers": "1"})",
     "num_layers: expected a non-negative integer, got \"1\""},
    {"NumExpertsNegative", R"({"counts": [[1]], "num_experts": -1})",
     "num_experts: expected a non-negative integer, got -1"},
    {"JsonAllRowsZero", R"({"logical_count": [[0, 0], [0.0, 0]]})",
     "all 2 rows are zero; no layer carries any load"},
    {"CsvNan", "1,2\n3,nan\n", "line 2, field 2: expected a non-negative finite number, got nan"},
    {"CsvInf", "# c\n1,inf\n", "line 2, field 2: expected a non-negative finite number, got inf"},
    {"CsvOverflow", "1,1e999\n",
     "line 1, field 2: expected a non-negative finite number, got 1e999"},
    {"CsvNegative", "h1,h2\n1,2\n-3,4\n",
     "line 3, field 1: expected a non-negative finite number, got -3"},
    {"CsvText", "1,2\n3,x4\n",
     "line 2, field 2: expected a non-negative finite number, got \"x4\""},
    {"CsvEmptyField", "1,,2\n", "line 1, field 2: expected a non-negative finite number, got \"\""},
    {"CsvTrailingComma", "1,2,\n",
     "line 1, field 3: expected a non-negative finite number, got \"\""},
    {"CsvSecondHeader", "a,b\nc,d\n",
     "line 2, field 1: expected a non-negative finite number, got \"c\""},
    {"CsvRowSumOverflow", "1,2\n# c\n1.7e308,1e308\n",
     "line 3: the values sum to more than the largest double (1.79769e+308); scale them down"},
    {"CsvRagged", "1,2\n\n3\n", "line 3: has 1 values, the first row (line 1) has 2"},
    {"CsvNoRows", "# only\nexpert_a,expert_b\n\n",
     "line 2: no number in it, and no row of numbers after it (a CSV load is one row of "
     "comma-separated numbers per layer, after an optional header)"},
    {"CsvOnlyComments", "# only\n\n", "no data rows (only blank or comment lines)"},
    // Found in review: these were accepted (a row dropped as a header, a header of another
    // width) or said "no data rows".
    {"CsvMissingValueMarkers", "N/A,N/A\n1,2\n",
     "line 1, field 1: expected a non-negative finite number, got \"N/A\""},
    {"CsvHeaderOfAnotherWidth", "x\n1,2,3,4\n", "line 1: the header has 1 fields, the rows 4"},
    {"CsvSemicolons", "1;2;3;4\n",
     "line 1: no number in it, and no row of numbers after it (a CSV load is one row of "
     "comma-separated numbers per layer, after an optional header)"},
    {"CsvLongFieldCutAndEscaped", "1,2\n3,abcdefghijklmnopqrstuvwxyz0123456789ABCDEF\x01\n",
     "line 2, field 2: expected a non-negative finite number, got "
     "\"abcdefghijklmnopqrstuvwxyz0123456789...\""},
    {"CsvControlByteEscaped",
     "1,2\n3,a\x01"
     "b\n",
     "line 2, field 2: expected a non-negative finite number, got \"a\\x01b\""},
    {"CsvAllRowsZero", "0,0\n0,0\n0,0\n", "all 3 rows are zero; no layer carries any load"},
};

INSTANTIATE_TEST_SUITE_P(Formats, BadLoadTest, ::testing::ValuesIn(kBadLoads),
                         [](const auto& info) { return info.param.name; });

// ---- the real statistics (skipped without the data dir) ----

std::string DataFile(const std::string& relative) {
  const std::string dir = testing::DataDir();
  if (dir.empty()) return "";
  const std::string path = dir + "/" + relative;
  return std::filesystem::exists(path) ? path : "";
}

TEST(LoadFileRealDataTest, DeepSeekV3HasThreeDenseRowsAnd58MoeRows) {
  const std::string dir = DataFile("deepseek-v3");
  if (dir.empty()) GTEST_SKIP() << "no deepseek-v3 load statistics (set EPLB_DATA_DIR)";
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().string());
    ++files;
    StatusOr<LoadFile> f = ReadLoadFile(entry.path().string());
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ(f->all.layers(), 61);
    EXPECT_EQ(f->all.experts(), 256);
    EXPECT_EQ(f->zero_rows, (std::vector<int>{0, 1, 2}));
    ASSERT_EQ(f->moe.layers(), 58);
    EXPECT_EQ(f->moe_rows.front(), 3);
    EXPECT_EQ(f->moe_rows.back(), 60);
    EXPECT_EQ(Row(f->moe, 0), Row(f->all, 3));
  }
  EXPECT_EQ(files, 12);
}

TEST(LoadFileRealDataTest, Qwen3Is94By128WithNoDenseRows) {
  const std::string path = DataFile("qwen/qwen3-235b-a22b_prover-512.json");
  if (path.empty()) GTEST_SKIP() << "no qwen3 load statistics (set EPLB_DATA_DIR)";
  StatusOr<LoadFile> f = ReadLoadFile(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->all.layers(), 94);
  EXPECT_EQ(f->all.experts(), 128);
  EXPECT_TRUE(f->zero_rows.empty());
  EXPECT_EQ(f->moe.layers(), 94);
  // Every row sums to top_k x tokens (README of the data set).
  for (int l = 0; l < f->moe.layers(); ++l) {
    double sum = 0;
    for (double v : f->moe.row(l)) sum += v;
    EXPECT_EQ(sum, 33308480.0) << "row " << l;
  }
}

TEST(LoadFileRealDataTest, Qwen2Is28By64) {
  for (const char* name :
       {"qwen/qwen2-57b-a14b_sharegpt.json", "qwen/qwen2-57b-a14b_multidomain.json"}) {
    const std::string path = DataFile(name);
    if (path.empty()) GTEST_SKIP() << "no " << name << " (set EPLB_DATA_DIR)";
    StatusOr<LoadFile> f = ReadLoadFile(path);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    EXPECT_EQ(f->moe.layers(), 28);
    EXPECT_EQ(f->moe.experts(), 64);
  }
}

}  // namespace
}  // namespace eplb
