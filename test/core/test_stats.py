import numpy as np
import pytest

from vidseg_ros.runtime.stats import OK, WARN, NodeStats, upstream_loss


def _feed(stats: NodeStats, seconds: float, rate: float, *, drop_every: int = 0, start: float = 0.0) -> float:
    t = start
    for i in range(int(seconds * rate)):
        t = start + i / rate
        stats.on_input(t)
        if drop_every and i % drop_every:
            stats.on_drop(t)
        else:
            stats.on_output(t, latency_ms=10.0 + i % 10, node_latency_ms=5.0, stages_ms={"inference": 4.0})
    return t


def test_healthy_stream_is_ok_with_rates_and_percentiles():
    stats = NodeStats(window_s=5.0)
    now = _feed(stats, 10, 20)
    report = stats.report(now, expected_rate=10, drop_warn_ratio=0.5)
    assert report.level == OK
    assert 19.0 <= float(report.values["output_rate_hz"]) <= 20.5
    assert 14.0 <= float(report.values["latency_p50_ms"]) <= 15.0
    assert float(report.values["latency_max_ms"]) == 19.0
    assert report.values["mean_inference_ms"] == "4.00"
    assert report.values["frames_in"] == "200"


def test_slow_output_warns():
    stats = NodeStats(window_s=5.0)
    now = _feed(stats, 10, 2)
    report = stats.report(now, expected_rate=5, drop_warn_ratio=0.9)
    assert report.level == WARN
    assert "below expected" in report.message


def test_drops_over_threshold_warn_and_are_counted():
    stats = NodeStats(window_s=5.0)
    now = _feed(stats, 10, 30, drop_every=3)  # two of three frames dropped
    report = stats.report(now, expected_rate=1, drop_warn_ratio=0.5)
    assert report.level == WARN
    assert "dropping" in report.message
    assert int(report.values["dropped_frames"]) == 200


def test_no_input_warns_and_windows_are_bounded():
    stats = NodeStats(window_s=5.0, max_samples=16)
    _feed(stats, 10, 30)
    assert len(stats._out) == 16
    report = stats.report(1000.0, expected_rate=1, drop_warn_ratio=0.5)
    assert report.level == WARN and "no input" in report.message
    assert report.values["latency_p50_ms"] == "nan"


def _stamps(n: int, period_ns: int, withheld: set[int], jitter_ns: int = 0, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [
        i * period_ns + int(rng.integers(-jitter_ns, jitter_ns + 1)) for i in range(n) if i not in withheld
    ]


@pytest.mark.parametrize("period_ms", [33, 100])
def test_upstream_loss_counts_withheld_frames_despite_jitter(period_ms):
    withheld = {5, 6, 7, 20, 41, 42, 60, 61, 62, 63}
    lost, period = upstream_loss(_stamps(90, period_ms * 1_000_000, withheld, jitter_ns=3_000_000))
    assert lost == len(withheld)
    assert period == pytest.approx(period_ms / 1e3, abs=0.004)


def test_upstream_loss_sees_the_period_through_mostly_alternate_loss():
    """As measured over best-effort loopback: most frames two periods apart, a few back to back."""
    kept = [0, 1, 2, 3, 4]  # a few back-to-back frames at the start
    kept += list(range(6, 92, 2)) + [95, 99]  # then every other frame, and two longer holes
    stamps = [i * 33_333_333 for i in kept]
    lost, period = upstream_loss(stamps)
    assert period == pytest.approx(1 / 30, rel=0.01)
    assert lost == 99 + 1 - len(kept)


def test_upstream_loss_is_not_fooled_by_a_double_triggered_frame():
    stamps = sorted(
        [i * 50_000_000 for i in range(40)] + [700_000_000 + 2_000_000, 1_400_000_000 + 3_000_000]
    )
    assert upstream_loss(stamps) == (0, pytest.approx(0.05))


def test_upstream_loss_ignores_loops_pauses_and_short_histories():
    stamps = _stamps(30, 50_000_000, set())
    looped = stamps + [s + 0 for s in stamps]  # the bag starts over: one backwards gap
    assert upstream_loss(looped)[0] == 0
    paused = stamps + [s + 10**10 for s in stamps]  # 10 s of silence: a pause, not 200 lost frames
    assert upstream_loss(paused, pause_s=1.0)[0] == 0
    assert upstream_loss(stamps[:3]) == (0, 0.0)


def test_lost_before_the_node_warns_and_is_reported():
    stats = NodeStats(window_s=5.0)
    period = 1 / 30
    for i in range(150):
        if i % 10 in (3, 4, 5, 6):  # bursts of 4 in 10 frames never arrive
            continue
        t = i * period
        stats.on_input(t, stamp_ns=int(t * 1e9))
        stats.on_output(t, latency_ms=5.0, node_latency_ms=5.0, stages_ms={})
    report = stats.report(150 * period, expected_rate=1, drop_warn_ratio=0.3)
    assert report.level == WARN and "lost before the node" in report.message
    assert float(report.values["upstream_loss_ratio"]) == pytest.approx(0.4, abs=0.02)
    assert float(report.values["stamp_period_ms"]) == pytest.approx(1e3 / 30, abs=0.1)
    assert report.values["dropped_frames"] == "0"  # the node itself dropped nothing
