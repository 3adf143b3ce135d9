"""ONNX export of training runs: graphs, post-processing, the parity gate, precision variants.

Modules: :mod:`~engine.export.torch_export` (torch -> ONNX), :mod:`~engine.export.postprocess`
(sigmoid, downsampling correction and calibrator as graph nodes),
:mod:`~engine.export.parity` (the gate), :mod:`~engine.export.ranker` (a run's graphs),
:mod:`~engine.export.variants` (INT8 / FP16 and their measurements). Nothing is imported
here: torch is heavy, and callers pick the module they need.
"""
