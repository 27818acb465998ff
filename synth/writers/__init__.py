"""Writers turn finished samples into files; ``writer=...`` selects one by ``_target_``.

The interface: ``open(run_dir)``, ``write(sample) -> metadata record`` (called from worker
threads, one sample at a time per call), ``close()``; ``metadata_path(id)`` where a writer can
tell that a sample is complete (used by resume).
"""

from synth.writers.folder import FolderWriter, sample_record

__all__ = ["FolderWriter", "sample_record"]
