"""The network model on its own: fates of messages, partitions, spikes, determinism."""

from __future__ import annotations

import random

import pytest

from keyswarm.sim.network import CLIENT, LinkProfile, Network

N = 2_000


def make(seed: int, **profile: float) -> Network:
    return Network(random.Random(seed), default=LinkProfile(**profile))


def send_many(net: Network, src: str = "a", dst: str = "b", n: int = N, start: float = 0.0, step: float = 0.001):
    return [net.transit(src, dst, start + i * step) for i in range(n)]


def test_loss_one_drops_everything(sim_seed: int) -> None:
    net = make(sim_seed, loss=1.0)
    fates = send_many(net)
    assert all(f.arrivals == () and f.dropped == "loss" for f in fates), f"seed={sim_seed}"
    assert net.stats.lost == N, f"seed={sim_seed}"


def test_loss_zero_delivers_everything(sim_seed: int) -> None:
    fates = send_many(make(sim_seed))
    assert all(len(f.arrivals) == 1 and f.dropped is None for f in fates), f"seed={sim_seed}"


def test_loss_rate_is_roughly_the_probability(sim_seed: int) -> None:
    net = make(sim_seed, loss=0.2)
    send_many(net)
    assert 0.15 * N < net.stats.lost < 0.25 * N, f"seed={sim_seed}: lost {net.stats.lost} of {N}"


def test_duplicate_one_delivers_two_copies(sim_seed: int) -> None:
    net = make(sim_seed, duplicate=1.0)
    fates = send_many(net)
    assert all(len(f.arrivals) == 2 and f.duplicated for f in fates), f"seed={sim_seed}"
    assert net.stats.duplicated == N and net.stats.delivered_copies == 2 * N, f"seed={sim_seed}"


def test_client_links_never_duplicate(sim_seed: int) -> None:
    net = make(sim_seed, duplicate=1.0)
    net.set_link(CLIENT, "a", LinkProfile(duplicate=1.0))
    fate = net.transit(CLIENT, "a", 0.0, allow_duplicate=False)
    assert len(fate.arrivals) == 1 and not fate.duplicated, f"seed={sim_seed}"


def test_oneway_partition_blocks_one_direction_only(sim_seed: int) -> None:
    net = make(sim_seed)
    net.partition_oneway("a", "b")
    assert net.transit("a", "b", 0.0).dropped == "partition", f"seed={sim_seed}"
    assert len(net.transit("b", "a", 0.0).arrivals) == 1, f"seed={sim_seed}"
    assert len(net.transit("a", "c", 0.0).arrivals) == 1, f"seed={sim_seed}"


def test_partition_blocks_both_ways_and_heal_restores(sim_seed: int) -> None:
    net = make(sim_seed)
    net.partition("a", "b")
    assert net.transit("a", "b", 0.0).dropped == "partition", f"seed={sim_seed}"
    assert net.transit("b", "a", 0.0).dropped == "partition", f"seed={sim_seed}"
    assert net.partitions() == (("a", "b"), ("b", "a")), f"seed={sim_seed}"
    net.heal()
    assert len(net.transit("a", "b", 1.0).arrivals) == 1, f"seed={sim_seed}"
    assert len(net.transit("b", "a", 1.0).arrivals) == 1, f"seed={sim_seed}"
    assert net.stats.blocked == 2, f"seed={sim_seed}"


def test_reconnect_undoes_one_partition_only(sim_seed: int) -> None:
    net = make(sim_seed)
    net.partition("a", "b")
    net.partition("a", "c")
    net.reconnect("b", "a")
    assert not net.is_blocked("a", "b") and not net.is_blocked("b", "a"), f"seed={sim_seed}"
    assert net.is_blocked("a", "c") and net.is_blocked("c", "a"), f"seed={sim_seed}"


