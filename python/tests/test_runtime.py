"""Tests of swiftbalancer's runtime: Controller on an in-process world (ranks as threads) and
under mpirun (ranks as processes)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

import swiftbalancer as sb

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import runtime_rank  # noqa: E402

sb.set_log_level("warning")


def run_world(ranks=runtime_rank.RANKS, **kwargs):
    world = sb.in_process_world(ranks)
    results, failures = [None] * ranks, []

    def rank(r):
        try:
            results[r] = runtime_rank.run_rank(world[r], **kwargs)
        except Exception as e:  # reported by the test, not lost in the thread
            failures.append(f"rank {r}: {e!r}")

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    assert all(res is not None for res in results), "a rank did not finish"
    return results


def check_world(results):
    """Every rank ends with the same placement and commits; every slot holds its expert."""
    load = runtime_rank.skewed_load()
    for res in results:
        assert res["errors"] == [], res["errors"]
        assert res["wrong_slots"] == [], f"rank {res['rank']}: {res['wrong_slots']}"
        assert res["final"] == results[0]["final"]
        assert res["commits"] == results[0]["commits"]
    m = results[0]["metrics"]
    assert m["cycles"] >= 2 and m["layers_committed"] >= 1 and m["slots_changed_total"] > 0
    before = sb.balancedness(load, results[0]["initial"], runtime_rank.RANKS).mean()
    after = sb.balancedness(load, results[0]["final"], runtime_rank.RANKS).mean()
    assert after > before + 0.1 and after > 0.9, (before, after)


def test_an_in_process_world_rebalances_and_every_slot_holds_its_expert():
    check_world(run_world())


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found (openmpi-bin)")
def test_an_mpi_world_rebalances_alike(tmp_path):
    script = pathlib.Path(__file__).parent / "runtime_rank.py"
    out = subprocess.run(
        ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(runtime_rank.RANKS),
         sys.executable, str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=os.environ.copy())
    if "MPI support" in out.stderr and out.returncode != 0:
        pytest.skip("swiftbalancer was built without MPI (EPLB_WITH_MPI=OFF)")
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text())
               for r in range(runtime_rank.RANKS)]
    assert [res["rank"] for res in results] == list(range(runtime_rank.RANKS))
    check_world(results)
    # Processes decide as threads do: the same placement as the in-process world.
    assert results[0]["final"] == run_world()[0]["final"]


def small_controller(comm, **config):
    return sb.Controller({"num_redundant_experts": 4, **config}, 2, 8, comm)


def test_static_mode_records_the_proposal_and_changes_nothing(tmp_path):
    path = tmp_path / "map.json"
    config = dict(runtime_rank.CONFIG, dynamic_eplb=False, expert_map_record_path=str(path))
    results = run_world(config=config, steps=40, min_cycles=0, wait_cycles=1)
    for res in results:
        assert res["final"] == res["initial"] and res["commits"] == []
        assert res["wrong_slots"] == [] and res["errors"] == []
    phy2log, ranks = sb.read_expert_map(str(path), runtime_rank.EXPERTS)
    assert ranks == runtime_rank.RANKS
    assert phy2log.shape == (runtime_rank.LAYERS, runtime_rank.EXPERTS + runtime_rank.REDUNDANT)
    # A later run starts from the recorded map (creating a controller exchanges nothing).
    world = sb.in_process_world(runtime_rank.RANKS)
    for comm in world:
        with sb.Controller({"expert_map_path": str(path), "num_redundant_experts": 8},
                           runtime_rank.LAYERS, runtime_rank.EXPERTS, comm) as ctl:
            np.testing.assert_array_equal(ctl.initial_placement, phy2log)


def test_bad_configurations_and_arguments_raise_with_the_reason():
    world = sb.in_process_world(2)
    with pytest.raises(ValueError, match=r"config: eplb_config.dynamic_eplbb: unknown key \(did you "
                                         r"mean \"dynamic_eplb\"\?\)"):
        sb.Controller({"dynamic_eplbb": True}, 2, 8, world[0])
    with pytest.raises(ValueError, match=r"eplb_config.imbalance_threshold: expected a number in "
                                         r"\(0, 1\], got 2"):
        sb.Controller('{"imbalance_threshold": 2}', 2, 8, world[0])
    with pytest.raises(ValueError, match="num_redundant_experts: 8 experts \\+ 1 redundant"):
        sb.Controller({"num_redundant_experts": 1}, 2, 8, world[0])
    with pytest.raises(FileNotFoundError, match="/nonexistent/cfg.json"):
        sb.Controller("/nonexistent/cfg.json", 2, 8, world[0])
    with pytest.raises(TypeError, match="config: expected a dict, JSON text, a path or None, got list"):
        sb.Controller([], 2, 8, world[0])
    # Before: "config: line 1, column 25: not valid JSON", and json's bare TypeError.
    with pytest.raises(ValueError, match="config: imbalance_threshold: expected a finite number, "
                                         "got nan"):
        sb.Controller({"imbalance_threshold": float("nan")}, 2, 8, world[0])
    with pytest.raises(ValueError, match="config: eplb_config.target_balancedness: expected a "
                                         "finite number, got inf"):
        sb.Controller({"eplb_config": {"target_balancedness": np.float64("inf")}}, 2, 8, world[0])
    with pytest.raises(TypeError, match="config: imbalance_threshold: expected a JSON value .*got "
                                        "a ndarray"):
        sb.Controller({"imbalance_threshold": np.array([0.5, 0.5])}, 2, 8, world[0])
    with sb.Controller({"num_redundant_experts": np.int64(0)}, 2, 8, world[0]) as ctl:
        assert ctl.slots_per_rank == 4
    with pytest.raises(TypeError, match="comm: expected a Communicator"):
        sb.Controller(None, 2, 8, "rank 0")
    with pytest.raises(ValueError, match="model: layers must be > 0, got 0"):
        sb.Controller(None, 0, 8, world[0])
    with small_controller(world[0]):
        with pytest.raises(ValueError, match="rank 0's communicator is in use"):
            small_controller(world[0])
    with small_controller(world[0]):  # free again once the first is closed
        pass
    with pytest.raises(ValueError, match="size: expected >= 1, got 0"):
        sb.in_process_world(0)
    with pytest.raises(ValueError, match="level: expected one of"):
        sb.set_log_level("loud")


def test_bad_buffers_loads_and_calls_raise_or_are_reported():
    world = sb.in_process_world(1)
    ctl = sb.Controller(None, 2, 8, world[0])
    s = ctl.slots_per_rank
    assert s == 8 and ctl.rank == 0
    good = np.zeros(4, dtype=np.float32)
    with pytest.raises(TypeError, match=r"register_expert\(0, 0\): tensor 0: expected a buffer \(a "
                                        r"numpy array or a CPU torch tensor\), got list"):
        ctl.register_expert(0, 0, [[1.0, 2.0]])
    frozen = np.zeros(4, dtype=np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="tensor 1: expected a writable buffer"):
        ctl.register_expert(0, 0, [good, frozen])
    with pytest.raises(ValueError, match="expected a C-contiguous buffer"):
        ctl.register_expert(0, 0, [np.zeros((4, 4), dtype=np.float32)[:, 1]])
    with pytest.raises(ValueError, match="layer 0 slot 8 is outside 2 layers x 8 slots per rank"):
        ctl.register_expert(0, 8, [good])
    with pytest.raises(ValueError, match="layer 0 slot 0: no tensors"):
        ctl.register_expert(0, 0, [])
    # A bare array was taken as a sequence of tensors (its rows, or numpy scalars).
    with pytest.raises(TypeError, match=r"register_expert\(0, 0\): expected a list of the "
                                        r"expert's tensors \(\[weights, ...\]\), got a ndarray"):
        ctl.register_expert(0, 0, np.zeros(4, dtype=np.float32))
    with pytest.raises(RuntimeError, match="Step: called before Start"):
        ctl.step()
    buffers = []
    for l in range(2):
        for t in range(s):
            buffers.append(np.zeros(4, dtype=np.float32))
            if (l, t) != (1, s - 1):
                ctl.register_expert(l, t, (buffers[-1],))  # any sequence of buffers
    with pytest.raises(RuntimeError, match="Start: layer 1 slot 7 has no registered expert"):
        ctl.start()
    ctl.register_expert(1, s - 1, [buffers[-1]])
    ctl.start()
    with pytest.raises(RuntimeError, match="RegisterExpert: called after Start"):
        ctl.register_expert(0, 0, [good])
    with pytest.raises(TypeError, match="tokens: expected an array of integers, got dtype float64"):
        ctl.record_load(0, np.ones(s))
    with pytest.raises(ValueError, match="tokens: expected a 1-D array, got 2 dimensions"):
        ctl.record_load(0, np.ones((2, s), dtype=np.int64))
    ctl.record_load(0, [1] * s)  # a list is converted
    ctl.record_load(0, np.ones(s, dtype=np.int32))
    misaligned = np.zeros(8 * s + 1, dtype=np.uint8)[1:].view(np.int64)
    misaligned[:] = 1
    assert not misaligned.flags.aligned
    ctl.record_load(0, misaligned)  # converted, not read in place
    assert ctl.step() is None
    ctl.record_load(1, np.ones(s - 1, dtype=np.int64))  # wrong length: reported by step()
    error = ctl.step()
    assert error is not None and "7" in error and "8" in error, error
    assert ctl.step() is None  # reported once
    with pytest.raises(ValueError, match="layer 2 out of range"):
        ctl.routing(2)
    routing = ctl.routing(1)
    assert routing["epoch"] == 0 and routing["phy2log"].shape == (8,)
    assert routing["log2phy"].shape[0] == 8 and (routing["replica_count"] >= 1).all()
    assert sorted(routing["expert_map"]) == list(range(8))  # one rank holds every expert
    assert "eplb_balancedness" in ctl.prometheus_text()
    assert ctl.metrics()["steps"] == 3
    ctl.close()
    ctl.close()  # twice is fine
    with pytest.raises(ValueError, match="the controller is closed"):
        ctl.step()


def test_registered_buffers_are_held_until_close():
    # Found in review: a bytearray could grow, an mmap close, while the worker sent from them
    # (heap-use-after-free, segfault); one array for two slots was accepted.
    import mmap
    world = sb.in_process_world(1)
    ctl = sb.Controller(None, 1, 4, world[0])
    grown, mapped = bytearray(16), mmap.mmap(-1, 16)
    ctl.register_expert(0, 0, [grown])
    ctl.register_expert(0, 1, [mapped])
    with pytest.raises(BufferError):
        grown.extend(bytes(1024))
    with pytest.raises(BufferError):
        mapped.close()
    shared = np.zeros(6, dtype=np.float32)
    ctl.register_expert(0, 2, [shared[:4]])
    ctl.register_expert(0, 3, [shared[2:]])
    with pytest.raises(RuntimeError, match="Start: layer 0 slot 2 tensor 0 and layer 0 slot 3 "
                                           "tensor 0 share memory"):
        ctl.start()
    ctl.close()
    grown.extend(bytes(1024))  # released
    mapped.close()


def test_a_second_step_at_once_is_refused():
    world = sb.in_process_world(1)
    with sb.Controller(None, 2, 8, world[0]) as ctl:
        s = ctl.slots_per_rank
        for layer in range(2):
            for slot in range(s):
                ctl.register_expert(layer, slot, [np.zeros(4, dtype=np.float32)])
        ctl.start()
        errors, stop = [], threading.Event()

        def steps():
            while not stop.is_set():
                try:
                    ctl.step()
                except RuntimeError as e:
                    errors.append(str(e))

        threads = [threading.Thread(target=steps) for _ in range(2)]
        for t in threads:
            t.start()
        while not errors and threads[0].is_alive():
            threading.Event().wait(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert errors and "step: already running on another thread" in errors[0], errors
        assert not ctl.metrics()["disabled"]


def test_arrays_numpy_cannot_cast_for_pybind_raise():
    # Found in review: these segfaulted (pybind11's conversion returned an empty array).
    with pytest.raises(ValueError, match="phy2log: value 18446744073709551615 is past the int64"):
        sb.expert_map(np.array([[0, 1, 2, 2**64 - 1]], dtype=np.uint64), 1)
    np.testing.assert_array_equal(
        sb.expert_map(np.array([[0, 1, 2, 3]], dtype=np.uint64), 1)[0], [[0, 1, 2, 3]])
    assert sb.balancedness(np.ones((1, 4), dtype=np.longdouble), [[0, 1, 2, 3]], 1) == 1.0


def test_routing_log2phy_lists_each_experts_slots_padded():
    # 2 ranks x 6 slots for 8 experts: the id-order start gives experts 0-3 a replica on each rank.
    world = sb.in_process_world(2)
    with sb.Controller({"num_redundant_experts": 4}, 2, 8, world[0]) as ctl:
        for layer in range(2):
            r = ctl.routing(layer)
            assert r["log2phy"].shape == (8, 2)
            for e in range(8):
                slots = np.flatnonzero(r["phy2log"] == e)
                assert r["replica_count"][e] == len(slots)
                np.testing.assert_array_equal(r["log2phy"][e, :len(slots)], slots)
                assert (r["log2phy"][e, len(slots):] == -1).all()
            assert r["replica_count"].tolist() == [2, 2, 2, 2, 1, 1, 1, 1]


def test_cpu_torch_tensors_are_registered_in_place(torch):
    # Committed experts land in the tensors themselves (requires_grad too: a detached view).
    check_world(run_world(buffer=lambda v: torch.full((8,), float(v), requires_grad=True)))
    world = sb.in_process_world(1)
    with sb.Controller(None, 1, 4, world[0]) as ctl:
        with pytest.raises(TypeError, match="expected host memory, got a tensor on meta"):
            ctl.register_expert(0, 0, [torch.zeros(3, device="meta")])
        # bfloat16 (numpy has none) is registered by its bytes; it was refused.
        ctl.register_expert(0, 0, [torch.zeros(4, dtype=torch.bfloat16)])
    phy2log, _, _ = sb.rebalance_experts(torch.ones(1, 4, dtype=torch.bfloat16, requires_grad=True),
                                         4, 1, 1, 1)
    assert sorted(phy2log[0].tolist()) == [0, 1, 2, 3]
