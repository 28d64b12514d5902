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

namespace eplb {
namespace {

using std::chrono::milliseconds;

// Generous: only reached when something is broken, and TSan on a loaded machine is slow.
constexpr milliseconds kLong(20000);

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

// The deterministic content of message `index` from `src` to `dst`; both sides compute it.
std::vector<std::byte> Payload(uint64_t seed, int src, int dst, int index, std::size_t bytes) {
  std::mt19937_64 rng(seed ^ (static_cast<uint64_t>(src) << 40) ^
                      (static_cast<uint64_t>(dst) << 20) ^ static_cast<uint64_t>(index));
  std::vector<std::byte> out(bytes);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

std::size_t PayloadSize(uint64_t seed, int src, int dst, int index) {
  std::mt19937_64 rng(seed * 31 + static_cast<uint64_t>(src * 1000003 + dst * 1009 + index));
  // Mostly small, sometimes empty, sometimes tens of kilobytes.
  const uint64_t kind = rng() % 10;
  if (kind == 0) return 0;
  if (kind < 8) return 1 + rng() % 256;
  return 1 + rng() % 40000;
}

std::span<const std::byte> Bytes(const std::vector<std::byte>& v) { return v; }

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
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    const int next = (comm.rank() + 1) % n;
    const int prev = (comm.rank() + n - 1) % n;
    for (int round = 0; round < 200; ++round) {
      std::vector<int64_t> out = {comm.rank(), round, comm.rank() * 1000 + round};
      std::vector<int64_t> in(3, -1);
      auto recv = comm.IRecv(prev, 7, std::as_writable_bytes(std::span(in)));
      ASSERT_TRUE(recv.ok()) << recv.status().ToString();
      auto send = comm.ISend(next, 7, std::as_bytes(std::span(out)));
      ASSERT_TRUE(send.ok()) << send.status().ToString();
      out.assign(3, -7);  // the send copied its input
      ASSERT_TRUE(comm.Wait(*send, kLong).ok());
      Status s = comm.Wait(*recv, kLong);
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(in, (std::vector<int64_t>{prev, round, prev * 1000 + round}));
    }
  });
}

TEST_P(InProcessTest, ManyMessagesWithRandomSizesByteForByte) {
  constexpr uint64_t kSeed = 20240611;
  constexpr int kPerPair = 12;
  SCOPED_TRACE("seed " + std::to_string(kSeed));
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    const int me = comm.rank();
    // Post every receive first (from every source, self included), then send everything.
    std::vector<std::vector<std::byte>> buffers;
    std::vector<Request> receives;
    std::vector<std::pair<int, int>> origin;  // (src, index) of each receive
    for (int src = 0; src < n; ++src) {
      for (int i = 0; i < kPerPair; ++i) {
        buffers.emplace_back(PayloadSize(kSeed, src, me, i));
        origin.emplace_back(src, i);
      }
    }
    for (std::size_t k = 0; k < buffers.size(); ++k) {
      auto r = comm.IRecv(origin[k].first, 3, buffers[k]);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      receives.push_back(std::move(*r));
    }
    std::vector<Request> sends;
    for (int i = 0; i < kPerPair; ++i) {
      for (int d = 0; d < n; ++d) {
        const int dst = (me + d) % n;
        auto s =
            comm.ISend(dst, 3, Bytes(Payload(kSeed, me, dst, i, PayloadSize(kSeed, me, dst, i))));
        ASSERT_TRUE(s.ok()) << s.status().ToString();
        sends.push_back(std::move(*s));
      }
    }
    Status s = comm.WaitAll(sends, kLong);
    ASSERT_TRUE(s.ok()) << s.ToString();
    s = comm.WaitAll(receives, kLong);
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (std::size_t k = 0; k < buffers.size(); ++k) {
      const auto [src, i] = origin[k];
      EXPECT_EQ(buffers[k], Payload(kSeed, src, me, i, buffers[k].size()))
          << "rank " << me << " message " << i << " from rank " << src;
    }
  });
}

