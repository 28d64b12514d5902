// The in-process communicator: worlds of 4 and 8 ranks, each rank a thread.
#include "eplb/comm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "testing/comm_checks.h"

namespace eplb {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kLong = testing::kCommWait;

// Runs `body(comm)` on one thread per rank of a fresh world of `size` ranks.
void RunWorld(int size, const std::function<void(Communicator&)>& body) {
  std::vector<std::unique_ptr<Communicator>> world = MakeInProcessWorld(size);
  ASSERT_EQ(world.size(), static_cast<std::size_t>(size));
  std::vector<std::thread> threads;
  threads.reserve(size);
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&body, comm = world[r].get()] { body(*comm); });
  }
  for (auto& t : threads) t.join();
}

class InProcessTest : public ::testing::TestWithParam<int> {};

TEST_P(InProcessTest, RanksAndSize) {
  const int n = GetParam();
  auto world = MakeInProcessWorld(n);
  ASSERT_EQ(world.size(), static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(world[r]->rank(), r);
    EXPECT_EQ(world[r]->size(), n);
    EXPECT_STREQ(world[r]->backend(), "in-process");
  }
  EXPECT_TRUE(MakeInProcessWorld(0).empty());
}

TEST_P(InProcessTest, RingExchange) {
  RunWorld(GetParam(), [](Communicator& comm) { testing::CheckRingExchange(comm, 200); });
}

TEST_P(InProcessTest, ManyMessagesWithRandomSizesByteForByte) {
  RunWorld(GetParam(), [](Communicator& comm) {
    testing::CheckManyMessagesByteForByte(comm, 20240611, 12, 40000);
  });
}

TEST_P(InProcessTest, OutOfOrderPostingAndWaiting) {
  RunWorld(GetParam(), testing::CheckOutOfOrderPostingAndWaiting);
}

TEST_P(InProcessTest, DiscardedTagDropsMessages) {
  RunWorld(GetParam(), testing::CheckDiscardedTagDropsMessages);
}

TEST_P(InProcessTest, TestPollsUntilTheMessageArrives) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    if (comm.rank() == 0) {
      std::vector<int64_t> got(n - 1, 0);
      std::vector<Request> receives;
      for (int src = 1; src < n; ++src) {
        auto r = comm.IRecv(src, 11, std::as_writable_bytes(std::span(&got[src - 1], 1)));
        ASSERT_TRUE(r.ok());
        receives.push_back(std::move(*r));
      }
      // Nobody sends before rank 0 says so, so the first Test must report "pending".
      auto first = comm.Test(receives[0]);
      ASSERT_TRUE(first.ok());
      EXPECT_FALSE(*first);
      std::vector<std::byte> go(1), all(n);
      ASSERT_TRUE(comm.AllGather(go, all, kLong).ok());
      std::size_t done = 0;
      std::vector<bool> finished(receives.size(), false);
      while (done < receives.size()) {
        for (std::size_t k = 0; k < receives.size(); ++k) {
          if (finished[k]) continue;
          auto t = comm.Test(receives[k]);
          ASSERT_TRUE(t.ok()) << t.status().ToString();
          if (*t) {
            finished[k] = true;
            ++done;
          }
        }
        std::this_thread::yield();
      }
      for (int src = 1; src < n; ++src) EXPECT_EQ(got[src - 1], src * src);
      // A finished request keeps reporting its outcome.
      auto again = comm.Test(receives[0]);
      ASSERT_TRUE(again.ok());
      EXPECT_TRUE(*again);
      EXPECT_TRUE(comm.Wait(receives[0], milliseconds(0)).ok());
    } else {
      std::vector<std::byte> go(1), all(n);
      ASSERT_TRUE(comm.AllGather(go, all, kLong).ok());
      const int64_t value = int64_t{comm.rank()} * comm.rank();
      ASSERT_TRUE(comm.Send(0, 11, std::as_bytes(std::span(&value, 1)), kLong).ok());
    }
  });
}

