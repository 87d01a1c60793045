"""Runtimes other than eager torch: a model exported to a serialized graph and run by another engine.

:mod:`farm.runtimes.registry` says what each runtime can do (standard library only); :mod:`farm.runtimes.engine`
builds a job's model for its runtime: ONNX Runtime (:mod:`farm.runtimes.ort_build` over
:mod:`farm.runtimes.onnx_export`, :mod:`farm.runtimes.ort`, :mod:`farm.runtimes.ort_quantize`,
:mod:`farm.runtimes.ort_qat`), OpenVINO and TensorRT. Each runtime's own package is imported only inside its
modules' functions, so importing this package needs none of them; a missing one is a one-line error naming the
extra that installs it. docs/runtimes.md says how a job runs on a runtime.
"""
