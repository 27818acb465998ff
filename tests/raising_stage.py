"""A stage whose setup raises: the job fails after the logger started (see test_wandb.py)."""

from synth.stages.base import Stage


class RaisingStage(Stage):
    name = "captioning"

    def __init__(self, **config):
        pass

    def setup(self, device: str) -> None:
        raise RuntimeError("raising_stage: setup failed on purpose")