TEST_P(InProcessTest, AllGatherBlockingAndNonBlocking) {
  RunWorld(GetParam(), [](Communicator& comm) { testing::CheckAllGather(comm, 300); });
}

TEST_P(InProcessTest, AllReduceInt64AndDouble) {
  RunWorld(GetParam(), [](Communicator& comm) { testing::CheckAllReduce(comm, 150); });
}

TEST_P(InProcessTest, AllReduceInPlace) {
  RunWorld(GetParam(), [](Communicator& comm) {
    std::vector<int64_t> v = {comm.rank(), 1};
    ASSERT_TRUE(comm.AllReduce(v, v, ReduceOp::kSum, kLong).ok());
    const int64_t n = comm.size();
    EXPECT_EQ(v, (std::vector<int64_t>{n * (n - 1) / 2, n}));
  });
}

// The runtime's pattern: start a small collective at step k, Test it at step k + 1 without
// waiting, so several are in flight at once.
TEST_P(InProcessTest, NonBlockingCollectivesTestedOneStepLater) {
  RunWorld(GetParam(), [](Communicator& comm) {
    testing::CheckNonBlockingCollectivesTestedOneStepLater(comm, 400);
  });
}

TEST_P(InProcessTest, WaitOnAReceiveWithoutSenderTimesOut) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int peer = (comm.rank() + 1) % comm.size();
    int64_t value = 0;
    auto r = comm.IRecv(peer, 99, std::as_writable_bytes(std::span(&value, 1)));
    ASSERT_TRUE(r.ok());
    const auto start = std::chrono::steady_clock::now();
    Status s = comm.Wait(*r, milliseconds(30));
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
    EXPECT_NE(s.message().find("tag 99"), std::string::npos) << s.message();
    EXPECT_LT(elapsed, std::chrono::seconds(10));  // "quickly": only a hang fails this
    // Still pending: Test says so, and a zero timeout times out at once.
    auto t = comm.Test(*r);
    ASSERT_TRUE(t.ok());
    EXPECT_FALSE(*t);
    EXPECT_EQ(comm.Wait(*r, milliseconds(0)).code(), StatusCode::kDeadlineExceeded);
    EXPECT_EQ(
        comm.Recv(peer, 98, std::as_writable_bytes(std::span(&value, 1)), milliseconds(5)).code(),
        StatusCode::kDeadlineExceeded);
  });
}

TEST_P(InProcessTest, CancelledReceiveDoesNotTakeTheNextMessage) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    std::vector<std::byte> go(1), all(n);
    if (comm.rank() == 0) {
      int32_t lost = -1;
      int32_t got = -1;
      {
        auto dropped = comm.IRecv(1, 4, std::as_writable_bytes(std::span(&lost, 1)));
        ASSERT_TRUE(dropped.ok());
      }  // destroyed while pending: cancelled
      auto r = comm.IRecv(1, 4, std::as_writable_bytes(std::span(&got, 1)));
      ASSERT_TRUE(r.ok());
      ASSERT_TRUE(comm.AllGather(go, all, kLong).ok());
      ASSERT_TRUE(comm.Wait(*r, kLong).ok());
      EXPECT_EQ(got, 1234);
      EXPECT_EQ(lost, -1);
    } else {
      ASSERT_TRUE(comm.AllGather(go, all, kLong).ok());
      if (comm.rank() == 1) {
        const int32_t v = 1234;
        ASSERT_TRUE(comm.Send(0, 4, std::as_bytes(std::span(&v, 1)), kLong).ok());
      }
    }
  });
}

TEST_P(InProcessTest, SizeMismatchFailsTheReceive) {
  RunWorld(GetParam(), [](Communicator& comm) {
    if (comm.rank() == 0) {
      std::vector<std::byte> small(3);
      Status s = comm.Recv(1, 6, small, kLong);
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
      EXPECT_NE(s.message().find("8 bytes"), std::string::npos) << s.message();
      // The bad message was consumed; the next one is received normally.
      int64_t next = 0;
      ASSERT_TRUE(comm.Recv(1, 6, std::as_writable_bytes(std::span(&next, 1)), kLong).ok());
      EXPECT_EQ(next, 2);
    } else if (comm.rank() == 1) {
      const int64_t a = 1, b = 2;
      ASSERT_TRUE(comm.Send(0, 6, std::as_bytes(std::span(&a, 1)), kLong).ok());
      ASSERT_TRUE(comm.Send(0, 6, std::as_bytes(std::span(&b, 1)), kLong).ok());
    }
  });
}

