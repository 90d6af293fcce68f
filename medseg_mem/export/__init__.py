"""Exports of a trained run: a MONAI bundle's weights and metadata (:mod:`~medseg_mem.export.bundle`), ONNX models
(:mod:`~medseg_mem.export.onnx`), and ONNX Runtime running them for ``predict --engine onnxruntime``
(:mod:`~medseg_mem.export.onnx_engine`)."""
