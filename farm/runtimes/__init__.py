"""Runtimes other than eager torch: a model exported to a serialized graph and run by another engine.

Today: ONNX Runtime on CPU (:mod:`farm.runtimes.onnx_export`, :mod:`farm.runtimes.ort`,
:mod:`farm.runtimes.ort_quantize`). Each runtime's own package (onnx, onnxruntime) is imported only inside its
modules' functions, so importing this package needs neither; a missing one is a one-line QuantizationError.
docs/runtimes.md says what exists and what is still to come (the ``runtime:`` axis of a spec).
"""
