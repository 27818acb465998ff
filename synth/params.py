"""Configurable parameters: a fixed value, a ``[lo, hi]`` range, or a choice.

Config syntax (the same for every stage):

* ``shadow.opacity=0.3``               fixed value
* ``shadow.opacity=[0.2,0.5]``         uniform in [lo, hi] per image (integers stay integers)
* ``shadow.blur=[31,51,71]``           uniform choice among the listed values (any list that is
                                        not exactly two numbers)
* ``shadow.patterns={cloud: 2, fence: 1}``  weighted choice

Specs are validated when the stage is built, before any image is read, and every error names
the full config key and what is allowed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from synth.errors import ConfigError


def rng_for(seed: int, index: int, key: str) -> np.random.Generator:
    """A generator that depends only on the run seed, the sample's global index and a key.

    Never on processing order, batch size, worker count or sharding; and each key gets its own
    stream, so changing one parameter's spec does not shift the draws of another. The whole seed
    is used (numpy splits a large integer into 32-bit words): seed 2**32 is not seed 0. Seeds
    below 2**32 give the same streams as before. ``crc32``, not ``hash()``: Python salts string
    hashes per process (PYTHONHASHSEED), which would make runs irreproducible.
    """
    return np.random.default_rng([int(seed), int(index), zlib.crc32(key.encode())])


MAX_SEED = 2**63 - 1  # metadata and the parquet writer store the seed as a signed 64-bit integer


def check_seed(value: Any, key: str = "seed") -> int:
    """A run seed as an int in [0, 2**63 - 1]; anything else is refused in one line naming ``key``
    (numpy's seeding takes no negative integers; larger seeds would not fit an int64 column)."""
    if not _is_number(value) or not math.isfinite(value) or int(value) != value or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key}={_show(value)}: must be an integer in [0, 2**63 - 1]")
    return int(value)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Param:
    """One parameter spec, validated against bounds or allowed options."""

    key: str
    kind: str  # "fixed" | "range" | "choice"
    values: tuple
    weights: tuple | None = None
    integer: bool = False
    odd: bool = False

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def number(cls, key: str, spec: Any, lo: float, hi: float, integer: bool = False,
               odd: bool = False) -> "Param":
        """A numeric parameter whose every possible value lies within [lo, hi]."""
        spec = _plain(spec)
        allowed = f"a number in [{lo:g}, {hi:g}]" + (" (odd integer)" if odd else
                                                      " (integer)" if integer else "")
        if isinstance(spec, dict):
            values, weights = tuple(spec.keys()), tuple(spec.values())
            param = cls(key, "choice", values, _check_weights(key, weights), integer, odd)
        elif isinstance(spec, (list, tuple)):
            if len(spec) == 0:
                raise ConfigError(f"{key}=[]: empty list; expected {allowed}, [lo, hi] or a choice list")
            if len(spec) == 2 and all(_is_number(v) for v in spec):
                if spec[0] > spec[1]:
                    raise ConfigError(f"{key}=[{spec[0]}, {spec[1]}]: range has lo > hi; write [lo, hi]")
                param = cls(key, "range", tuple(spec), None, integer, odd)
            else:
                param = cls(key, "choice", tuple(spec), None, integer, odd)
        else:
            param = cls(key, "fixed", (spec,), None, integer, odd)
        for v in param.values:
            if not _is_number(v) or not math.isfinite(v) or not (lo <= v <= hi):
                raise ConfigError(f"{key}={_show(spec)}: {v!r} is not {allowed}")
            if integer and int(v) != v:
                raise ConfigError(f"{key}={_show(spec)}: {v!r} is not {allowed}")
            if odd and param.kind != "range" and int(v) % 2 == 0:
                raise ConfigError(f"{key}={_show(spec)}: {v!r} is even; a kernel size must be odd")
        if odd and param.kind == "range" and param.values[0] == param.values[1] and param.values[0] % 2 == 0:
            raise ConfigError(f"{key}={_show(spec)}: range holds no odd value")
        if integer:  # shadow.blur=51.0 draws (and records) 51
            param = cls(key, param.kind, tuple(int(v) for v in param.values), param.weights, integer, odd)
        return param

    @classmethod
    def option(cls, key: str, spec: Any, allowed: Sequence[str]) -> "Param":
        """A categorical parameter: one option, a list (uniform) or {option: weight}."""
        spec = _plain(spec)
        if spec is None:
            spec = list(allowed)
        if isinstance(spec, dict):
            values, weights = tuple(spec.keys()), _check_weights(key, tuple(spec.values()))
        elif isinstance(spec, (list, tuple)):
            values, weights = tuple(spec), None
        else:
            values, weights = (spec,), None
        if not values:
            raise ConfigError(f"{key}: empty; choose from {', '.join(allowed)}")
        for v in values:
            if v not in allowed:
                raise ConfigError(f"{key}={_show(spec)}: unknown option {v!r}; choose from {', '.join(allowed)}")
        return cls(key, "fixed" if len(values) == 1 else "choice", values, weights)

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, seed: int, index: int) -> Any:
        """Draw this parameter's value for one sample (deterministic in seed, index and key)."""
        if self.kind == "fixed":
            return _native(self.values[0])
        rng = rng_for(seed, index, self.key)
        if self.kind == "choice":
            p = None
            if self.weights is not None:
                p = np.asarray(self.weights, dtype=np.float64)
                p = p / p.sum()
            return _native(self.values[int(rng.choice(len(self.values), p=p))])
        lo, hi = self.values
        if self.odd:
            # Uniform over the odd integers in [lo, hi].
            first, last = int(lo) | 1, int(hi) if int(hi) % 2 else int(hi) - 1
            return first + 2 * int(rng.integers(0, (last - first) // 2 + 1))
        if self.integer or (isinstance(lo, int) and isinstance(hi, int)):
            return int(rng.integers(int(lo), int(hi) + 1))
        return float(rng.uniform(lo, hi))


def setting(key: str, value: Any, lo: float | None = None, hi: float | None = None, *,
            integer: bool = False, hi_open: bool = False, optional: bool = False) -> Any:
    """Validate one fixed (never sampled) numeric setting and return it as int or float.

    ``optional`` lets ``None`` through (``null`` in YAML). Errors name the key, the value and
    the rule, on one line, for a wrong type as for a value out of bounds.
    """
    if optional and value is None:
        return None
    rule = " and ".join(r for r in (
        None if lo is None else f">= {lo:g}",
        None if hi is None else f"{'<' if hi_open else '<='} {hi:g}") if r)
    kind = "an integer" if integer else "a number"
    wanted = f"{kind}{' ' + rule if rule else ''}{' or null' if optional else ''}"
    # NaN compares false with every bound, and int(nan) / int(inf) raise: refuse them first.
    if not _is_number(value) or not math.isfinite(value) or (integer and float(value) != int(value)):
        raise ConfigError(f"{key}={_show(value)}: must be {wanted}")
    value = int(value) if integer else float(value)
    if (lo is not None and value < lo) or (hi is not None and (value >= hi if hi_open else value > hi)):
        raise ConfigError(f"{key}={_show(value)}: must be {wanted}")
    return value


def switch(key: str, value: Any) -> bool:
    """A true/false setting. Hydra reads ``resume=no`` as the text "no", which would count as true."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value}: true or false")
    return value


def text(key: str, value: Any) -> str | None:
    """A free-text setting (a model prompt), stripped; None when it is null or blank (the caller
    decides whether that is allowed). A number Hydra parsed (``prompt=2024``) is its text; a list,
    mapping or bool is refused: its Python repr would reach the model as the prompt."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key}={_show(value)}: must be text")
    return str(value).strip()


def _check_weights(key: str, weights: tuple) -> tuple:
    # A zero sum, NaN or inf would make the choice probabilities NaN mid-run: refuse them here.
    if not all(_is_number(w) and math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"{key}: weights must be non-negative numbers with a positive sum, got {list(weights)}")
    return weights


def _plain(spec: Any) -> Any:
    """OmegaConf containers to plain Python (stages may be built with or without _convert_)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
        if isinstance(spec, (DictConfig, ListConfig)):
            return OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return spec


def _native(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _show(spec: Any) -> str:
    if isinstance(spec, (list, tuple)):
        return "[" + ",".join(str(v) for v in spec) + "]"
    return str(spec)
