// The MPI communicator, run by ctest as `mpirun -np 4 mpi_comm_test`. Every process runs the same
// tests in the same order and checks its own results; at the end the processes agree on whether
// any of them failed, so that every process (and so mpirun) exits non-zero after a failure
// anywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "eplb/comm.h"

namespace eplb {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kLong(20000);

Communicator* g_comm = nullptr;  // set by main before any test runs

std::vector<std::byte> Payload(uint64_t seed, int src, int dst, int index, std::size_t bytes) {
  std::mt19937_64 rng(seed ^ (static_cast<uint64_t>(src) << 40) ^
                      (static_cast<uint64_t>(dst) << 20) ^ static_cast<uint64_t>(index));
  std::vector<std::byte> out(bytes);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

std::size_t PayloadSize(uint64_t seed, int src, int dst, int index) {
  std::mt19937_64 rng(seed * 31 + static_cast<uint64_t>(src * 1000003 + dst * 1009 + index));
  const uint64_t kind = rng() % 10;
  if (kind == 0) return 0;
  if (kind < 8) return 1 + rng() % 256;
  return 1 + rng() % 200000;  // above OpenMPI's eager limit: the rendezvous protocol too
}

void Barrier(Communicator& comm) {
  std::vector<std::byte> one(1), all(comm.size());
  ASSERT_TRUE(comm.AllGather(one, all, kLong).ok());
}

TEST(MpiComm, RankAndSize) {
  Communicator& comm = *g_comm;
  EXPECT_EQ(comm.size(), 4);
  EXPECT_GE(comm.rank(), 0);
  EXPECT_LT(comm.rank(), comm.size());
  EXPECT_STREQ(comm.backend(), "mpi");
}

TEST(MpiComm, RingExchange) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int next = (comm.rank() + 1) % n;
  const int prev = (comm.rank() + n - 1) % n;
  for (int round = 0; round < 100; ++round) {
    std::vector<int64_t> out = {comm.rank(), round};
    std::vector<int64_t> in(2, -1);
    auto recv = comm.IRecv(prev, 7, std::as_writable_bytes(std::span(in)));
    auto send = comm.ISend(next, 7, std::as_bytes(std::span(out)));
    ASSERT_TRUE(recv.ok() && send.ok());
    out.assign(2, -7);  // the send copied its input
    ASSERT_TRUE(comm.Wait(*send, kLong).ok());
    Status s = comm.Wait(*recv, kLong);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(in, (std::vector<int64_t>{prev, round}));
  }
}

TEST(MpiComm, ManyMessagesWithRandomSizesByteForByte) {
  constexpr uint64_t kSeed = 77;
  constexpr int kPerPair = 8;
  SCOPED_TRACE("seed " + std::to_string(kSeed));
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  std::vector<std::vector<std::byte>> buffers;
  std::vector<std::pair<int, int>> origin;
  for (int src = 0; src < n; ++src) {
    for (int i = 0; i < kPerPair; ++i) {
      buffers.emplace_back(PayloadSize(kSeed, src, me, i));
      origin.emplace_back(src, i);
    }
  }
  std::vector<Request> receives;
  for (std::size_t k = 0; k < buffers.size(); ++k) {
    auto r = comm.IRecv(origin[k].first, 3, buffers[k]);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    receives.push_back(std::move(*r));
  }
  std::vector<Request> sends;
  for (int i = 0; i < kPerPair; ++i) {
    for (int d = 0; d < n; ++d) {
      const int dst = (me + d) % n;
      std::vector<std::byte> data = Payload(kSeed, me, dst, i, PayloadSize(kSeed, me, dst, i));
      auto s = comm.ISend(dst, 3, data);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      sends.push_back(std::move(*s));
    }
  }
  Status s = comm.WaitAll(receives, kLong);
  ASSERT_TRUE(s.ok()) << s.ToString();
  s = comm.WaitAll(sends, kLong);
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (std::size_t k = 0; k < buffers.size(); ++k) {
    const auto [src, i] = origin[k];
    EXPECT_EQ(buffers[k], Payload(kSeed, src, me, i, buffers[k].size()))
        << "rank " << me << " message " << i << " from rank " << src;
  }
}

TEST(MpiComm, OutOfOrderPostingAndWaiting) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  const int peer = n - 1 - me;
  constexpr int kTags = 4;
  constexpr int kPerTag = 4;
  std::vector<int32_t> got(kTags * kPerTag, -1);
  std::vector<Request> receives;
  for (int tag = kTags - 1; tag >= 0; --tag) {
    for (int k = 0; k < kPerTag; ++k) {
      auto r = comm.IRecv(peer, 100 + tag,
                          std::as_writable_bytes(std::span(&got[tag * kPerTag + k], 1)));
      ASSERT_TRUE(r.ok());
      receives.push_back(std::move(*r));
    }
  }
  std::vector<Request> sends;
  for (int tag = 0; tag < kTags; ++tag) {
    for (int k = 0; k < kPerTag; ++k) {
      const int32_t value = me * 10000 + tag * 100 + k;
      auto s = comm.ISend(peer, 100 + tag, std::as_bytes(std::span(&value, 1)));
      ASSERT_TRUE(s.ok());
      sends.push_back(std::move(*s));
    }
  }
  for (auto it = receives.rbegin(); it != receives.rend(); ++it) {
    Status s = comm.Wait(*it, kLong);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  ASSERT_TRUE(comm.WaitAll(sends, kLong).ok());
  for (int tag = 0; tag < kTags; ++tag) {
    for (int k = 0; k < kPerTag; ++k) {
      EXPECT_EQ(got[tag * kPerTag + k], peer * 10000 + tag * 100 + k) << "tag " << tag;
    }
  }
}

TEST(MpiComm, AllGatherBlockingAndNonBlocking) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  for (int round = 0; round < 100; ++round) {
    const std::size_t bytes = static_cast<std::size_t>(round % 13);
    std::vector<std::byte> mine(bytes);
    for (std::size_t i = 0; i < bytes; ++i) mine[i] = static_cast<std::byte>(me * 31 + round + i);
    std::vector<std::byte> all(bytes * n, std::byte{0xee});
    if (round % 2 == 0) {
      Status s = comm.AllGather(mine, all, kLong);
      ASSERT_TRUE(s.ok()) << s.ToString();
    } else {
      auto r = comm.IAllGather(mine, all);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      mine.assign(bytes, std::byte{0});
      ASSERT_TRUE(comm.Wait(*r, kLong).ok());
    }
    for (int src = 0; src < n; ++src) {
      for (std::size_t i = 0; i < bytes; ++i) {
        ASSERT_EQ(all[src * bytes + i], static_cast<std::byte>(src * 31 + round + i))
            << "round " << round << " from " << src;
      }
    }
  }
}

