"""The stage interface every implementation follows."""

from __future__ import annotations

from synth.errors import ConfigError
from synth.sample import Sample


class Stage:
    """A pipeline step: built from its config, set up once per process, then fed batches.

    Subclasses set ``name`` (their config group, also the key of their sampled parameters and
    timings), ``requires`` (Sample fields an earlier stage must provide) and ``provides``.
    They override ``process_sample`` or, to batch a model, ``process``. Stages never write
    files and never log: the runner hands finished samples to writers and the logger. A stage
    sets new arrays and never changes a sample's image in place: they are read-only
    (:func:`synth.sample.freeze_images`).
    """

    name: str = ""
    requires: tuple[str, ...] = ("image",)
    provides: tuple[str, ...] = ()
    # True when the stage runs a model on the device: the scheduler (synth.schedule) then calls it
    # with whole batches in a thread of its own (a lane); other stages run one sample at a time in
    # the workers.
    batched_on_device: bool = False

    @property
    def reads(self) -> tuple[str, ...]:
        """Every Sample image field the stage may read: ``requires`` plus optional ones it uses when
        present. With ``workers=processes`` a device stage gets its samples with these images only."""
        return self.requires

    def setup(self, device: str) -> None:
        """Load models once per process. ``device`` is 'auto', 'cpu', 'cuda' or 'cuda:N'."""

    def process(self, batch: list[Sample]) -> None:
        """Fill this stage's fields on every sample of the batch (errors are the runner's)."""
        for sample in batch:
            self.process_sample(sample)

    def process_sample(self, sample: Sample) -> None:
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_sample")


def resolve_device(device: str, shard_index: int = 0) -> str:
    """'auto' -> 'cpu' without a GPU, 'cuda' with one, and 'cuda:K' with n > 1 GPUs where
    K = shard_index mod n: the jobs of a multirun over data.shard_index spread over the node's
    GPUs. Any other value is kept. Imports torch only when asked."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    return f"cuda:{shard_index % count}" if count > 1 else "cuda"


def check_cuda(key: str, device: str | None) -> None:
    """A CUDA device (``cuda``, ``cuda:N``) this machine lacks is a ConfigError naming ``key``:
    torch would fail with a traceback when a model moves there. Other devices pass."""
    if not str(device).startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        raise ConfigError(f"{key}={device}: this machine has no CUDA GPU torch can use; use cpu or auto")
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not (index.isdigit() and int(index) < count)):
        raise ConfigError(f"{key}={device}: this machine has {count} CUDA GPU{'s' if count > 1 else ''}: "
                          f"use cuda or cuda:0 to cuda:{count - 1}")
