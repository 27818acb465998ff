"""Benchmarks that print numbers (never timed assertions). ``python -m synth.bench [NAME]``."""

import argparse
from typing import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``. ``--count 0`` or ``--size 1`` would otherwise end
    in a traceback deep inside a run (no images listed, a median of no runs, a division by zero);
    argparse reports this as one usage line and exit 2."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, not {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def numbers(kind: Callable[[str], int | float], low: float, count: int | None = None) -> Callable[[str], list]:
    """An argparse ``type``: comma-separated numbers (``--batch-sizes 1,4,8``), each >= ``low``,
    exactly ``count`` of them when given."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
        if any(v < low for v in values) or (count is not None and len(values) != count):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {count or 'comma-separated'} numbers >= {low}"
                                             + (", comma-separated" if count else ""))
        return values

    parse.__name__ = "comma-separated numbers"
    return parse
