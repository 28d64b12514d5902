// Checks of the Communicator contract that every backend must pass, shared by the in-process
// tests (each rank a thread) and the MPI tests (each rank a process). Each check runs on every
// rank of one world at once and reports through GoogleTest assertions.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "eplb/comm.h"

namespace eplb::testing {

// Generous: only reached when something is broken, and TSan on a loaded machine is slow.
inline constexpr std::chrono::milliseconds kCommWait{20000};

// Each rank sends `rounds` messages to the next rank of a ring and receives from the previous.
void CheckRingExchange(Communicator& comm, int rounds);
// Every rank sends `per_pair` messages of random sizes (0 to max_bytes) to every rank, itself
// included, with every receive posted first; every byte is checked.
void CheckManyMessagesByteForByte(Communicator& comm, uint64_t seed, int per_pair,
                                  std::size_t max_bytes);
// Receives posted for several tags in reverse order and waited in reverse posting order, half of
// the messages sent before the receives exist and half after.
void CheckOutOfOrderPostingAndWaiting(Communicator& comm);
// `rounds` all-gathers of 0 to 16 bytes per rank, blocking and non-blocking in turn.
void CheckAllGather(Communicator& comm, int rounds);
// `rounds` all-reduces (sum, min, max) of int64 and double, blocking and non-blocking in turn.
void CheckAllReduce(Communicator& comm, int rounds);
// The runtime's pattern: a small all-gather and all-reduce started at every step and Tested (never
// waited) at the next ones, so several are in flight at once.
void CheckNonBlockingCollectivesTestedOneStepLater(Communicator& comm, int steps);

// DiscardTag: a message to a rank that discarded its tag, sent before or after, is dropped (a
// receive of that tag gets nothing) and its send completes (over MPI only once the receiver has
// received and dropped it: 1 MiB goes by rendezvous); other tags are untouched.
void CheckDiscardedTagDropsMessages(Communicator& comm);

}  // namespace eplb::testing
