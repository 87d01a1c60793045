"""The filter grammar's test kit, shared by the SQLite tests (tests/unit) and the PostgreSQL ones
(tests/integration): a population of results (:mod:`.population`), a reference evaluator with SQL's
three-valued logic (:mod:`.reference`) and expression generators (:mod:`.strategies`).

Use it as ``from tests import filterkit as fk``: every public name of the three modules is here.
"""

from tests.filterkit.population import *  # noqa: F403
from tests.filterkit.reference import *  # noqa: F403
from tests.filterkit.strategies import *  # noqa: F403
