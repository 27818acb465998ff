"""Shared plumbing for model-backed stages: device and dtype, weights from a hub id or a local
directory, one-line errors that name the config key, and out-of-memory back-off
(:func:`infer_backing_off`, used by every model: the model stages and the depth and normals
models of ``shadow.normals``).

Nothing here imports torch or transformers at module level, so building a stage from config
(and reporting config errors) stays fast; the heavy imports happen in ``setup``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from synth.errors import ConfigError, SampleError, one_line

# A sample's images are read-only (synth.sample.freeze_images), and the models' processors only
# read them: torch.from_numpy's warning about it says nothing to a user.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

T = TypeVar("T")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(key: str, dtype: str) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"{key}={dtype}: choose from {', '.join(DTYPES)}")
    return dtype


def resolve_dtype(dtype: str, device: str) -> Any:
    """'auto' -> bfloat16 on a GPU, float32 on the CPU (CPU bf16 kernels are slower than fp32)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def check_device(key: str, device: str | None) -> str | None:
    """None means the job's top-level ``device``."""
    # cuda:abc is refused here, not when the model sets up (after the run directory is written)
    if device is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps(:\d+)?", str(device)):
        return device
    raise ConfigError(f"{key}={device}: choose auto, cpu, cuda or cuda:N (or leave null for the job's device)")


def looks_local(source: str) -> bool:
    """A filesystem path rather than a hub id ('org/name' has exactly one slash, no leading dot)."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or Path(source).expanduser().exists()


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read the way transformers reads it."""
    from huggingface_hub.constants import is_offline_mode

    return is_offline_mode()


def check_source(key: str, source: str | None, how: str, marker: str = "config.json") -> str:
    """Validate a ``model`` value when the stage is built, before any weights load.

    A local directory must hold what ``save_pretrained`` writes (``marker`` at least: config.json
    for a transformers model, model_index.json for a diffusers pipeline). A hub
    id is only checked here when HF_HUB_OFFLINE is set (it must already be in the cache);
    otherwise download and access problems surface in ``setup`` through :func:`load_pretrained`.
    """
    if not source:
        raise ConfigError(f"{key}: required; {how}")
    source = str(source)
    if looks_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{key}={source}: no such directory; {how}")
        if not (path / marker).is_file():
            raise ConfigError(f"{key}={source}: no {marker} in this directory (expected what "
                              f"save_pretrained writes for the model and its processor); {how}")
        return str(path)
    if offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, marker), str):
            raise ConfigError(f"{key}={source}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                              f"run `hf download {source}` where the Hub is reachable, or set {key} to a local "
                              "save_pretrained directory")
    return source


def load_pretrained(key: str, source: str, how: str, loader: Callable[[str], T]) -> T:
    """``loader(source)`` with missing, gated or unreachable weights turned into one ConfigError."""
    try:
        return loader(source)
    except (OSError, ValueError) as err:
        raise ConfigError(_load_error(key, source, how, err)) from err


def _load_error(key: str, source: str, how: str, err: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated repo" in text:
        return (f"{key}={source}: gated on the Hugging Face Hub; request access at https://huggingface.co/{source}, "
                f"then `hf auth login` (or set HF_TOKEN), or {how}")
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or "is not a local folder and is not a valid model" in text:
        return f"{key}={source}: no such model on the Hugging Face Hub (or it is private); {how}"
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain) or "couldn't connect" in text:
        where = "HF_HUB_OFFLINE is set" if offline() else "the Hub cannot be reached"
        return (f"{key}={source}: not in the local Hugging Face cache and {where}; run `hf download {source}` "
                f"where the Hub is reachable, or {how}")
    first = one_line(err)[:300]
    return f"{key}={source}: cannot load ({type(err).__name__}: {first}); {how}"


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, whichever way torch reports it."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, oom_type) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def infer_backing_off(items: Sequence[T], infer: Callable[[list[T]], Sequence[Any]], size: int | None = None,
                      fail: Callable[[T, SampleError], None] | None = None) -> Iterator[tuple[list[T], Sequence[Any]]]:
    """``infer`` on ``items`` in chunks of at most ``size`` (None: all at once), under
    ``torch.inference_mode``; yields each chunk with its results, in order.

    A chunk that runs out of accelerator memory is halved and retried, down to one item; an item
    that does not fit even alone is handed to ``fail`` with a SampleError saying so, and the rest
    go on. Without ``fail`` that error is raised: a caller that cannot fail one item (the depth
    and normals models see images, not samples) lets the runner retry each sample alone, which
    fails only that one. Every call starts again at ``size``, so one huge image does not slow the
    batches after it.
    """
    import torch

    items = list(items)
    size = min(size or len(items), len(items))
    start = 0
    while start < len(items):
        chunk = items[start:start + size]
        try:
            with torch.inference_mode():
                results = infer(chunk)
        except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(err):
                raise
            reason = one_line(err)[:200]
        else:
            start += len(chunk)
            yield chunk, results
            continue
        free_accelerator_memory()  # outside the except block, so the failed pass's tensors are gone
        if size > 1:
            size //= 2
            continue
        error = SampleError(f"out of GPU memory even at batch size 1 ({reason})")
        if fail is None:
            raise error
        fail(chunk[0], error)
        start += 1


def hub_kwargs() -> dict[str, Any]:
    """Extra from_pretrained arguments: HF_HUB_OFFLINE also means 'never try the network'."""
    return {"local_files_only": True} if offline() else {}
