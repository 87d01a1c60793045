"""The HTML report of a sweep: one self-contained page (summary, charts, sortable table, failures, hardware).

No click and no printing here: ``farm report`` (farm/cli/report.py) is the command. Charts are inline SVG
drawn with matplotlib (the engine extra), imported only when a report is built.
"""

from __future__ import annotations

from farm.report.model import SweepInfo
from farm.report.page import build_report
from farm.report.writer import load_report_input, write_report

__all__ = ["SweepInfo", "build_report", "load_report_input", "write_report"]
