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


def test_warmup_cosine_without_warmup_starts_at_base():
    assert warmup_cosine(0, 100, 0, 2.0) == pytest.approx(2.0)


def test_warmup_cosine_is_pure_function_of_step():
    forward = [warmup_cosine(step, 50, 5, 1.0) for step in range(50)]
    backward = [warmup_cosine(step, 50, 5, 1.0) for step in reversed(range(50))]
    assert forward == backward[::-1]


def test_warmup_cosine_rejects_negative_step():
    with pytest.raises(ValueError, match="step must be non-negative"):
        warmup_cosine(-1, 100, 10, 1.0)


def test_warmup_cosine_rejects_warmup_longer_than_run():
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, 10, 11, 1.0)
