// Balances a small load with swift, plans the transfers from the id-order placement and prints
// one line; exits 1 with the error otherwise.
#include <cstdio>

#include "eplb/algorithm.h"
#include "eplb/planner.h"

int main() {
  const eplb::Shape shape{.layers = 1, .experts = 4, .ranks = 2, .slots_per_rank = 3};
  eplb::LoadMatrix load(1, 4);
  const double counts[] = {20, 30, 50, 900};  // the id order replicates 0 and 1, not 3
  for (int e = 0; e < 4; ++e) load.row(0)[e] = counts[e];
  auto swift = eplb::MakeBalancer("swift");
  if (!swift.ok()) return std::fprintf(stderr, "%s\n", swift.status().ToString().c_str()), 1;
  auto next = (*swift)->Balance({&load, shape, nullptr});
  if (!next.ok()) return std::fprintf(stderr, "%s\n", next.status().ToString().c_str()), 1;
  auto plan = eplb::PlanTransfers(eplb::Placement::IdOrder(shape), next->placement, shape);
  if (!plan.ok()) return std::fprintf(stderr, "%s\n", plan.status().ToString().c_str()), 1;
  std::printf("balancedness %.4f, %zu copies\n", eplb::MeanBalancedness(load, next->placement),
              plan->copies.size());
  return 0;
}