TEST_P(InProcessTest, OutOfOrderPostingAndWaiting) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    const int me = comm.rank();
    const int peer = n - 1 - me;  // pairs up ranks; the middle rank of an odd world talks to itself
    constexpr int kTags = 5;
    constexpr int kPerTag = 4;
    // Receives for tags in reverse order, waited on in reverse posting order.
    std::vector<int32_t> got(kTags * kPerTag, -1);
    std::vector<Request> receives;
    for (int tag = kTags - 1; tag >= 0; --tag) {
      for (int k = 0; k < kPerTag; ++k) {
        auto r =
            comm.IRecv(peer, tag, std::as_writable_bytes(std::span(&got[tag * kPerTag + k], 1)));
        ASSERT_TRUE(r.ok());
        receives.push_back(std::move(*r));
      }
    }
    // Half of the sends go before a barrier, half after: both matching paths (message queued
    // before the receive, receive posted before the message) are taken.
    std::vector<Request> sends;
    auto send = [&](int tag, int k) {
      const int32_t value = me * 10000 + tag * 100 + k;
      auto s = comm.ISend(peer, tag, std::as_bytes(std::span(&value, 1)));
      ASSERT_TRUE(s.ok());
      sends.push_back(std::move(*s));
    };
    for (int tag = 0; tag < kTags; ++tag) {
      for (int k = 0; k < kPerTag / 2; ++k) send(tag, k);
    }
    std::vector<std::byte> token(1), all(n);
    ASSERT_TRUE(comm.AllGather(token, all, kLong).ok());
    for (int tag = 0; tag < kTags; ++tag) {
      for (int k = kPerTag / 2; k < kPerTag; ++k) send(tag, k);
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
  });
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
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    const int me = comm.rank();
    for (int round = 0; round < 300; ++round) {
      const std::size_t bytes = static_cast<std::size_t>(round % 17);  // includes 0
      std::vector<std::byte> mine(bytes);
      for (std::size_t i = 0; i < bytes; ++i) mine[i] = static_cast<std::byte>(me * 31 + round + i);
      std::vector<std::byte> all(bytes * n, std::byte{0xee});
      if (round % 2 == 0) {
        Status s = comm.AllGather(mine, all, kLong);
        ASSERT_TRUE(s.ok()) << s.ToString();
      } else {
        auto r = comm.IAllGather(mine, all);
        ASSERT_TRUE(r.ok()) << r.status().ToString();
        mine.assign(bytes, std::byte{0});  // the input was copied
        ASSERT_TRUE(comm.Wait(*r, kLong).ok());
      }
      for (int src = 0; src < n; ++src) {
        for (std::size_t i = 0; i < bytes; ++i) {
          ASSERT_EQ(all[src * bytes + i], static_cast<std::byte>(src * 31 + round + i))
              << "round " << round << " rank " << me << " from " << src;
        }
      }
    }
  });
}

TEST_P(InProcessTest, AllReduceInt64AndDouble) {
  RunWorld(GetParam(), [](Communicator& comm) {
    const int n = comm.size();
    const int me = comm.rank();
    for (int round = 0; round < 150; ++round) {
      const int len = 1 + round % 5;
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kMax}) {
        SCOPED_TRACE(std::string(ReduceOpName(op)) + " round " + std::to_string(round));
        std::vector<int64_t> in(len), out(len, -1);
        std::vector<double> din(len), dout(len, -1);
        for (int i = 0; i < len; ++i) {
          in[i] = (me - 2) * 1000003LL + i * round;
          din[i] = (me - 2) * 0.5 + i;  // exact in binary: sums do not depend on order
        }
        if (round % 2 == 0) {
          ASSERT_TRUE(comm.AllReduce(in, out, op, kLong).ok());
          ASSERT_TRUE(comm.AllReduce(din, dout, op, kLong).ok());
        } else {
          auto a = comm.IAllReduce(in, out, op);
          auto b = comm.IAllReduce(din, dout, op);
          ASSERT_TRUE(a.ok() && b.ok());
          ASSERT_TRUE(comm.Wait(*b, kLong).ok());  // completion order is the caller's choice
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
  });
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
    const int n = comm.size();
    const int me = comm.rank();
    constexpr int kSteps = 400;
    struct InFlight {
      int step;
      std::vector<int64_t> load;
      std::vector<int64_t> gathered;
      double mine;
      double total;
      Request gather;
      Request reduce;
    };
    std::vector<std::unique_ptr<InFlight>> pending;
    int completed = 0;
    for (int step = 0; step < kSteps; ++step) {
      // Test (never wait on) what earlier steps started, oldest first.
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
        ASSERT_EQ(f.total, n * (n - 1) / 2.0 + n * 0.25 * f.step);
        ++completed;
        it = pending.erase(it);
      }
      // Every rank starts one pair per step whatever its Tests said, so the sequences match.
      auto f = std::make_unique<InFlight>();
      f->step = step;
      f->load = {me, step * 7 + me};
      f->gathered.assign(2 * n, -1);
      f->mine = me + 0.25 * step;
      auto g = comm.IAllGather(std::as_bytes(std::span(f->load)),
                               std::as_writable_bytes(std::span(f->gathered)));
      auto r = comm.IAllReduce(std::span<const double>(&f->mine, 1), std::span(&f->total, 1),
                               ReduceOp::kSum);
      ASSERT_TRUE(g.ok() && r.ok());
      f->gather = std::move(*g);
      f->reduce = std::move(*r);
      pending.push_back(std::move(f));
      std::this_thread::yield();
    }
    for (auto& f : pending) {
      ASSERT_TRUE(comm.Wait(f->gather, kLong).ok());
      ASSERT_TRUE(comm.Wait(f->reduce, kLong).ok());
      ++completed;
    }
    EXPECT_GT(completed, 0);
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