// A rank whose blocking collective timed out keeps its place in the sequence: the others still
// complete that collective, and the next one matches on every rank.
TEST_P(InProcessTest, TimedOutCollectiveKeepsTheSequence) {
  std::atomic<bool> rank0_gave_up{false};
  RunWorld(GetParam(), [&](Communicator& comm) {
    const int n = comm.size();
    const int64_t me = comm.rank();
    std::vector<int64_t> all(n, -1);
    if (me == 0) {
      Status s = comm.AllGather(std::as_bytes(std::span(&me, 1)),
                                std::as_writable_bytes(std::span(all)), milliseconds(1));
      EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
      rank0_gave_up.store(true);
    } else {
      while (!rank0_gave_up.load()) std::this_thread::yield();
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
  });
}

TEST_P(InProcessTest, AbortWakesEveryRank) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    if (comm.rank() == 0) {
      std::vector<std::byte> one(1), all(n);
      // Everyone else is blocked by now or soon; abort instead of joining.
      std::this_thread::sleep_for(milliseconds(20));
      comm.Abort("test abort");
      Status s = comm.AllGather(one, all, kLong);
      EXPECT_EQ(s.code(), StatusCode::kAborted);
    } else if (comm.rank() % 2 == 1) {
      int64_t v = 0;
      Status s = comm.Recv(0, 1, std::as_writable_bytes(std::span(&v, 1)), kLong);
      EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
      EXPECT_NE(s.message().find("test abort"), std::string::npos) << s.message();
    } else {
      int64_t v = 1, sum = 0;
      Status s = comm.AllReduce(std::span<const int64_t>(&v, 1), std::span(&sum, 1), ReduceOp::kSum,
                                kLong);
      EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
    }
    // Later calls fail at once.
    const std::byte b{};
    EXPECT_EQ(comm.ISend(0, 1, std::span(&b, 1)).status().code(), StatusCode::kAborted);
  });
}

TEST_P(InProcessTest, GoneRankEndsWaitsWithAnError) {
  const int n = GetParam();
  auto world = MakeInProcessWorld(n);
  // Rank 1 sends one message, then leaves.
  const int32_t v = 5;
  ASSERT_TRUE(world[1]->Send(0, 2, std::as_bytes(std::span(&v, 1)), kLong).ok());
  world[1].reset();
  int32_t got = 0;
  ASSERT_TRUE(world[0]->Recv(1, 2, std::as_writable_bytes(std::span(&got, 1)), kLong).ok());
  EXPECT_EQ(got, 5);
  Status s = world[0]->Recv(1, 2, std::as_writable_bytes(std::span(&got, 1)), kLong);
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_NE(s.message().find("rank 1 is gone"), std::string::npos) << s.message();
  EXPECT_EQ(world[0]->ISend(1, 2, std::as_bytes(std::span(&v, 1))).status().code(),
            StatusCode::kAborted);
  // A collective that the gone rank never joined fails on the others.
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    if (r == 1) continue;
    threads.emplace_back([&, r] {
      int64_t x = r, y = 0;
      Status c = world[r]->AllReduce(std::span<const int64_t>(&x, 1), std::span(&y, 1),
                                     ReduceOp::kMax, kLong);
      EXPECT_EQ(c.code(), StatusCode::kAborted) << c.ToString();
    });
  }
  for (auto& t : threads) t.join();
}

