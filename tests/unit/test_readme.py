"""The README's commands, read in order as a new user types them: the sweep ids they use name the right sweep.

Before issue 12 the README ran ``farm demo`` (sweep 1), then its own spec (sweep 2), then ``farm sweep status 1``:
the demo's status, not the user's sweep.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)
#: A command that creates a sweep in the local database (a spec run again resumes its sweep).
_CREATES = re.compile(r"^farm (demo|sweep run (\S+)|tune --)")
#: Where a command names a sweep by id.
_USES = re.compile(
    r"farm sweep (?:status|cancel|retry|resume) (\d+)|--sweep (\d+)|farm report (\d+)"
    r"|farm tune status (\d+)|--tune (\d+)"
)


def commands() -> list[str]:
    lines = []
    for block in _BLOCK.findall(README.read_text()):
        lines += [line.split("#")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_every_sweep_id_the_readme_uses_names_a_sweep_its_commands_created() -> None:
    created: list[str] = []  # sweep ids in order: created[0] is sweep 1
    used: list[tuple[int, str]] = []
    for line in commands():
        if m := _CREATES.match(line):
            spec = "demo" if m.group(1) == "demo" else "tune" if m.group(1).startswith("tune") else m.group(2)
            if spec not in created:
                created.append(spec)
            continue
        for m in _USES.finditer(line):
            sweep_id = int(next(g for g in m.groups() if g))
            assert sweep_id <= len(created), f"{line!r}: sweep {sweep_id} does not exist yet ({created})"
            used.append((sweep_id, created[sweep_id - 1]))
    assert created[:3] == ["demo", "digits.yaml", "tune"]
    assert used and {spec for _, spec in used} == {"digits.yaml", "tune"}, used


def test_the_readme_names_the_analysis_commands_and_their_docs() -> None:
    text = README.read_text()
    for mention in ("farm report", "farm results best", "farm results pareto", "farm results compare"):
        assert mention in text, mention
    for doc in ("docs/report.md", "docs/query.md"):
        assert f"]({doc})" in text and (README.parent / doc).is_file(), doc
