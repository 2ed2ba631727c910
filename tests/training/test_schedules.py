import math

import pytest

from training.schedules import cosine_momentum, warmup_cosine


def test_warmup_rises_linearly_to_base():
    values = [warmup_cosine(step, 100, 10, 1.0) for step in range(10)]
    assert values == pytest.approx([(step + 1) / 10 for step in range(10)])


def test_cosine_decays_to_final():
    assert warmup_cosine(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0, final=0.1) == pytest.approx(0.1)


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0, 1000, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(500, 1000, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(1000, 1000, 0.996) == pytest.approx(1.0)


def test_schedules_reject_empty_runs():
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0, 0, 0.99)


def test_warmup_cosine_is_continuous_at_warmup_end():
    before = warmup_cosine(9, 100, 10, 2.0)
    after = warmup_cosine(10, 100, 10, 2.0)
    assert math.isclose(before, after)
