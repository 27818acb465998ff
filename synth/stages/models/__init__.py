"""Model-backed stages: ``segmentation=sam3`` and ``sam``, ``captioning=blip`` and ``vlm``.

They share one base (:mod:`synth.stages.models.base`: device, dtype, batching, out-of-memory
back-off) and one loader (:mod:`synth.stages.models.loading`: hub id or local directory,
one-line errors naming the config key). Config files select the classes by ``_target_``, so
importing this package imports neither torch nor transformers.
"""
