from vidseg_ros.runtime.stats import OK, WARN, NodeStats


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
