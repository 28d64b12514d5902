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
#include "testing/comm_checks.h"

namespace eplb {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kLong = testing::kCommWait;

Communicator* g_comm = nullptr;  // set by main before any test runs

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

TEST(MpiComm, RingExchange) { testing::CheckRingExchange(*g_comm, 100); }

TEST(MpiComm, ManyMessagesWithRandomSizesByteForByte) {
  // Up to 200 kB: above OpenMPI's eager limit, so the rendezvous protocol is taken too.
  testing::CheckManyMessagesByteForByte(*g_comm, 77, 8, 200000);
}

TEST(MpiComm, OutOfOrderPostingAndWaiting) { testing::CheckOutOfOrderPostingAndWaiting(*g_comm); }

TEST(MpiComm, DiscardedTagDropsMessages) { testing::CheckDiscardedTagDropsMessages(*g_comm); }

TEST(MpiComm, AllGatherBlockingAndNonBlocking) { testing::CheckAllGather(*g_comm, 100); }

TEST(MpiComm, AllReduceInt64AndDouble) { testing::CheckAllReduce(*g_comm, 40); }

TEST(MpiComm, NonBlockingCollectivesTestedOneStepLater) {
  testing::CheckNonBlockingCollectivesTestedOneStepLater(*g_comm, 200);
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

// Above OpenMPI's eager limit a message goes by rendezvous, which wrote the whole message past
// the end of a smaller posted receive buffer (heap corruption: glibc aborted the process) while
// the receive reported the truncation. Too small, too large, then the right size: the first two
// fail cleanly and the third gets its bytes.
TEST(MpiComm, RendezvousSizeMismatchFailsTheReceiveOnly) {
  Communicator& comm = *g_comm;
  const int n = comm.size();
  const int me = comm.rank();
  const int next = (me + 1) % n;
  const int prev = (me + n - 1) % n;
  constexpr size_t kBytes = size_t{1} << 20;
  std::vector<Request> sends;
  for (int k = 0; k < 3; ++k) {
    std::vector<std::byte> message(kBytes, std::byte(me * 10 + k));
    auto send = comm.ISend(next, 6, message);
    ASSERT_TRUE(send.ok());
    sends.push_back(std::move(*send));
  }
  for (size_t size : {kBytes / 2, 2 * kBytes}) {
    std::vector<std::byte> buffer(size, std::byte{7});
    Status s = comm.Recv(prev, 6, buffer, kLong);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("the message has 1048576 bytes"), std::string::npos) << s.message();
    EXPECT_EQ(std::count(buffer.begin(), buffer.end(), std::byte{7}),
              static_cast<std::ptrdiff_t>(size));
  }
  std::vector<std::byte> right(kBytes);
  ASSERT_TRUE(comm.Recv(prev, 6, right, kLong).ok());
  EXPECT_EQ(std::count(right.begin(), right.end(), std::byte(prev * 10 + 2)),
            static_cast<std::ptrdiff_t>(kBytes));
  ASSERT_TRUE(comm.WaitAll(sends, kLong).ok());
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
