"""Imports every handler module so that each registers itself."""

from farm.quant import dynamic, fp, noop, qat, static  # noqa: F401
