"""The built-in demo sweep: farm:digits-cnn through every method, small enough for 2 cores in minutes."""

DEMO_SPEC = """\
name: demo-digits
description: >
  The built-in demo: farm:digits-cnn (trained on scikit-learn's digits, real data) in fp32, bf16,
  dynamic int8, static int8 across calibration sizes and observers, and 4- and 6-bit simulated
  PTQ and QAT.
models:
  - farm:digits-cnn
dataset: sklearn:digits
methods:
  - fp32
  - bf16
  - dynamic
  - static:
      observer: [minmax, histogram]
      calibration_size: [16, 64, 256]
include:
  - {method: static, bits: [4, 6], observer: minmax, calibration_size: 256}
  - {method: qat, bits: [4, 6], calibration_size: 256, epochs: 1}
benchmark:
  batch_size: [1, 8]
  threads: 1
  max_time_s: 1.0
seed: 0
"""
