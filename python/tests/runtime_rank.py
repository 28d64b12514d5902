"""One rank of a small world that serves a skewed load and rebalances (used by test_runtime.py).

Drives swiftbalancer.Controller the way an engine's forward loop would: route with the layer's
snapshot, record tokens per local slot, step. Each slot's buffer holds 1000 * layer + expert, so
after the run every slot must hold the expert its routing snapshot names. Run by a thread of the
test (in-process world) or as a process under mpirun (`python3 runtime_rank.py DIR`), where it
writes its result to DIR/rank<r>.json.
"""
import json
import sys
import time

import numpy as np

import swiftbalancer as sb

LAYERS, EXPERTS, RANKS, REDUNDANT = 3, 16, 4, 8
CONFIG = {"dynamic_eplb": True, "expert_heat_collection_interval": 10,
          "algorithm_execution_interval": 2, "num_redundant_experts": REDUNDANT,
          "target_balancedness": 0.99}


def skewed_load(seed=3):
    """Per layer and expert, tokens per step: a few hot experts, as real MoE traffic."""
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 1.2, size=(LAYERS, EXPERTS))
    return np.floor(100 * popularity / popularity.mean(axis=1, keepdims=True)) + 1


def numpy_buffer(value):
    return np.full(8, value, dtype=np.float32)


def run_rank(comm, steps=60, config=CONFIG, min_cycles=2, wait_cycles=0, buffer=numpy_buffer):
    """Runs one rank for at least `steps` steps and until `min_cycles` cycles have ended (a cycle
    ends at the same step on every rank, so every rank stops at the same step), then waits up to
    60 s for the worker to count `wait_cycles` cycles (static mode: the worker's own pace);
    returns what the test checks. `buffer(value)` makes a slot's buffer filled with value."""
    load = skewed_load()
    r = comm.rank
    with sb.Controller(config, LAYERS, EXPERTS, comm) as ctl:
        s = ctl.slots_per_rank
        initial = ctl.initial_placement
        buffers = [[buffer(1000 * l + int(initial[l][r * s + t])) for t in range(s)]
                   for l in range(LAYERS)]
        for l in range(LAYERS):
            for t in range(s):
                ctl.register_expert(l, t, [buffers[l][t]])
        ctl.start()
        routes = [ctl.routing(l) for l in range(LAYERS)]
        errors, step = [], 0
        deadline = time.monotonic() + 60
        while not (step >= steps and not ctl.cycle_in_progress
                   and (ctl.metrics()["cycles"] >= min_cycles or ctl.metrics()["disabled"])):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {r}: {min_cycles} cycles not done within 60 s")
            for l in range(LAYERS):
                if ctl.epoch(l) != routes[l]["epoch"]:  # a new snapshot after a commit
                    routes[l] = ctl.routing(l)
                ids = routes[l]["phy2log"][r * s:(r + 1) * s]
                # Each replica takes an equal share of its expert's tokens.
                ctl.record_load(l, (load[l][ids] / routes[l]["replica_count"][ids]).astype(np.int64))
            error = ctl.step()
            if error:
                errors.append(error)
            step += 1
        while ctl.metrics()["cycles"] < wait_cycles and time.monotonic() < deadline:
            time.sleep(0.001)
        final = np.stack([ctl.routing(l)["phy2log"] for l in range(LAYERS)])
        wrong = [(l, t) for l in range(LAYERS) for t in range(s)
                 if not bool((buffers[l][t] == 1000 * l + int(final[l][r * s + t])).all())]
        return {"rank": r, "errors": errors, "wrong_slots": wrong,
                "initial": initial.tolist(), "final": final.tolist(),
                "commits": [list(c) for c in ctl.commit_log()], "metrics": ctl.metrics()}


if __name__ == "__main__":
    sb.set_log_level("warning")
    result = run_rank(sb.mpi_communicator())
    with open(f"{sys.argv[1]}/rank{result['rank']}.json", "w") as f:
        json.dump(result, f)
