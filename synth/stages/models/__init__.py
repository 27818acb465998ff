"""Model-backed stages: ``segmentation=sam3`` and ``sam``, ``captioning=blip`` and ``vlm``.

They share one base (:mod:`synth.stages.models.base`: device, dtype, batching) and one loader
(:mod:`synth.stages.models.loading`: hub id or local directory, one-line errors naming the config
key, and the out-of-memory back-off every model uses, the depth and normals models of
:mod:`synth.stages.normals` included). Config files select the classes by ``_target_``, so
importing this package imports neither torch nor transformers.
"""
