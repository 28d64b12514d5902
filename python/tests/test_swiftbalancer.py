"""Tests of the Python module swiftbalancer (run by ctest with the built module on PYTHONPATH)."""
import json
import os
import pathlib

import numpy as np
import pytest

import swiftbalancer as sb

# The conformance case of DeepSeek's eplb.py README.
WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
REFERENCE_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                     [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def skewed_load(layers, experts, seed):
    """Token counts whose hottest expert carries several times the mean, as real MoE traffic."""
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 1.0, size=(layers, experts))
    return np.floor(1000 * popularity / popularity.mean(axis=1, keepdims=True))


def check_outputs(phy2log, log2phy, logcnt, experts, num_replicas, num_gpus):
    layers = phy2log.shape[0]
    assert phy2log.dtype == np.int64 and phy2log.shape == (layers, num_replicas)
    assert log2phy.shape == (layers, experts, num_replicas - experts + 1)
    assert logcnt.shape == (layers, experts)
    slots = num_replicas // num_gpus
    for l in range(layers):
        assert sorted(set(phy2log[l])) == list(range(experts))  # every expert has a replica
        for r in range(num_gpus):  # never two replicas of one expert on a rank
            rank = phy2log[l, r * slots:(r + 1) * slots]
            assert len(set(rank)) == slots
        np.testing.assert_array_equal(logcnt[l], np.bincount(phy2log[l], minlength=experts))
        for e in range(experts):
            where = np.flatnonzero(phy2log[l] == e)
            np.testing.assert_array_equal(log2phy[l, e, :len(where)], where)
            assert (log2phy[l, e, len(where):] == -1).all()


def test_expert_map_gives_each_rank_its_local_slots():
    phy2log = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])  # 2 ranks x 2 slots, 4 experts
    emap = sb.expert_map(phy2log, 2)
    assert emap.shape == (2, 2, 4)
    np.testing.assert_array_equal(emap[0], [[0, 1, -1, -1], [-1, -1, 0, 1]])
    np.testing.assert_array_equal(emap[1], [[-1, -1, 1, 0], [1, 0, -1, -1]])
    with pytest.raises(ValueError, match="both slot 0 and slot 1"):
        sb.expert_map([[0, 0, 1, 2]], 2)


def test_deepseek_matches_the_reference():
    phy2log, log2phy, logcnt = sb.rebalance_experts(WEIGHT, 16, 4, 2, 8, algorithm="deepseek")
    np.testing.assert_array_equal(phy2log, REFERENCE_PHY2LOG)
    check_outputs(phy2log, log2phy, logcnt, 12, 16, 8)


def test_swift_from_scratch_is_valid_and_balanced():
    weight = skewed_load(4, 64, seed=1)
    phy2log, log2phy, logcnt = sb.rebalance_experts(weight, 96, 1, 1, 16)
    check_outputs(phy2log, log2phy, logcnt, 64, 96, 16)
    reference, _, _ = sb.rebalance_experts(weight, 96, 1, 1, 16, algorithm="deepseek")
    got = sb.balancedness(weight, phy2log, 16)
    assert got.shape == (4,)
    assert got.mean() >= sb.balancedness(weight, reference, 16).mean() - 0.01
    assert got.min() > 0.9