TEST(MpiComm, AllReduceInt64AndDouble) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  for (int round = 0; round < 40; ++round) {
    const int len = 1 + round % 5;
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kMax}) {
      SCOPED_TRACE(std::string(ReduceOpName(op)) + " round " + std::to_string(round));
      std::vector<int64_t> in(len), out(len, -1);
      std::vector<double> din(len), dout(len, -1);
      for (int i = 0; i < len; ++i) {
        in[i] = (me - 2) * 1000003LL + i * round;
        din[i] = (me - 2) * 0.5 + i;
      }
      if (round % 2 == 0) {
        ASSERT_TRUE(comm.AllReduce(in, out, op, kLong).ok());
        ASSERT_TRUE(comm.AllReduce(din, dout, op, kLong).ok());
      } else {
        auto a = comm.IAllReduce(in, out, op);
        auto b = comm.IAllReduce(din, dout, op);
        ASSERT_TRUE(a.ok() && b.ok());
        ASSERT_TRUE(comm.Wait(*b, kLong).ok());
        ASSERT_TRUE(comm.Wait(*a, kLong).ok());
      }
      for (int i = 0; i < len; ++i) {
        int64_t want = 0;
        double dwant = 0;
        for (int r = 0; r < n; ++r) {
          const int64_t v = (r - 2) * 1000003LL + i * round;
          const double dv = (r - 2) * 0.5 + i;
          if (r == 0) {
            want = v;
            dwant = dv;
          } else if (op == ReduceOp::kSum) {
            want += v;
            dwant += dv;
          } else if (op == ReduceOp::kMin) {
            want = std::min(want, v);
            dwant = std::min(dwant, dv);
          } else {
            want = std::max(want, v);
            dwant = std::max(dwant, dv);
          }
        }
        ASSERT_EQ(out[i], want);
        ASSERT_EQ(dout[i], dwant);
      }
    }
  }
}

