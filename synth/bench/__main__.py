"""``python -m synth.bench [NAME] [options]``: run one benchmark; NAME defaults to ``pipeline``.

Each benchmark is a module ``synth.bench.NAME`` with a ``main(argv)`` function.
"""

import importlib
import pkgutil
import sys

import synth.bench


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(synth.bench.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> None:
    name = argv[0] if argv and not argv[0].startswith("-") else "pipeline"
    rest = argv[1:] if argv and argv[0] == name else argv
    if name not in available():
        raise SystemExit(f"error: unknown benchmark {name!r}; choose from {', '.join(available())}")
    importlib.import_module(f"synth.bench.{name}").main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