def test_swift_from_the_current_placement_moves_few_experts_and_keeps_slots():
    before = skewed_load(6, 64, seed=2)
    after = before.copy()
    after[:, :6] *= 4  # a workload shift: six experts get hot
    old, _, _ = sb.rebalance_experts(before, 128, 1, 1, 16)
    stale = sb.balancedness(after, old, 16).mean()
    new, log2phy, logcnt = sb.rebalance_experts(after, 128, 1, 1, 16, current=old)
    check_outputs(new, log2phy, logcnt, 64, 128, 16)
    assert sb.balancedness(after, new, 16).mean() > max(stale, 0.95)
    changed = (new != old).mean()  # slot-stable, so a changed slot is a moved expert
    assert 0 < changed < 0.25
    plan = sb.plan_transfers(old, new, 16, expert_bytes=10)
    np.testing.assert_array_equal(plan["final_phy2log"], new)
    assert plan["slots_changed"] == (new != old).sum()
    assert plan["bytes_received"].sum() == 10 * plan["slots_changed"]
    assert plan["copies"].shape == (plan["slots_changed"], 8)
    # Applying the copies (each reads the old placement) gives the new placement.
    applied = old.copy()
    for layer, expert, dst_rank, dst_slot, src_rank, src_slot, local, _ in plan["copies"]:
        assert old[layer, src_rank * 8 + src_slot] == expert
        applied[layer, dst_rank * 8 + dst_slot] = expert
    np.testing.assert_array_equal(applied, new)


def test_deepseek_from_a_current_placement_keeps_the_slots_of_experts_that_stay():
    weight = skewed_load(2, 16, seed=6)
    fresh, _, _ = sb.rebalance_experts(weight, 32, 1, 1, 8, algorithm="deepseek")
    # The same experts per rank in another slot order: nothing needs to move.
    current = fresh.reshape(2, 8, 4)[:, :, ::-1].reshape(2, 32).copy()
    assert (current != fresh).any()
    stable, _, _ = sb.rebalance_experts(weight, 32, 1, 1, 8, algorithm="deepseek",
                                        current=current)
    np.testing.assert_array_equal(stable, current)


def test_a_cap_bounds_the_experts_moved():
    before = skewed_load(3, 32, seed=3)
    old, _, _ = sb.rebalance_experts(before, 64, 1, 1, 8)
    after = skewed_load(3, 32, seed=4)
    new, _, _ = sb.rebalance_experts(after, 64, 1, 1, 8, current=old, max_changes_per_cycle=5)
    assert 0 < (new != old).sum() <= 5


def test_threads_and_torch_like_inputs_give_the_same_placement():
    weight = skewed_load(8, 32, seed=5)
    one, _, _ = sb.rebalance_experts(weight, 64, 1, 1, 8)
    four, _, _ = sb.rebalance_experts(weight.tolist(), 64, 1, 1, 8, threads=4)
    np.testing.assert_array_equal(one, four)
    ints, _, _ = sb.rebalance_experts(weight.astype(np.int32), 64, 1, 1, 8)
    np.testing.assert_array_equal(one, ints)


@pytest.mark.parametrize("call, message", [
    (lambda: sb.rebalance_experts([[1.0, -2.0]], 2, 1, 1, 2), "weight: load of layer 0, expert 1"),
    (lambda: sb.rebalance_experts([[1.0, float("nan")]], 2, 1, 1, 2), "weight: load of layer 0"),
    (lambda: sb.rebalance_experts([1.0, 2.0], 2, 1, 1, 2), "weight: expected a 2-D array"),
    (lambda: sb.rebalance_experts(WEIGHT, 15, 1, 1, 8), "num_replicas (15)"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, algorithm="magic"), "algorithm"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, target_balancedness=2.0),
     "target_balancedness"),
    (lambda: sb.rebalance_experts(WEIGHT, 8, 1, 1, 8), "slots"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, current=[[0] * 16, [0] * 16]),
     "current"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, current=[list(range(12)) + [0, 1, 2, 99]] * 2),
     "current[0][15]: logical id 99 out of range [0, 12)"),
    (lambda: sb.balancedness(WEIGHT, [[0, 1]], 2), "phy2log"),
    (lambda: sb.balancedness(WEIGHT, np.zeros((0, 16), dtype=np.int64), 8),
     "phy2log: expected at least one layer"),
    (lambda: sb.plan_transfers(np.zeros((0, 16), dtype=np.int64), [[0] * 16], 8),
     "old: expected at least one layer"),
    (lambda: sb.plan_transfers([list(range(12)) + [0, 1, 2, 3]], [list(range(12))], 8),
     "new: 12 physical experts per layer do not divide over 8 ranks"),
    (lambda: sb.plan_transfers([[0, 2_000_000_000]], [[0, 1]], 1),
     "old: logical id 2000000000 implies 2000000001 logical experts, more than the 2 slots"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 0, 1, 8), "groups"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 3, 8), "nodes"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, threads=0), "threads"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, current=[[2**40] * 16] * 2),
     "current[0][0]: logical id 1099511627776 out of range"),
    (lambda: sb.rebalance_experts(np.full((2, 12), 1e308), 16, 1, 1, 8), "largest double"),
    # Options that would be ignored (before: accepted, out of range or not).
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, algorithm="deepseek",
                                  target_balancedness=5),
     "target_balancedness applies to algorithm 'swift' only, not 'deepseek'"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, algorithm="deepseek", threads=4),
     "threads applies to algorithm 'swift' only"),
    (lambda: sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, max_changes_per_layer=0),
     "max_changes_per_layer caps a re-plan from current"),
    (lambda: sb.plan_transfers([list(range(12)) + [0, 1, 2, 3]] * 2,
                               [list(range(12)) + [4, 5, 6, 7]] * 2, 8, expert_bytes=2**62),
     "expert_bytes 4611686018427387904 x 32 slots (2 layers x 16) exceeds the int64 range"),
])
def test_bad_inputs_raise_value_errors_that_say_what_and_where(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value)


