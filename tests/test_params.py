"""Parameter specs: value, range, choice, weights; validation; deterministic draws."""

import pytest

from synth.errors import ConfigError
from synth.params import Param, rng_for


def draws(param, n=200, seed=0):
    return [param.sample(seed, i) for i in range(n)]


def test_fixed_value_is_returned_for_every_sample():
    assert set(draws(Param.number("shadow.opacity", 0.3, 0, 1))) == {0.3}


def test_range_is_uniform_within_bounds_and_covers_it():
    values = draws(Param.number("shadow.opacity", [0.2, 0.5], 0, 1), n=500)
    assert min(values) >= 0.2 and max(values) <= 0.5
    assert min(values) < 0.22 and max(values) > 0.48


def test_odd_range_draws_only_odd_integers_spanning_the_range():
    values = draws(Param.number("shadow.blur", [31, 111], 1, 1001, integer=True, odd=True), n=500)
    assert all(isinstance(v, int) and v % 2 == 1 and 31 <= v <= 111 for v in values)
    assert min(values) == 31 and max(values) == 111


def test_choice_list_and_weights():
    assert set(draws(Param.number("shadow.blur", [31, 51, 71], 1, 1001, odd=True))) == {31, 51, 71}
    weighted = draws(Param.option("shadow.patterns", {"a": 9, "b": 1}, ["a", "b", "c"]), n=1000)
    assert 0.8 < weighted.count("a") / 1000 < 0.97 and "c" not in weighted


def test_draws_depend_on_seed_and_index_only():
    p = Param.number("shadow.opacity", [0.0, 1.0], 0, 1)
    assert p.sample(3, 17) == p.sample(3, 17)
    assert p.sample(3, 17) != p.sample(4, 17)
    assert p.sample(3, 17) != p.sample(3, 18)
    # another key gets another stream
    assert Param.number("other.key", [0.0, 1.0], 0, 1).sample(3, 17) != p.sample(3, 17)
    assert rng_for(1, 2, "k").random() == rng_for(1, 2, "k").random()


@pytest.mark.parametrize("spec, message", [
    (1.7, "shadow.opacity=1.7: 1.7 is not a number in [0, 1]"),
    ([0.5, 0.2], "shadow.opacity=[0.5, 0.2]: range has lo > hi"),
    ([], "shadow.opacity=[]: empty list"),
    ("high", "shadow.opacity=high: 'high' is not a number"),
])
def test_bad_numbers_name_the_key(spec, message):
    with pytest.raises(ConfigError) as err:
        Param.number("shadow.opacity", spec, 0, 1)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_even_kernel_and_unknown_option_are_refused():
    with pytest.raises(ConfigError, match="shadow.blur=40: 40 is even"):
        Param.number("shadow.blur", 40, 1, 1001, integer=True, odd=True)
    with pytest.raises(ConfigError, match="shadow.blur=.*not a number in \\[1, 1001\\] \\(odd integer\\)"):
        Param.number("shadow.blur", 31.5, 1, 1001, integer=True, odd=True)
    with pytest.raises(ConfigError, match="unknown option 'nope'; choose from a, b"):
        Param.option("shadow.patterns", "nope", ["a", "b"])
    with pytest.raises(ConfigError, match="weights must be non-negative"):
        Param.option("shadow.patterns", {"a": -1}, ["a", "b"])


def test_fixed_settings_check_type_and_bounds_in_one_line():
    from synth.params import setting
    assert setting("batch_size", 4, 1, integer=True) == 4 and setting("x", 3.0, 1, integer=True) == 3
    assert setting("logger.image_size", None, 16, integer=True, optional=True) is None
    for value, message in [(0, "batch_size=0: must be an integer >= 1"),
                           ("abc", "batch_size=abc: must be an integer >= 1"),
                           (2.5, "batch_size=2.5: must be an integer >= 1"),
                           (True, "batch_size=True: must be an integer >= 1")]:
        with pytest.raises(ConfigError) as err:
            setting("batch_size", value, 1, integer=True)
        assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"^m=0.5: must be a number >= 0 and < 0.5$"):
        setting("m", 0.5, 0.0, 0.5, hi_open=True)
    with pytest.raises(ConfigError, match=r"^m=\[0.1,0.2\]: must be a number >= 0 and <= 1$"):
        setting("m", [0.1, 0.2], 0.0, 1.0)