TEST(MpiComm, NonBlockingCollectivesTestedOneStepLater) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  constexpr int kSteps = 200;
  struct InFlight {
    int step;
    std::vector<int64_t> load;
    std::vector<int64_t> gathered;
    int64_t mine;
    int64_t total;
    Request gather;
    Request reduce;
  };
  std::vector<std::unique_ptr<InFlight>> pending;
  for (int step = 0; step < kSteps; ++step) {
    for (auto it = pending.begin(); it != pending.end();) {
      InFlight& f = **it;
      auto g = comm.Test(f.gather);
      auto r = comm.Test(f.reduce);
      ASSERT_TRUE(g.ok() && r.ok()) << g.status().ToString() << r.status().ToString();
      if (!*g || !*r) {
        ++it;
        continue;
      }
      for (int src = 0; src < n; ++src) {
        ASSERT_EQ(f.gathered[src * 2], src);
        ASSERT_EQ(f.gathered[src * 2 + 1], f.step * 7 + src);
      }
      ASSERT_EQ(f.total, int64_t{n} * f.step);
      it = pending.erase(it);
    }
    // Every rank starts one pair per step whatever its Tests said, so the sequences match.
    auto f = std::make_unique<InFlight>();
    f->step = step;
    f->load = {me, step * 7 + me};
    f->gathered.assign(2 * n, -1);
    f->mine = step;
    auto g = comm.IAllGather(std::as_bytes(std::span(f->load)),
                             std::as_writable_bytes(std::span(f->gathered)));
    auto r = comm.IAllReduce(std::span<const int64_t>(&f->mine, 1), std::span(&f->total, 1),
                             ReduceOp::kSum);
    ASSERT_TRUE(g.ok() && r.ok());
    f->gather = std::move(*g);
    f->reduce = std::move(*r);
    pending.push_back(std::move(f));
  }
  for (auto& f : pending) {
    ASSERT_TRUE(comm.Wait(f->gather, kLong).ok());
    ASSERT_TRUE(comm.Wait(f->reduce, kLong).ok());
  }
}

TEST(MpiComm, WaitOnAReceiveWithoutSenderTimesOut) {
  Communicator& comm = *g_comm;
  const int peer = (comm.rank() + 1) % comm.size();
  int64_t value = 0;
  auto r = comm.IRecv(peer, 999, std::as_writable_bytes(std::span(&value, 1)));
  ASSERT_TRUE(r.ok());
  const auto start = std::chrono::steady_clock::now();
  Status s = comm.Wait(*r, milliseconds(30));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_NE(s.message().find("tag 999"), std::string::npos) << s.message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  auto t = comm.Test(*r);
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(*t);
  r->reset();  // cancelled: a later message with tag 999 goes to the next receive
  Barrier(comm);
  const int64_t v = comm.rank();
  const int prev = (comm.rank() + comm.size() - 1) % comm.size();
  auto recv = comm.IRecv(peer, 999, std::as_writable_bytes(std::span(&value, 1)));
  ASSERT_TRUE(recv.ok());
  ASSERT_TRUE(comm.Send(prev, 999, std::as_bytes(std::span(&v, 1)), kLong).ok());
  ASSERT_TRUE(comm.Wait(*recv, kLong).ok());
  EXPECT_EQ(value, peer);
}

TEST(MpiComm, SizeMismatchFailsTheReceive) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  const int next = (me + 1) % n;
  const int prev = (me + n - 1) % n;
  const int64_t big[2] = {1, 2};
  auto send = comm.ISend(next, 5, std::as_bytes(std::span(big)));
  ASSERT_TRUE(send.ok());
  int64_t small = 0;
  Status s = comm.Recv(prev, 5, std::as_writable_bytes(std::span(&small, 1)), kLong);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  ASSERT_TRUE(comm.Wait(*send, kLong).ok());
  Barrier(comm);
}