def test_arrays_of_the_wrong_kind_raise_type_errors():
    with pytest.raises(TypeError, match="current: expected an array of integers"):
        sb.rebalance_experts(WEIGHT, 16, 1, 1, 8, current=np.zeros((2, 16)))
    with pytest.raises(TypeError, match="weight"):
        sb.rebalance_experts([["a", "b"]], 2, 1, 1, 2)


def test_expert_maps_round_trip_and_missing_files_raise(tmp_path):
    phy2log, _, _ = sb.rebalance_experts(WEIGHT, 16, 4, 2, 8, algorithm="deepseek")
    for fmt_name in ("vllm-ascend", "sglang"):
        path = tmp_path / f"map-{fmt_name}.json"
        sb.write_expert_map(str(path), phy2log, 8, format=fmt_name)
        again, ranks = sb.read_expert_map(str(path), 12, 8)
        np.testing.assert_array_equal(again, phy2log)
        assert ranks == 8
    layout = json.loads((tmp_path / "map-vllm-ascend.json").read_text())
    assert layout["moe_layer_count"] == 2
    with pytest.raises(FileNotFoundError, match="missing.json"):
        sb.read_expert_map(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="format"):
        sb.write_expert_map(str(tmp_path / "x.json"), phy2log, 8, format="toml")
    assert not (tmp_path / "x.json").exists()


def test_paths_may_be_pathlike_and_never_hold_a_nul(tmp_path):
    # Found in review: pathlib.Path was refused, and "a.json\0junk" read or wrote a.json.
    phy2log, _, _ = sb.rebalance_experts(WEIGHT, 16, 1, 1, 8)
    sb.write_expert_map(tmp_path / "m.json", phy2log, 8)
    again, _ = sb.read_expert_map(tmp_path / "m.json")
    np.testing.assert_array_equal(again, phy2log)
    with pytest.raises(ValueError, match="path: contains a NUL character"):
        sb.write_expert_map(str(tmp_path / "n.json") + "\0x", phy2log, 8)
    assert not (tmp_path / "n.json").exists()
    with pytest.raises(ValueError, match="path: contains a NUL character"):
        sb.read_load(str(tmp_path / "m.json") + "\0junk")
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike path, got int"):
        sb.read_load(3)
    with pytest.raises(ValueError, match="num_logical_experts: expected -1"):
        sb.write_expert_map(tmp_path / "k.json", phy2log, 8, num_logical_experts=-5)


