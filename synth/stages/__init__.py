"""Pipeline stages. Each config group (segmentation, albedo, shadow, recombine, captioning)
selects one class from these modules by ``_target_``."""
