"""Which metrics count as worse (pure)."""

from __future__ import annotations

from quicktune.evaluate.regression import DEFAULT_THRESHOLD, LOSS, fell, find_regressions, loss_rose


def test_a_share_fell_by_more_than_the_threshold_in_points():
    assert DEFAULT_THRESHOLD == 2.0
    assert fell(0.90, 0.85, 2.0)  # 5 points
    assert not fell(0.90, 0.88, 2.0)  # exactly 2 points is not more than 2
    assert not fell(0.90, 0.95, 2.0)  # better
    assert not fell(None, 0.5, 2.0) and not fell(0.5, None, 2.0)
    assert fell(0.5, 0.49, 0.0)  # --threshold 0: any fall


def test_the_loss_rose_by_more_than_the_threshold_in_percent():
    assert loss_rose(1.0, 1.03, 2.0) and not loss_rose(1.0, 1.02, 2.0) and not loss_rose(1.0, 0.5, 2.0)
    assert not loss_rose(None, 1.0, 2.0)


def test_regressions_in_the_metrics_order():
    before = {"exact_match": 0.9, "json_valid": None, "json_fields": 0.95, "ends_with_eos": 1.0}
    after = {"exact_match": 0.5, "json_valid": 0.2, "json_fields": 0.96, "ends_with_eos": 0.9}
    assert find_regressions(before, after, 0.20, 0.30) == ["exact_match", "ends_with_eos", LOSS]
    assert find_regressions(before, after, 0.20, 0.20, threshold=50) == []
