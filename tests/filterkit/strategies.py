"""Hypothesis strategies for filter expressions: valid ones with their tree (so that the reference can evaluate
them), invalid pieces the grammar must refuse wherever they stand, token soups and mangled expressions.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from tests.filterkit.population import KINDS, UTC
from tests.filterkit.reference import OPERATORS, EAnd, ECmp, EColumn, EIn, EInvalid, ELike, ENot, ENull, EOr, ETruth

# -- generating expressions ---------------------------------------------------------------------------------

_STRING_ALPHABET = st.characters(
    codec="utf-8",
    exclude_categories=("Cs",),
    exclude_characters="\x00",
)
_TRICKY_CHARS = "'\"%_\\*?[]aAbBzZé É-;"
_COLUMN_PAIRS = [
    ("accuracy", "accuracy_fp32"), ("latency_p50_ms", "latency_p90_ms"), ("bits", "calibration_size"),
    ("bits", "accuracy"), ("sqnr_db", "agreement"), ("model", "method"), ("method", "observer"),
    ("simulated", "simulated"), ("finished_at", "finished_at"), ("size_bytes", "throughput"),
]  # fmt: skip
# Columns for conditions, the rare kinds and the trickiest strings more often than the plain numbers.
# params (JSON) is filtered through its fields (params.epochs), which the population does not hold.
_LEAF_COLUMNS = (
    sorted(c for c in KINDS if KINDS[c] != "json")
    + ["simulated", "finished_at"] * 4
    + ["model", "method", "backend", "hardware"] * 2
)
INVALID_LEAVES = [
    "model = 3", "accuracy > 'abc'", "bits LIKE '8'", "acuracy > 1", "bits = NULL", "NULL = bits",
    "simulated < true", "1 = 1", "'a' = 'a'", "finished_at > 'yesterday'", "finished_at = 3", "bits IN ()",
    "model = bits", "(bits = 1", "bits = 1)", "model LIKE 'x\\'", "accuracy > 1e999", "simulated = 2",
    "NOT", "bits IN (1, 'a')", "model = 'x'; DROP TABLE jobs; --", "bits = 8 --", "model", "bits 8",
    "model IN (method)", "simulated IS TRUE", "bits >> 1", "accuracy LIKE 0.5",
    "model NOT = 'x'", "model LIKE method", "bits = 08x", "metrics.accuracy > 0", "bits = 1.2.3",
]  # fmt: skip


def population_values(rows: list[dict[str, Any]], column: str) -> list[Any]:
    return sorted({r[column] for r in rows if r[column] is not None}, key=repr)


def _kw(draw: st.DrawFn, word: str) -> str:
    return draw(st.sampled_from([word.upper(), word.lower(), word.capitalize()]))


def _quote(draw: st.DrawFn, s: str) -> str:
    q = draw(st.sampled_from(["'", '"']))
    return q + s.replace(q, q + q) + q


def _number_text(draw: st.DrawFn, v: int | float) -> str:
    if isinstance(v, int):
        forms = [str(v)] + ([f"+{v}"] if v >= 0 else [])
    else:
        forms = [repr(v), f"{v:.17e}"]
        if v == int(v) and abs(v) < 1e15:
            forms.append(f"{int(v)}.0")
    return draw(st.sampled_from(forms))


def _datetime_text(draw: st.DrawFn, v: datetime) -> str:
    forms = [v.isoformat(), v.isoformat().replace("+00:00", "Z"), v.replace(tzinfo=None).isoformat(sep=" ")]
    forms.append(v.astimezone(timezone(timedelta(hours=2, minutes=30))).isoformat())
    if v.time() == datetime.min.time():
        forms.append(v.date().isoformat())
    return draw(st.sampled_from(forms))


@st.composite
def literal(draw: st.DrawFn, kind: str, known: list[Any]) -> tuple[Any, str]:
    """A value of ``kind`` (often one the population holds, for ties and equality hits) and its text."""
    if kind == "bool":
        v = draw(st.booleans())
        return v, draw(st.sampled_from([_kw(draw, str(v)), "1" if v else "0"]))
    if kind == "datetime":
        any_time = st.datetimes(datetime(2025, 1, 1), datetime(2027, 1, 1), timezones=st.just(UTC))
        v = draw(st.sampled_from(known) | any_time if known else any_time)
        return v, _quote(draw, _datetime_text(draw, v))
    if kind == "text":
        any_text = st.text(st.sampled_from(_TRICKY_CHARS) | _STRING_ALPHABET, max_size=6)
        v = draw(st.sampled_from(known) | any_text if known else any_text)
        return v, _quote(draw, v)
    numbers: st.SearchStrategy[Any] = st.integers(-(10**10), 10**10) | st.floats(
        -1e12, 1e12, allow_nan=False, allow_infinity=False
    )
    nearby = [k + d for k in known for d in (-1, 0.5)] if known else []
    v = draw(st.sampled_from(known + nearby) | numbers if known else numbers)
    text = _number_text(draw, v)
    if draw(st.integers(0, 5)) == 0:
        text = _quote(draw, text)  # a quoted number is coerced for numeric columns
    return v, text


def _column_text(draw: st.DrawFn, name: str) -> str:
    return draw(st.sampled_from([name, name.upper()]))


@st.composite
def _pattern(draw: st.DrawFn, known: list[str]) -> str:
    """A LIKE pattern: a population value with some characters made wildcards, or a random one."""
    if known and draw(st.booleans()):
        base = draw(st.sampled_from(known))
        out = []
        for c in base:
            choice = draw(st.integers(0, 9))
            if choice == 0:
                out.append("_")
            elif choice == 1:
                out.append("%")
            else:
                out.append("\\" + c if c in "%_\\" else c)
        return "".join(out)
    pieces = st.sampled_from(["%", "_", "\\%", "\\_", "\\\\", "a", "A", "e", "é", "*", "?", "[", "'", "s", "t"])
    return "".join(draw(st.lists(pieces, max_size=6)))


@st.composite
def leaf(draw: st.DrawFn, rows: list[dict[str, Any]]) -> tuple[Any, str]:
    """A valid condition (tree, text)."""
    column = draw(st.sampled_from(_LEAF_COLUMNS))
    kind = KINDS[column]
    col = _column_text(draw, column)
    known = population_values(rows, column)
    shape = draw(st.sampled_from(["cmp", "cmp", "cmp", "flip", "pair", "like", "in", "null", "truth"]))
    if shape == "like" and kind == "text":
        pattern = draw(_pattern(known))
        ignore_case, negated = draw(st.booleans()), draw(st.booleans())
        words = (_kw(draw, "not") + " " if negated else "") + _kw(draw, "ilike" if ignore_case else "like")
        return ELike(column, pattern, ignore_case, negated), f"{col} {words} {_quote(draw, pattern)}"
    if shape == "in":
        items = draw(st.lists(literal(kind, known), min_size=1, max_size=4))
        negated = draw(st.booleans())
        words = (_kw(draw, "not") + " " if negated else "") + _kw(draw, "in")
        inner = draw(st.sampled_from([", ", ",", " , "])).join(t for _, t in items)
        return EIn(column, tuple(v for v, _ in items), negated), f"{col} {words} ({inner})"
    if shape == "null":
        negated = draw(st.booleans())
        words = _kw(draw, "is") + (" " + _kw(draw, "not") if negated else "") + " " + _kw(draw, "null")
        return ENull(column, negated), f"{col} {words}"
    if shape == "truth":
        return ETruth("simulated"), _column_text(draw, "simulated")
    if shape == "pair":
        a, b = draw(st.sampled_from(_COLUMN_PAIRS))
        if draw(st.booleans()):
            a, b = b, a
        ops = ["=", "!="] if KINDS[a] == "bool" else list(OPERATORS)
        op = draw(st.sampled_from(ops))
        return ECmp(a, op, EColumn(b)), f"{_column_text(draw, a)} {_op_text(draw, op)} {_column_text(draw, b)}"
    ops = ["=", "!="] if kind == "bool" else list(OPERATORS)
    op = draw(st.sampled_from(ops))
    value, text = draw(literal(kind, known))
    space = draw(st.sampled_from([" ", "", "  ", "\n"]))
    if shape == "flip":
        flipped = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        return ECmp(column, op, value), f"{text}{space}{_op_text(draw, flipped)}{space}{col}"
    return ECmp(column, op, value), f"{col}{space}{_op_text(draw, op)}{space}{text}"


def _op_text(draw: st.DrawFn, op: str) -> str:
    return draw(st.sampled_from({"=": ["=", "=="], "!=": ["!=", "<>"]}.get(op, [op])))


# Precedence of each tree node when rendered: OR 1, AND 2, NOT 3, a condition 4.
def _render(draw: st.DrawFn, node: Any, texts: dict[int, str], need: int) -> str:
    if isinstance(node, EOr):
        prec, text = 1, f" {_kw(draw, 'or')} ".join(_render(draw, o, texts, 1) for o in node.operands)
    elif isinstance(node, EAnd):
        prec, text = 2, f" {_kw(draw, 'and')} ".join(_render(draw, o, texts, 2) for o in node.operands)
    elif isinstance(node, ENot):
        prec, text = 3, f"{_kw(draw, 'not')} {_render(draw, node.operand, texts, 3)}"
    else:
        prec, text = 4, texts[id(node)]
    if prec < need or draw(st.integers(0, 7)) == 0:
        return f"({text})"
    return text


@st.composite
def expressions(draw: st.DrawFn, rows: list[dict[str, Any]], invalid: bool = True) -> tuple[Any, str]:
    """A generated expression: its tree and its text (an EInvalid leaf somewhere when ``invalid`` draws one)."""
    texts: dict[int, str] = {}

    def base() -> st.SearchStrategy[Any]:
        def keep(pair: tuple[Any, str]) -> Any:
            texts[id(pair[0])] = pair[1]
            return pair[0]

        valid = leaf(rows).map(keep)
        if not invalid:
            return valid
        bad = st.sampled_from(INVALID_LEAVES).map(lambda t: keep((EInvalid(t), t)))
        # About one expression in six holds an invalid leaf.
        return st.integers(0, 24).flatmap(lambda i: bad if i == 0 else valid)

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        many = st.lists(children, min_size=2, max_size=3).map(tuple)
        return st.one_of(children.map(ENot), many.map(EAnd), many.map(EOr))

    tree = draw(st.recursive(st.deferred(base), extend, max_leaves=8))
    # Leaves are distinct objects with their text keyed by id(): a leaf drawn twice is one object, same text.
    return tree, _render(draw, tree, texts, 0)


#: Tokens for token-soup expressions: what a careless or hostile user could type.
SOUP_TOKENS = [
    "bits", "model", "accuracy", "simulated", "finished_at", "method", "speedup", "acuracy", "AND", "or", "NOT",
    "IN", "LIKE", "ilike", "IS", "NULL", "true", "FALSE", "=", "!=", "<>", "<", "<=", ">", ">=", "==", "(", ")",
    ",", "8", "-1.5", "1e3", "0", "1", "'static'", "'%e%'", "'it''s'", "\"x\"", "'2026-01-02'", "'abc'", ";",
    "--", "'", "DROP TABLE jobs", "/*", "*/", "\\", "%", "_", "SELECT", "1=1",
]  # fmt: skip


def soups() -> st.SearchStrategy[str]:
    """Random token sequences (mostly refused)."""
    return st.lists(st.sampled_from(SOUP_TOKENS), min_size=1, max_size=10).map(" ".join)


@st.composite
def mutants(draw: st.DrawFn, rows: list[dict[str, Any]]) -> str:
    """A valid generated expression with one or two words deleted, swapped or inserted: often still valid,
    with another meaning (which farm's parse then defines), often refused somewhere interesting."""
    _, text = draw(expressions(rows, invalid=False))
    words = text.split(" ")
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(0, len(words) - 1))
        action = draw(st.sampled_from(["delete", "insert", "swap"]))
        if action == "delete" and len(words) > 1:
            del words[i]
        elif action == "insert":
            words.insert(i, draw(st.sampled_from(SOUP_TOKENS)))
        else:
            j = draw(st.integers(0, len(words) - 1))
            words[i], words[j] = words[j], words[i]
    return " ".join(words)