def test_read_load_keeps_dense_rows(tmp_path):
    path = tmp_path / "load.json"
    path.write_text(json.dumps({"logical_count": [[0, 0, 0], [3, 1, 2]]}))
    np.testing.assert_array_equal(sb.read_load(str(path)), [[0, 0, 0], [3, 1, 2]])
    with pytest.raises(ValueError, match="logical_count"):
        path.write_text(json.dumps({"logical_count": [[1, -1, 0]]}))
        sb.read_load(str(path))


def test_real_deepseek_v3_statistics():
    # EPLB_DATA_DIR, or ../shared/data/expert-load next to the source tree (as the C++ tests).
    default = pathlib.Path(__file__).resolve().parents[2].parent / "shared/data/expert-load"
    data = pathlib.Path(os.environ.get("EPLB_DATA_DIR") or default)
    path = data / "deepseek-v3" / "prefill_in4096.json"
    if not path.exists():
        pytest.skip(f"{path} not found: set EPLB_DATA_DIR to the expert-load folder")
    load = sb.read_load(str(path))
    load = load[load.sum(axis=1) > 0]  # MoE layers only
    phy2log, _, _ = sb.rebalance_experts(load, 320, 1, 1, 64)
    assert sb.balancedness(load, phy2log, 64).mean() >= 0.98


def test_random_inputs_raise_or_return_valid_placements():
    """Random shapes and values, mostly valid, some not: every call returns a valid result or
    raises one of the documented errors with a message; nothing crashes."""
    rng = np.random.default_rng(11)
    returned = 0
    for case in range(300):
        layers, experts = int(rng.integers(1, 4)), int(rng.integers(1, 12))
        gpus = int(rng.integers(1, 6))
        slots = min(experts, -(-experts // gpus) + int(rng.integers(0, 3)))  # some spare
        replicas = gpus * slots
        weight = rng.integers(0, 50, size=(layers, experts)).astype(float)
        bad = rng.random()
        if bad < 0.05:
            weight[0, 0] = -1 if rng.random() < 0.5 else np.nan
        elif bad < 0.1:
            replicas -= 1
        elif bad < 0.15:
            gpus = 0
        current = None
        if rng.random() < 0.5 and gpus > 0 and replicas % gpus == 0:
            try:
                current = sb.rebalance_experts(rng.random((layers, experts)), replicas, 1, 1,
                                               gpus)[0]
            except ValueError:
                current = None
            if current is not None and rng.random() < 0.2:
                current[0, 0] = int(rng.integers(-1, experts + 1))  # maybe a bad id or duplicate
        algorithm = "swift" if rng.random() < 0.7 else "deepseek"
        try:
            phy2log, log2phy, logcnt = sb.rebalance_experts(
                weight, replicas, 1, 1, gpus, algorithm=algorithm, current=current)
        except (ValueError, TypeError) as e:
            assert str(e), f"case {case}: empty message"
            continue
        returned += 1
        check_outputs(phy2log, log2phy, logcnt, experts, replicas, gpus)
        if current is not None:
            plan = sb.plan_transfers(current, phy2log, gpus, num_logical_experts=experts)
            assert plan["slots_changed"] == (plan["final_phy2log"] != current).sum()
    assert returned > 200, returned  # the valid paths are exercised too


def test_cpu_torch_tensors_are_taken_as_arrays(torch):
    phy2log, _, _ = sb.rebalance_experts(torch.tensor(WEIGHT), 16, 4, 2, 8, algorithm="deepseek")
    np.testing.assert_array_equal(phy2log, REFERENCE_PHY2LOG)
    again, _, _ = sb.rebalance_experts(torch.tensor(WEIGHT, dtype=torch.float32), 16, 4, 2, 8,
                                       current=torch.from_numpy(phy2log))
    assert torch.from_numpy(again).dtype == torch.int64
    with pytest.raises(TypeError, match="current: expected an array of integers"):
        sb.rebalance_experts(torch.tensor(WEIGHT), 16, 4, 2, 8, current=torch.zeros(2, 16))
