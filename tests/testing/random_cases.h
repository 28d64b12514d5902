// Random shapes, loads and placements for property tests. Deterministic in the seed; every test
// prints its seed on failure (SCOPED_TRACE) so a case can be replayed.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "eplb/placement.h"

namespace eplb::testing {

// A random valid shape: experts 1..64, ranks 1..16, slots so that R * S >= E, nodes dividing R.
Shape RandomShape(std::mt19937_64& rng, int max_layers = 4);
// A random shape with two slots per rank on one node: layers 1..max_layers, ranks 1..max_ranks,
// experts 2..2R (what swift's pair re-plan takes).
Shape RandomPairShape(std::mt19937_64& rng, int max_layers, int max_ranks);
// Skewed loads like MoE traffic: lognormal with a few hot experts; some zero entries.
LoadMatrix RandomLoad(std::mt19937_64& rng, const Shape& shape);
// A random valid placement: every expert once, the rest random replicas, no duplicates per rank.
Placement RandomPlacement(std::mt19937_64& rng, const Shape& shape);
// Directory of the real load statistics: EPLB_DATA_DIR when set, else the build's default (see
// tests/CMakeLists.txt); "" when absent (tests then GTEST_SKIP).
std::string DataDir();

}  // namespace eplb::testing