// A process whose blocking collective timed out keeps its place: the others complete it, and the
// next collective matches on every process.
TEST(MpiComm, TimedOutCollectiveKeepsTheSequence) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int64_t me = comm.rank();
  std::vector<int64_t> all(n, -1);
  if (me == 0) {
    Status s = comm.AllGather(std::as_bytes(std::span(&me, 1)),
                              std::as_writable_bytes(std::span(all)), milliseconds(1));
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  } else {
    std::this_thread::sleep_for(milliseconds(300));
    ASSERT_TRUE(comm.AllGather(std::as_bytes(std::span(&me, 1)),
                               std::as_writable_bytes(std::span(all)), kLong)
                    .ok());
    for (int r = 0; r < n; ++r) EXPECT_EQ(all[r], r);
  }
  const int64_t second = me * 10;
  ASSERT_TRUE(comm.AllGather(std::as_bytes(std::span(&second, 1)),
                             std::as_writable_bytes(std::span(all)), kLong)
                  .ok());
  for (int r = 0; r < n; ++r) EXPECT_EQ(all[r], r * 10);
}

TEST(MpiComm, ThreadsShareTheCommunicator) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int lane = 0; lane < 2; ++lane) {
    threads.emplace_back([&, lane] {
      const int next = (me + 1) % n;
      const int prev = (me + n - 1) % n;
      for (int i = 0; i < 50; ++i) {
        const int64_t out = me * 1000000 + lane * 1000 + i;
        int64_t in = -1;
        auto recv = comm.IRecv(prev, 200 + lane, std::as_writable_bytes(std::span(&in, 1)));
        if (!recv.ok() ||
            !comm.Send(next, 200 + lane, std::as_bytes(std::span(&out, 1)), kLong).ok() ||
            !comm.Wait(*recv, kLong).ok() || in != prev * 1000000 + lane * 1000 + i) {
          ++failures;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(MpiComm, SecondCommunicatorAndAbort) {
  int argc = 0;
  char** argv = nullptr;
  auto second = MakeMpiCommunicator(&argc, &argv);  // MPI is initialised: just a new duplicate
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  Communicator& comm = **second;
  EXPECT_EQ(comm.rank(), g_comm->rank());
  int64_t v = 0;
  auto r = comm.IRecv((comm.rank() + 1) % comm.size(), 1, std::as_writable_bytes(std::span(&v, 1)));
  ASSERT_TRUE(r.ok());
  comm.Abort("test abort");
  Status s = comm.Wait(*r, kLong);
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_NE(s.message().find("test abort"), std::string::npos) << s.message();
  EXPECT_EQ(comm.ISend(0, 1, std::as_bytes(std::span(&v, 1))).status().code(),
            StatusCode::kAborted);
  r->reset();
  Barrier(*g_comm);
}

}  // namespace
}  // namespace eplb

int main(int argc, char** argv) {
  auto comm = eplb::MakeMpiCommunicator(&argc, &argv);
  if (!comm.ok()) {
    std::fprintf(stderr, "mpi_comm_test: %s\n", comm.status().ToString().c_str());
    return 2;
  }
  eplb::g_comm = comm->get();
  ::testing::InitGoogleTest(&argc, argv);
  const int local = RUN_ALL_TESTS();
  // Every process learns whether any process failed.
  const int64_t failed = local != 0 ? 1 : 0;
  int64_t any_failed = 1;
  eplb::Status s =
      (*comm)->AllReduce(std::span<const int64_t>(&failed, 1), std::span<int64_t>(&any_failed, 1),
                         eplb::ReduceOp::kMax, std::chrono::seconds(30));
  if (!s.ok()) std::fprintf(stderr, "mpi_comm_test: %s\n", s.ToString().c_str());
  const int rank = (*comm)->rank();
  comm->reset();  // finalises MPI
  if (!s.ok() || any_failed != 0) {
    std::fprintf(stderr, "mpi_comm_test: rank %d: a test failed on %s\n", rank,
                 local != 0 ? "this rank" : "another rank");
    return 1;
  }
  return 0;
}
