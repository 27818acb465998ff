"""Property-based tests (Hypothesis) of the parameter parser and the seed derivation, and the
config values that must stop a run before any image is read (NaN, inf, zero weights, seeds)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth.errors import ConfigError
from synth.params import MAX_SEED, Param, check_seed, rng_for, setting
from tests.conftest import REPO, run_synth

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
keys = st.text(min_size=1, max_size=30)
seeds = st.integers(0, MAX_SEED)
indices = st.integers(0, 10**9)


# --- the parser --------------------------------------------------------------------------------
@given(lo=finite, hi=finite, seed=seeds, index=indices)
def test_a_range_draws_only_inside_it_or_is_refused(lo, hi, seed, index):
    spec = [lo, hi]
    if lo > hi:
        with pytest.raises(ConfigError, match=r"^shadow\.x=.*range has lo > hi"):
            Param.number("shadow.x", spec, -1e6, 1e6)
        return
    value = Param.number("shadow.x", spec, -1e6, 1e6).sample(seed, index)
    assert lo <= value <= hi


@given(lo=st.integers(1, 500), width=st.integers(0, 500), seed=seeds, index=indices)
def test_an_odd_range_draws_an_odd_integer_inside_it(lo, width, seed, index):
    hi = lo + width
    try:
        param = Param.number("shadow.blur", [lo, hi], 1, 1001, integer=True, odd=True)
    except ConfigError as err:  # only a range with no odd value in it is refused
        assert lo == hi and lo % 2 == 0 and "holds no odd value" in str(err)
        return
    value = param.sample(seed, index)
    assert isinstance(value, int) and value % 2 == 1 and lo <= value <= hi


@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), where=st.sampled_from(["fixed", "lo", "hi", "choice"]))
def test_nan_and_inf_are_refused_in_every_spec_shape_naming_the_key(bad, where):
    spec = {"fixed": bad, "lo": [bad, 0.5], "hi": [0.1, bad], "choice": [0.1, 0.2, bad]}[where]
    with pytest.raises(ConfigError) as err:
        Param.number("shadow.opacity", spec, -math.inf, math.inf)
    assert str(err.value).startswith("shadow.opacity=") and "\n" not in str(err.value)


@given(weights=st.lists(st.sampled_from([0, 0.0, math.nan, math.inf, -1]), min_size=1, max_size=4))
def test_weights_that_give_no_probabilities_are_a_config_error_not_a_nan_mid_run(weights):
    spec = {f"p{i}": w for i, w in enumerate(weights)}
    with pytest.raises(ConfigError, match=r"^shadow\.patterns: weights must be"):
        Param.option("shadow.patterns", spec, list(spec))


def test_all_zero_weights_are_refused_for_options_and_numbers():
    with pytest.raises(ConfigError, match=r"^shadow\.patterns: weights must be .* positive sum"):
        Param.option("shadow.patterns", {"cloud": 0, "fence": 0}, ["cloud", "fence"])
    with pytest.raises(ConfigError, match=r"^shadow\.blur: weights must be"):
        Param.number("shadow.blur", {31: 0, 51: 0}, 1, 1001, odd=True)
    # one zero among positive weights is fine: that option is never drawn
    param = Param.option("shadow.patterns", {"cloud": 0, "fence": 1}, ["cloud", "fence"])
    assert {param.sample(0, i) for i in range(50)} == {"fence"}


@given(value=st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf])),
       integer=st.booleans())
def test_setting_returns_a_value_within_bounds_or_one_line_naming_the_key(value, integer):
    try:
        got = setting("k.x", value, -10.0, 10.0, integer=integer)
    except ConfigError as err:
        assert str(err).startswith("k.x=") and "\n" not in str(err)
        assert not math.isfinite(value) or not -10 <= value <= 10 or (integer and value != int(value))
        return
    assert math.isfinite(got) and -10 <= got <= 10 and got == value


# --- the seed derivation -----------------------------------------------------------------------
@given(seed=seeds, index=indices, key=keys)
@settings(max_examples=50)
def test_the_stream_depends_only_on_seed_index_and_key(seed, index, key):
    first = rng_for(seed, index, key).random(4)
    np.random.seed(12345)  # global numpy state and other streams do not leak in
    rng_for(seed + 1, index, key).random(100)
    assert np.array_equal(rng_for(seed, index, key).random(4), first)


@given(seed=st.integers(0, 2**32 - 1), high=st.integers(1, 2**31 - 1), index=indices)
@settings(max_examples=50)
def test_the_whole_seed_is_used(seed, high, index):
    """Seeds that agree in their low 32 bits give different streams."""
    assert rng_for(seed, index, "k").random() != rng_for(seed + high * 2**32, index, "k").random()


def test_seed_2_to_the_32_does_not_give_the_images_of_seed_0():
    big = Param.number("shadow.opacity", [0.0, 1.0], 0, 1)
    assert [big.sample(2**32, i) for i in range(5)] != [big.sample(0, i) for i in range(5)]


def test_seeds_below_2_to_the_32_keep_their_streams():
    """Datasets made before the whole seed was used regenerate exactly (values fixed at that time)."""
    assert rng_for(0, 0, "shadow.opacity").integers(0, 2**31) == np.random.default_rng(
        [0, 0, 3338407978]).integers(0, 2**31)
    assert Param.number("shadow.opacity", [0.0, 1.0], 0, 1).sample(7, 3) == 0.40275657525622754


@pytest.mark.parametrize("value", [-1, 2**63, 1.5, math.nan, math.inf, "abc", True])
def test_seeds_that_cannot_be_used_are_refused_in_one_line(value):
    with pytest.raises(ConfigError) as err:
        check_seed(value)
    assert str(err.value) == f"seed={value}: must be an integer in [0, 2**63 - 1]"


def test_large_seeds_are_kept_whole():
    assert check_seed(2**63 - 1) == 2**63 - 1 and check_seed(2**32) == 2**32 and check_seed(3.0) == 3


DRAWS = ("from synth.params import Param, rng_for; "
         "print(rng_for(5, 7, 'shadow.pattern.cloud').random(), "
         "Param.option('shadow.patterns', ['a','b','c','d','e'], list('abcde')).sample(5, 7))")


def test_draws_do_not_depend_on_the_process_hash_seed():
    """Python salts str hashes per process; a derivation built on hash() would differ here."""
    outputs = {subprocess.run([sys.executable, "-c", DRAWS], capture_output=True, text=True, check=True, cwd=REPO,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
               for hash_seed in ("0", "1", "12345")}
    assert len(outputs) == 1


# --- bad values stop the job before any image is read -------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("max_failure_rate=nan", "max_failure_rate=nan: must be a number"),
    ("segmentation.margin=nan", "segmentation.margin=nan: must be a number"),
    ("segmentation.feather=nan", "segmentation.feather=nan: must be a number"),
    ("albedo.balance=nan", "albedo.balance=nan: must be a number"),
    ("albedo.sigmas=[nan]", "albedo.sigmas=[nan]: expected a list of positive numbers"),
    ("albedo.sigmas=[15,inf]", "albedo.sigmas=[15, inf]: expected a list of positive numbers"),
    ("shadow.opacity=inf", "shadow.opacity=inf: inf is not a number"),
    ("shadow.patterns={cloud:0,fence:0}", "shadow.patterns: weights must be"),
    ("seed=-1", "seed=-1: must be an integer"),
    ("seed=nan", "seed=nan: must be an integer"),
    ("batch_size=nan", "batch_size=nan: must be an integer"),
])
def test_non_finite_and_unusable_values_are_config_errors_naming_the_key(override, message, tmp_path):
    """The same build_runner() as ``python -m synth``: a ConfigError there exits 2 before any
    image is read (the subprocess test below shows that for one of them)."""
    from synth.app import build_runner
    from tests.conftest import compose_config

    with pytest.raises(ConfigError) as err:
        build_runner(compose_config("logger=none", override), tmp_path / "run")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.slow
def test_max_failure_rate_nan_exits_2_before_any_image_is_read(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.png").write_text("not a picture: reading it would fail the sample, not the job")
    proc = run_synth(tmp_path / "run", "data=folder", f"data.path={data}", "max_failure_rate=nan", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: max_failure_rate=nan: must be a number >= 0 and <= 1"
    assert not (tmp_path / "run" / "failures.jsonl").exists()  # no sample was started


# --- what the mutation run (make mutants) found untested -----------------------------------------
def test_an_integer_range_draws_every_integer_in_it_inclusive():
    """A range of two integers gives integers (documented: "integers stay integers"), both ends included."""
    for param in (Param.number("k", [2, 5], 0, 10, integer=True), Param.number("k", [2, 5], 0, 10)):
        values = [param.sample(0, i) for i in range(400)]
        assert all(type(v) is int for v in values) and set(values) == {2, 3, 4, 5}
    assert {Param.number("k", [2.0, 5.0], 0, 10).sample(0, i) for i in range(50)} - {2, 3, 4, 5}  # floats stay floats
    assert {Param.number("k", [2.0, 5.0], 0, 10, integer=True).sample(0, i) for i in range(100)} == {2, 3, 4, 5}
    assert all(type(v) is float for v in (Param.number("k", [2, 5.5], 0, 10).sample(0, i) for i in range(50)))


def test_an_odd_range_with_even_ends_draws_every_odd_value_inside():
    values = {Param.number("shadow.blur", [2, 10], 1, 1001, integer=True, odd=True).sample(0, i) for i in range(300)}
    assert values == {3, 5, 7, 9}


def test_a_weighted_numeric_choice_draws_by_weight_from_its_own_stream():
    param = Param.number("shadow.blur", {31: 1, 71: 3}, 1, 1001, integer=True, odd=True)
    values = [param.sample(0, i) for i in range(2000)]
    assert set(values) == {31, 71} and 0.7 < values.count(71) / len(values) < 0.8
    other = Param.number("other.key", {31: 1, 71: 3}, 1, 1001, integer=True, odd=True)
    assert [other.sample(0, i) for i in range(50)] != values[:50]


def test_a_single_option_is_always_drawn():
    assert {Param.option("shadow.color", "sky", ["sky", "neutral"]).sample(0, i) for i in range(20)} == {"sky"}
    assert {Param.option("shadow.color", ["sky"], ["sky", "neutral"]).sample(0, i) for i in range(20)} == {"sky"}


def test_omegaconf_specs_with_interpolations_are_resolved():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"lo": 0.2, "spec": ["${lo}", 0.5], "weights": {"a": "${w}", "b": 1}, "w": 3})
    values = [Param.number("k", cfg.spec, 0, 1).sample(0, i) for i in range(100)]
    assert min(values) >= 0.2 and max(values) <= 0.5
    assert Param.option("k", cfg.weights, ["a", "b"]).weights == (3, 1)


def test_numpy_values_are_drawn_as_plain_python_values():
    param = Param.number("k", [np.float64(0.1), np.float64(0.2), np.float64(0.3)], 0, 1)
    assert all(type(param.sample(0, i)) is float for i in range(10))


@pytest.mark.parametrize("make, message", [
    (lambda: Param.number("k", 2.5, 0, 10, integer=True), "k=2.5: 2.5 is not a number in [0, 10] (integer)"),
    (lambda: Param.number("k", 11, 0, 10), "k=11: 11 is not a number in [0, 10]"),
    (lambda: Param.number("k", [1, 11], 0, 10), "k=[1,11]: 11 is not a number in [0, 10]"),
    (lambda: Param.number("shadow.blur", [30, 30], 1, 1001, integer=True, odd=True),
     "shadow.blur=[30,30]: range holds no odd value"),
    (lambda: Param.option("k", "nope", ["a", "b"]), "k=nope: unknown option 'nope'; choose from a, b"),
    (lambda: Param.option("k", [], ["a", "b"]), "k: empty; choose from a, b"),
    (lambda: setting("k", "x"), "k=x: must be a number"),
    (lambda: setting("k", "x", None, 5), "k=x: must be a number <= 5"),
    (lambda: setting("k", None, 1, integer=True), "k=None: must be an integer >= 1"),
    (lambda: setting("k", "x", 16, integer=True, optional=True), "k=x: must be an integer >= 16 or null"),
    (lambda: setting("k", 1.5, 0, 1), "k=1.5: must be a number >= 0 and <= 1"),
])
def test_error_messages_in_full(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value) == message


def test_setting_bounds_are_inclusive_unless_open():
    assert setting("k", 1.0, 0, 1) == 1.0 and setting("k", 0, 0, 1) == 0.0
    assert setting("k", 5, 1, integer=True, optional=True) == 5