def test_isolate_cuts_every_link_of_a_node_clients_included(sim_seed: int) -> None:
    net = make(sim_seed)
    net.isolate("a")
    for src, dst in (("a", "b"), ("b", "a"), (CLIENT, "a"), ("a", CLIENT)):
        assert net.transit(src, dst, 0.0).dropped == "partition", f"seed={sim_seed}: {src}->{dst}"
    assert len(net.transit("b", "c", 0.0).arrivals) == 1, f"seed={sim_seed}"
    net.rejoin("a")
    assert len(net.transit("a", "b", 0.0).arrivals) == 1, f"seed={sim_seed}"


def test_latency_stays_within_the_support(sim_seed: int) -> None:
    profile = LinkProfile(latency_s=0.002, jitter_s=0.001, jitter_cap_s=0.004)
    net = Network(random.Random(sim_seed), default=profile)
    low, high = profile.latency_bounds()
    # Sends far apart, so the FIFO line never holds a message back.
    delays = [f.arrivals[0] - i for i, f in enumerate(net.transit("a", "b", float(i)) for i in range(N))]
    assert all(low <= d <= high + 1e-12 for d in delays), f"seed={sim_seed}: {min(delays)}..{max(delays)}"
    assert max(delays) - min(delays) > 0.002, f"seed={sim_seed}: no spread in {min(delays)}..{max(delays)}"


def test_links_are_fifo_without_reordering(sim_seed: int) -> None:
    net = make(sim_seed, latency_s=0.001, jitter_s=0.002)
    arrivals = [f.arrivals[0] for f in send_many(net, step=0.0001)]
    assert arrivals == sorted(arrivals), f"seed={sim_seed}"


def test_reorder_actually_reorders_sometimes(sim_seed: int) -> None:
    net = make(sim_seed, latency_s=0.001, jitter_s=0.0002, reorder=0.2, reorder_delay_max_s=0.01)
    arrivals = [f.arrivals[0] for f in send_many(net, step=0.0005)]
    inversions = sum(1 for x, y in zip(arrivals, arrivals[1:]) if y < x)
    assert inversions > 10, f"seed={sim_seed}: only {inversions} inversions"
    assert net.stats.reordered > 0.15 * N, f"seed={sim_seed}"


def test_spike_multiplies_latency_inside_its_window_only(sim_seed: int) -> None:
    net = make(sim_seed, latency_s=0.001, jitter_s=0.0)
    net.spike(10.0, 20.0, 50.0, src="a", dst="b")
    assert net.transit("a", "b", 5.0).arrivals[0] == pytest.approx(5.001), f"seed={sim_seed}"
    assert net.transit("a", "b", 10.0).arrivals[0] == pytest.approx(10.05), f"seed={sim_seed}"
    assert net.transit("b", "a", 10.0).arrivals[0] == pytest.approx(10.001), f"seed={sim_seed}"
    assert net.transit("a", "b", 20.0).arrivals[0] == pytest.approx(20.001), f"seed={sim_seed}"


def test_per_link_profile_overrides_the_default(sim_seed: int) -> None:
    net = make(sim_seed, latency_s=0.001, jitter_s=0.0)
    net.set_link("a", "b", LinkProfile(latency_s=0.1, jitter_s=0.0))
    assert net.transit("a", "b", 0.0).arrivals[0] == pytest.approx(0.1), f"seed={sim_seed}"
    assert net.transit("b", "a", 0.0).arrivals[0] == pytest.approx(0.1), f"seed={sim_seed}"
    assert net.transit("a", "c", 0.0).arrivals[0] == pytest.approx(0.001), f"seed={sim_seed}"


def test_same_seed_same_fates(sim_seed: int) -> None:
    profile = dict(loss=0.1, duplicate=0.1, reorder=0.1)
    first = send_many(make(sim_seed, **profile))
    second = send_many(make(sim_seed, **profile))
    assert first == second, f"seed={sim_seed}"
    assert first != send_many(make(sim_seed + 1000, **profile)), f"seed={sim_seed}"


@pytest.mark.parametrize("bad", [dict(loss=1.5), dict(duplicate=-0.1), dict(latency_s=-1.0), dict(jitter_s=float("nan"))])
def test_bad_profiles_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        LinkProfile(**bad)
