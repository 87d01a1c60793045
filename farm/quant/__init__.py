"""The quantization engine: methods, metrics, benchmark, coverage and artifacts.

Knows nothing of queues, databases, object stores or the CLI. Importing this package imports nothing
heavy: :mod:`farm.quant.config` is standard library only (the producer validates specs with it), and
the torch-backed modules are imported where they are used.
"""
