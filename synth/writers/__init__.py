"""Writers turn finished samples into files; ``writer=...`` selects the main one by ``_target_``
and ``writers=[webdataset,hf]`` adds more to the same job.

The interface (the runner calls it):

* ``open(run_dir, resume=..., shard_index=..., source=..., settings=...)`` once, before the
  first sample (``source``: the job's listing; ``settings``: what its samples depend on, for a
  writer that keeps them outside the run directory to compare, see ``synth.settings``);
* ``is_complete(id) -> bool``: the writer already has this sample (resume skips a sample only
  when every writer has it, and passes a resumed sample only to the writers that lack it);
* ``write(sample, images)`` from worker threads or processes, one sample per call; returns the
  sample's record (or None), or, for a writer with ``commit``, the row that ``commit`` appends;
  ``images`` (``EncodedImages``) encodes each image once for all writers of the job;
* ``commit(sample, row)`` (optional) on the runner's thread in input order, for every sample
  written and still ok, with what ``write`` returned: writers whose output order matters append here;
* ``has(record)`` (optional): whether the sample of a samples.jsonl record is complete on disk
  (the folder writer; resume then checks records instead of asking ``is_complete`` per id);
* ``discard(id)`` (optional): remove every file of a sample (a failed sample leaves none);
* ``stopped()`` (optional) when the job stopped before its last sample (signal, error), just
  before ``close``: tar/parquet drop their partial shard;
* ``close()`` once at the end, also after a failure.
"""

from synth.writers.encoded import EncodedImages
from synth.writers.folder import FolderWriter, sample_record

__all__ = ["EncodedImages", "FolderWriter", "sample_record"]
