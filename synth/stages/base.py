"""The stage interface every implementation follows."""

from __future__ import annotations

from synth.sample import Sample


class Stage:
    """A pipeline step: built from its config, set up once per process, then fed batches.

    Subclasses set ``name`` (their config group, also the key of their sampled parameters and
    timings), ``requires`` (Sample fields an earlier stage must provide) and ``provides``.
    They override ``process_sample`` or, to batch a model, ``process``. Stages never write
    files and never log: the runner hands finished samples to writers and the logger.
    """

    name: str = ""
    requires: tuple[str, ...] = ("image",)
    provides: tuple[str, ...] = ()

    def setup(self, device: str) -> None:
        """Load models once per process. ``device`` is 'auto', 'cpu', 'cuda' or 'cuda:N'."""

    def process(self, batch: list[Sample]) -> None:
        """Fill this stage's fields on every sample of the batch (errors are the runner's)."""
        for sample in batch:
            self.process_sample(sample)

    def process_sample(self, sample: Sample) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_sample")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'. Imports torch only when asked."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