TEST_P(InProcessTest, MismatchedCollectivesFailOnEveryRank) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    Status s;
    if (comm.rank() == n - 1) {
      int64_t x = 1, y = 0;
      s = comm.AllReduce(std::span<const int64_t>(&x, 1), std::span(&y, 1), ReduceOp::kSum, kLong);
    } else {
      std::vector<std::byte> one(8), all(8 * n);
      s = comm.AllGather(one, all, kLong);
    }
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("collective #0"), std::string::npos) << s.message();
  });
}

TEST_P(InProcessTest, BadArgumentsAreRejected) {
  auto world = MakeInProcessWorld(GetParam());
  Communicator& comm = *world[0];
  const int n = comm.size();
  std::vector<std::byte> buf(4);
  EXPECT_EQ(comm.ISend(n, 0, buf).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.ISend(-1, 0, buf).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.IRecv(0, -1, buf).status().code(), StatusCode::kInvalidArgument);
  Status tag = comm.IRecv(0, kMaxTag + 1, buf).status();
  EXPECT_EQ(tag.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tag.message().find("tag 32768"), std::string::npos) << tag.message();
  auto highest = comm.ISend(0, kMaxTag, buf);  // the largest tag is valid
  EXPECT_TRUE(highest.ok()) << highest.status().ToString();
  std::vector<std::byte> wrong(4 * n + 1);
  Status gather = comm.IAllGather(buf, wrong).status();
  EXPECT_EQ(gather.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(gather.message().find("rank 0"), std::string::npos) << gather.message();
  std::vector<int64_t> a(2), b(3);
  EXPECT_EQ(comm.IAllReduce(std::span<const int64_t>(a), b, ReduceOp::kSum).status().code(),
            StatusCode::kInvalidArgument);
  Request empty;
  EXPECT_EQ(comm.Test(empty).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.Wait(empty, milliseconds(1)).code(), StatusCode::kInvalidArgument);
  // A request belongs to the communicator that started it.
  auto other = world[1]->ISend(1, 0, buf);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(comm.Test(*other).status().code(), StatusCode::kInvalidArgument);
  auto foreign = MakeInProcessWorld(n);
  auto r = foreign[0]->ISend(0, 0, buf);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(comm.Wait(*r, milliseconds(1)).code(), StatusCode::kInvalidArgument);
}

TEST_P(InProcessTest, ConcurrentPointToPointFromManyThreadsPerRank) {
  // Point-to-point calls are thread-safe: two threads per rank exchange on separate tags.
  const int n = GetParam();
  auto world = MakeInProcessWorld(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    for (int lane = 0; lane < 2; ++lane) {
      threads.emplace_back([&, r, lane] {
        Communicator& comm = *world[r];
        const int next = (r + 1) % n;
        const int prev = (r + n - 1) % n;
        for (int i = 0; i < 100; ++i) {
          const int64_t out = r * 1000000 + lane * 1000 + i;
          int64_t in = -1;
          auto recv = comm.IRecv(prev, 20 + lane, std::as_writable_bytes(std::span(&in, 1)));
          ASSERT_TRUE(recv.ok());
          ASSERT_TRUE(comm.Send(next, 20 + lane, std::as_bytes(std::span(&out, 1)), kLong).ok());
          ASSERT_TRUE(comm.Wait(*recv, kLong).ok());
          ASSERT_EQ(in, prev * 1000000 + lane * 1000 + i);
        }
      });
    }
  }
  for (auto& t : threads) t.join();
}

INSTANTIATE_TEST_SUITE_P(Worlds, InProcessTest, ::testing::Values(4, 8),
                         [](const auto& info) { return "ranks" + std::to_string(info.param); });

TEST(MpiFactory, ReportsWhenMpiIsNotBuilt) {
#ifdef EPLB_HAVE_MPI
  GTEST_SKIP() << "MPI support is built; tests/comm/mpi_comm_test covers it under mpirun";
#else
  auto comm = MakeMpiCommunicator(nullptr, nullptr);
  ASSERT_FALSE(comm.ok());
  EXPECT_EQ(comm.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(comm.status().message().find("MPI support was not built"), std::string::npos);
#endif
}

}  // namespace
}  // namespace eplb
