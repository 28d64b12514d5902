#include "testing/comm_checks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace eplb::testing {
namespace {

// The deterministic content of message `index` from `src` to `dst`; both sides compute it.
std::vector<std::byte> Payload(uint64_t seed, int src, int dst, int index, std::size_t bytes) {
  std::mt19937_64 rng(seed ^ (static_cast<uint64_t>(src) << 40) ^
                      (static_cast<uint64_t>(dst) << 20) ^ static_cast<uint64_t>(index));
  std::vector<std::byte> out(bytes);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

// Mostly small, sometimes empty, sometimes up to max_bytes.
std::size_t PayloadSize(uint64_t seed, int src, int dst, int index, std::size_t max_bytes) {
  std::mt19937_64 rng(seed * 31 + static_cast<uint64_t>(src * 1000003 + dst * 1009 + index));
  const uint64_t kind = rng() % 10;
  if (kind == 0) return 0;
  if (kind < 8) return 1 + rng() % 256;
  return 1 + rng() % max_bytes;
}

}  // namespace

void CheckRingExchange(Communicator& comm, int rounds) {
  const int n = comm.size();
  const int next = (comm.rank() + 1) % n;
  const int prev = (comm.rank() + n - 1) % n;
  for (int round = 0; round < rounds; ++round) {
    std::vector<int64_t> out = {comm.rank(), round, comm.rank() * 1000 + round};
    std::vector<int64_t> in(3, -1);
    auto recv = comm.IRecv(prev, 7, std::as_writable_bytes(std::span(in)));
    ASSERT_TRUE(recv.ok()) << recv.status().ToString();
    auto send = comm.ISend(next, 7, std::as_bytes(std::span(out)));
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    out.assign(3, -7);  // the send copied its input
    ASSERT_TRUE(comm.Wait(*send, kCommWait).ok());
    Status s = comm.Wait(*recv, kCommWait);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(in, (std::vector<int64_t>{prev, round, prev * 1000 + round}));
  }
}

void CheckManyMessagesByteForByte(Communicator& comm, uint64_t seed, int per_pair,
                                  std::size_t max_bytes) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  const int n = comm.size();
  const int me = comm.rank();
  // Post every receive first (from every source, self included), then send everything.
  std::vector<std::vector<std::byte>> buffers;
  std::vector<std::pair<int, int>> origin;  // (src, index) of each receive
  for (int src = 0; src < n; ++src) {
    for (int i = 0; i < per_pair; ++i) {
      buffers.emplace_back(PayloadSize(seed, src, me, i, max_bytes));
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
  for (int i = 0; i < per_pair; ++i) {
    for (int d = 0; d < n; ++d) {
      const int dst = (me + d) % n;
      const std::vector<std::byte> data =
          Payload(seed, me, dst, i, PayloadSize(seed, me, dst, i, max_bytes));
      auto s = comm.ISend(dst, 3, data);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      sends.push_back(std::move(*s));
    }
  }
  Status s = comm.WaitAll(receives, kCommWait);
  ASSERT_TRUE(s.ok()) << s.ToString();
  s = comm.WaitAll(sends, kCommWait);
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (std::size_t k = 0; k < buffers.size(); ++k) {
    const auto [src, i] = origin[k];
    EXPECT_EQ(buffers[k], Payload(seed, src, me, i, buffers[k].size()))
        << "rank " << me << " message " << i << " from rank " << src;
  }
}

void CheckOutOfOrderPostingAndWaiting(Communicator& comm) {
  const int n = comm.size();
  const int me = comm.rank();
  const int peer = n - 1 - me;  // pairs up ranks; the middle rank of an odd world talks to itself
  constexpr int kTags = 5;
  constexpr int kPerTag = 4;
  constexpr int kTag0 = 100;
  // Receives for tags in reverse order, waited on in reverse posting order.
  std::vector<int32_t> got(kTags * kPerTag, -1);
  std::vector<Request> receives;
  for (int tag = kTags - 1; tag >= 0; --tag) {
    for (int k = 0; k < kPerTag; ++k) {
      auto r = comm.IRecv(peer, kTag0 + tag,
                          std::as_writable_bytes(std::span(&got[tag * kPerTag + k], 1)));
      ASSERT_TRUE(r.ok());
      receives.push_back(std::move(*r));
    }
  }
  // Half of the sends go before a barrier, half after: both matching paths (message queued
  // before the receive, receive posted before the message) are taken.
  std::vector<Request> sends;
  auto send = [&](int tag, int k) {
    const int32_t value = me * 10000 + tag * 100 + k;
    auto s = comm.ISend(peer, kTag0 + tag, std::as_bytes(std::span(&value, 1)));
    ASSERT_TRUE(s.ok());
    sends.push_back(std::move(*s));
  };
  for (int tag = 0; tag < kTags; ++tag) {
    for (int k = 0; k < kPerTag / 2; ++k) send(tag, k);
  }
  std::vector<std::byte> token(1), all(n);
  ASSERT_TRUE(comm.AllGather(token, all, kCommWait).ok());
  for (int tag = 0; tag < kTags; ++tag) {
    for (int k = kPerTag / 2; k < kPerTag; ++k) send(tag, k);
  }
  for (auto it = receives.rbegin(); it != receives.rend(); ++it) {
    Status s = comm.Wait(*it, kCommWait);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  ASSERT_TRUE(comm.WaitAll(sends, kCommWait).ok());
  for (int tag = 0; tag < kTags; ++tag) {
    for (int k = 0; k < kPerTag; ++k) {
      EXPECT_EQ(got[tag * kPerTag + k], peer * 10000 + tag * 100 + k) << "tag " << tag;
    }
  }
}

void CheckAllGather(Communicator& comm, int rounds) {
  const int n = comm.size();
  const int me = comm.rank();
  for (int round = 0; round < rounds; ++round) {
    const std::size_t bytes = static_cast<std::size_t>(round % 17);  // includes 0
    std::vector<std::byte> mine(bytes);
    for (std::size_t i = 0; i < bytes; ++i) mine[i] = static_cast<std::byte>(me * 31 + round + i);
    std::vector<std::byte> all(bytes * n, std::byte{0xee});
    if (round % 2 == 0) {
      Status s = comm.AllGather(mine, all, kCommWait);
      ASSERT_TRUE(s.ok()) << s.ToString();
    } else {
      auto r = comm.IAllGather(mine, all);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      mine.assign(bytes, std::byte{0});  // the input was copied
      ASSERT_TRUE(comm.Wait(*r, kCommWait).ok());
    }
    for (int src = 0; src < n; ++src) {
      for (std::size_t i = 0; i < bytes; ++i) {
        ASSERT_EQ(all[src * bytes + i], static_cast<std::byte>(src * 31 + round + i))
            << "round " << round << " rank " << me << " from " << src;
      }
    }
  }
}

void CheckAllReduce(Communicator& comm, int rounds) {
  const int n = comm.size();
  const int me = comm.rank();
  for (int round = 0; round < rounds; ++round) {
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
        ASSERT_TRUE(comm.AllReduce(in, out, op, kCommWait).ok());
        ASSERT_TRUE(comm.AllReduce(din, dout, op, kCommWait).ok());
      } else {
        auto a = comm.IAllReduce(in, out, op);
        auto b = comm.IAllReduce(din, dout, op);
        ASSERT_TRUE(a.ok() && b.ok());
        ASSERT_TRUE(comm.Wait(*b, kCommWait).ok());  // completion order is the caller's choice
        ASSERT_TRUE(comm.Wait(*a, kCommWait).ok());
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

void CheckNonBlockingCollectivesTestedOneStepLater(Communicator& comm, int steps) {
  const int n = comm.size();
  const int me = comm.rank();
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
  for (int step = 0; step < steps; ++step) {
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
    ASSERT_TRUE(comm.Wait(f->gather, kCommWait).ok());
    ASSERT_TRUE(comm.Wait(f->reduce, kCommWait).ok());
    ++completed;
  }
  EXPECT_EQ(completed, steps);
}

void CheckDiscardedTagDropsMessages(Communicator& comm) {
  const int n = comm.size();
  const int me = comm.rank();
  const int next = (me + 1) % n;
  const int prev = (me + n - 1) % n;
  constexpr int kTag = 300;
  constexpr std::size_t kBytes = std::size_t{1} << 20;
  std::vector<std::byte> message(kBytes, std::byte(me));
  auto before = comm.ISend(next, kTag, message);
  ASSERT_TRUE(before.ok());
  std::vector<std::byte> token(1), all(n);
  ASSERT_TRUE(comm.AllGather(token, all, kCommWait).ok());  // every first send has started
  comm.DiscardTag(kTag);
  std::vector<std::byte> buffer(kBytes);
  auto receive = comm.IRecv(prev, kTag, buffer);
  ASSERT_TRUE(receive.ok());
  EXPECT_EQ(comm.Wait(*receive, std::chrono::milliseconds(100)).code(),
            StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(comm.Wait(*before, kCommWait).ok());
  auto after = comm.ISend(next, kTag, message);
  ASSERT_TRUE(after.ok());
  ASSERT_TRUE(comm.Wait(*after, kCommWait).ok());
  EXPECT_EQ(comm.Wait(*receive, std::chrono::milliseconds(50)).code(),
            StatusCode::kDeadlineExceeded);
  receive->reset();
  // Another tag still goes through.
  const int32_t value = me;
  int32_t got = -1;
  auto other = comm.IRecv(prev, kTag + 1, std::as_writable_bytes(std::span(&got, 1)));
  ASSERT_TRUE(other.ok());
  ASSERT_TRUE(comm.Send(next, kTag + 1, std::as_bytes(std::span(&value, 1)), kCommWait).ok());
  ASSERT_TRUE(comm.Wait(*other, kCommWait).ok());
  EXPECT_EQ(got, prev);
  ASSERT_TRUE(comm.AllGather(token, all, kCommWait).ok());
}

}  // namespace eplb::testing
