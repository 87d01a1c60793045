"""Result rows as a pandas DataFrame, with one dtype per column kind (pandas and pyarrow are optional).

Integers are ``Int64`` (nullable: ids and bit-widths stay integers), floats ``float64`` (NULL is NaN), the
boolean ``simulated`` is ``boolean`` (nullable), text is ``string`` and ``finished_at`` is
``datetime64[us, UTC]``. A query with no rows still gives every column its dtype.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from farm.errors import ConfigError
from farm.store.columns import COLUMN_KINDS, Kind

if TYPE_CHECKING:
    import pandas as pd

_DTYPES: dict[Kind, str] = {
    "int": "Int64",
    "float": "float64",
    "bool": "boolean",
    "text": "string",
    "datetime": "datetime64[us, UTC]",
    "json": "string",  # canonical JSON text (farm.store.results)
}

#: What to install for DataFrames and Parquet files.
INSTALL_HINT = "pip install 'quantfarm[analysis]' (pandas and pyarrow)"


def require(*modules: str, what: str, source: str | None = None) -> None:
    """Check that optional modules import, before doing any work that needs them.

    Args:
        modules: module names, e.g. ``"pandas", "pyarrow"``.
        what: what needs them, for the message (``--format parquet``).
        source: printed before the message, if given.

    Raises:
        ConfigError: one of them cannot be imported.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"{what} needs {name}, which is not installed: {INSTALL_HINT}", source=source) from None


def results_frame(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """A DataFrame of ``rows`` with exactly ``columns``, typed by the columns' kinds.

    Args:
        rows: result rows (dicts keyed by column name).
        columns: the columns, in order; those of results_flat get their kind's dtype, others pandas' inferred one.

    Returns:
        The DataFrame (a plain RangeIndex).
    """
    import pandas as pd

    data = {c: pd.Series([r.get(c) for r in rows], dtype=_dtype(c), name=c) for c in columns}
    return pd.DataFrame(data, columns=list(columns))


def _dtype(column: str) -> str | None:
    # A column that is not the view's (a derived figure) keeps the dtype pandas infers.
    kind = COLUMN_KINDS.get(column)
    return None if kind is None else _DTYPES[kind]
