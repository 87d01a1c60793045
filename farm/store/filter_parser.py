"""Recursive-descent parser for ``--where`` (the grammar is in docs/query.md), with type checks on the way.

Precedence, loosest first: ``OR``, ``AND``, ``NOT``, then a condition or a parenthesized expression. Every
error is a :class:`~farm.errors.ConfigError` with one line naming the problem and its 1-based position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from farm.errors import ConfigError
from farm.store.columns import (
    COLUMN_KINDS,
    KIND_NAMES,
    PARAMS_PREFIX,
    Kind,
    is_numeric,
    is_param_path,
    resolve_column,
    resolve_param_path,
)
from farm.store.filter_ast import (
    And,
    ColumnRef,
    Compare,
    InList,
    IsNull,
    IsTrue,
    Like,
    Not,
    Or,
    Predicate,
    Value,
    datetime_value,
    like_parts,
    number_value,
)
from farm.store.filter_lexer import Token, tokenize

#: Deepest nesting of parentheses and NOTs.
MAX_DEPTH = 50
#: Most conditions (comparisons, LIKE, IN, IS NULL) in one expression.
MAX_CONDITIONS = 200
#: Most values (literals) in one expression, IN lists included.
MAX_VALUES = 500

_FLIPPED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_VALUE_KEYWORDS = ("TRUE", "FALSE", "NULL")


@dataclass(frozen=True)
class _Operand:
    """A column (``column`` set) or a literal token, as read on one side of an operator."""

    token: Token
    column: str | None = None

    @property
    def kind(self) -> Kind | None:
        # A params field has no kind of its own: the value compared with it gives one (see _Parser.param_value).
        return None if self.column is None or is_param_path(self.column) else COLUMN_KINDS[self.column]


def parse_expression(text: str, *, source: str) -> Predicate:
    """Parse and type-check a non-empty filter expression.

    Args:
        text: the expression.
        source: the option or argument it came from, for messages (``--where``, ``where``).

    Returns:
        The checked tree.

    Raises:
        ConfigError: a syntax error, an unknown column, a type mismatch, or an expression past the limits.
    """
    return _Parser(tokenize(text, source=source), source).parse()


class _Parser:
    def __init__(self, tokens: list[Token], source: str) -> None:
        self.tokens = tokens
        self.source = source
        self.i = 0
        self.depth = 0
        self.conditions = 0
        self.values = 0

    # -- helpers -------------------------------------------------------------------------------------------

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(message, source=self.source)

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "end":
            self.i += 1
        return tok

    def at_keyword(self, *words: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "keyword" and tok.value in words

    def expect(self, kind: str, what: str) -> Token:
        tok = self.advance()
        if tok.kind != kind:
            self.fail(f"expected {what} at position {tok.pos}, found {tok.describe()}")
        return tok

    def nest(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"expression nests too deeply at position {tok.pos} (at most {MAX_DEPTH} levels)")

    def condition(self, tok: Token) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            self.fail(f"too many conditions at position {tok.pos} (at most {MAX_CONDITIONS})")

    # -- grammar -------------------------------------------------------------------------------------------

    def parse(self) -> Predicate:
        pred = self.or_expr()
        tok = self.peek()
        if tok.kind != "end":
            self.fail(f"unexpected {tok.describe()} at position {tok.pos}; expected AND, OR or the end")
        return pred

    def or_expr(self) -> Predicate:
        items = [self.and_expr()]
        while self.at_keyword("OR"):
            self.advance()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Predicate:
        items = [self.not_expr()]
        while self.at_keyword("AND"):
            self.advance()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Predicate:
        if self.at_keyword("NOT"):
            tok = self.advance()
            self.nest(tok)
            inner = self.not_expr()
            self.depth -= 1
            return Not(inner)
        return self.primary()

    def primary(self) -> Predicate:
        tok = self.peek()
        if tok.kind == "lparen":
            self.advance()
            self.nest(tok)
            inner = self.or_expr()
            self.expect("rparen", "')'")
            self.depth -= 1
            return inner
        if tok.kind in ("name", "number", "string") or self.at_keyword(*_VALUE_KEYWORDS):
            return self.predicate()
        self.fail(f"expected a condition at position {tok.pos}, found {tok.describe()}")

    def predicate(self) -> Predicate:
        left = self.operand()
        self.condition(left.token)
        tok = self.peek()
        if tok.kind == "op":
            self.advance()
            return self.compare(left, tok, self.operand())
        negated = False
        if self.at_keyword("NOT"):
            if not self.at_keyword("LIKE", "ILIKE", "IN", ahead=1):
                after = self.peek(1)
                self.fail(f"expected LIKE, ILIKE or IN after NOT at position {after.pos}, found {after.describe()}")
            self.advance()
            negated = True
            tok = self.peek()
        pred: Predicate
        if self.at_keyword("LIKE", "ILIKE"):
            pred = self.like(self.need_column(left, self.advance()), tok)
        elif self.at_keyword("IN"):
            pred = self.in_list(self.need_column(left, self.advance()), tok)
        elif self.at_keyword("IS"):
            self.advance()
            negated = self.at_keyword("NOT")
            if negated:
                self.advance()
            self.expect_keyword("NULL", "NULL after IS" + (" NOT" if negated else ""))
            pred = IsNull(self.need_column(left, tok))
        elif left.kind == "bool" and left.column is not None:
            return IsTrue(left.column)
        elif left.column is not None:
            self.fail(
                f"expected an operator after {left.column!r} at position {tok.pos}, found {tok.describe()} "
                "(only true/false columns stand alone)"
            )
        else:
            self.fail(f"a condition needs a column: found {left.token.describe()} at position {left.token.pos}")
        return Not(pred) if negated else pred

    def expect_keyword(self, word: str, what: str) -> None:
        tok = self.advance()
        if tok.kind != "keyword" or tok.value != word:
            self.fail(f"expected {what} at position {tok.pos}, found {tok.describe()}")

    def operand(self) -> _Operand:
        tok = self.advance()
        if tok.kind == "name":
            where = f" at position {tok.pos}"
            if tok.value.lower().startswith(PARAMS_PREFIX):
                return _Operand(tok, resolve_param_path(tok.value, source=self.source, where=where))
            return _Operand(tok, resolve_column(tok.value, source=self.source, where=where))
        if tok.kind in ("number", "string") or (tok.kind == "keyword" and tok.value in _VALUE_KEYWORDS):
            return _Operand(tok)
        self.fail(f"expected a column or a value at position {tok.pos}, found {tok.describe()}")

    def need_column(self, left: _Operand, op: Token) -> str:
        if left.column is None:
            self.fail(f"{op.value} at position {op.pos} needs a column on its left, not {left.token.describe()}")
        return left.column

    # -- conditions ----------------------------------------------------------------------------------------

    def compare(self, left: _Operand, op: Token, right: _Operand) -> Compare:
        if left.column is None:
            if right.column is None:
                self.fail(f"comparison at position {op.pos} needs a column on one side")
            left, right, op = right, left, Token(op.kind, _FLIPPED[op.value], op.pos, op.text)
        column = left.column
        if column is None:  # unreachable: one side is a column
            raise ValueError("comparison without a column")
        if is_param_path(column) or (right.column is not None and is_param_path(right.column)):
            if right.column is not None:
                self.fail(f"a params field compares with a value, not with a column (position {op.pos})")
            return Compare(column, op.value, self.value(column, right.token))
        kind = COLUMN_KINDS[column]
        at = f"at position {op.pos}"
        if kind == "json" or right.kind == "json":
            self.fail(f"params is a JSON object: filter on one of its fields, e.g. params.epochs = 3 ({at})")
        if kind == "bool" and op.value not in ("=", "!="):
            self.fail(f"{column} is true/false: compare it with = or !=, not {op.text!r} (position {op.pos})")
        other = right.kind
        if right.column is not None and other is not None:
            if not (kind == other or (is_numeric(kind) and is_numeric(other))):
                self.fail(
                    f"can't compare {column} ({KIND_NAMES[kind]}) with {right.column} ({KIND_NAMES[other]}) "
                    f"at position {op.pos}"
                )
            return Compare(column, op.value, ColumnRef(right.column))
        return Compare(column, op.value, self.value(column, right.token))

    def like(self, column: str, op: Token) -> Like:
        kind: Kind = "text" if is_param_path(column) else COLUMN_KINDS[column]
        if kind != "text":
            self.fail(f"{op.value} needs a text column; {column} is {KIND_NAMES[kind]} (position {op.pos})")
        tok = self.advance()
        if tok.kind != "string":
            self.fail(f"{op.value} needs a quoted pattern at position {tok.pos}, found {tok.describe()}")
        self.count_value(tok)
        if like_parts(tok.value) is None:
            self.fail(f"{op.value} pattern at position {tok.pos} ends with a lone backslash (write \\\\ for one)")
        return Like(column, tok.value, ignore_case=op.value == "ILIKE")

    def in_list(self, column: str, op: Token) -> InList:
        self.expect("lparen", f"'(' after {op.value}")
        if self.peek().kind == "rparen":
            self.fail(f"IN needs at least one value (position {self.peek().pos})")
        values: list[Value] = []
        while True:
            values.append(self.value(column, self.advance()))
            sep = self.advance()
            if sep.kind == "rparen":
                return InList(column, tuple(values))
            if sep.kind != "comma":
                self.fail(f"expected ',' or ')' in the IN list at position {sep.pos}, found {sep.describe()}")

    # -- values --------------------------------------------------------------------------------------------

    def count_value(self, tok: Token) -> None:
        self.values += 1
        if self.values > MAX_VALUES:
            self.fail(f"too many values at position {tok.pos} (at most {MAX_VALUES})")

    def value(self, column: str, tok: Token) -> Value:
        """The literal ``tok`` as a value of ``column``'s kind (a params field's: the literal's own)."""
        at = f"at position {tok.pos}"
        if is_param_path(column):
            return self.param_value(column, tok, at)
        kind = COLUMN_KINDS[column]
        if kind == "json":
            self.fail(f"params is a JSON object: filter on one of its fields, e.g. params.epochs = 3 ({at})")
        if tok.kind == "keyword" and tok.value == "NULL":
            self.fail(f"NULL {at} can't be compared: write {column} IS NULL or {column} IS NOT NULL")
        if tok.kind not in ("number", "string") and not (tok.kind == "keyword" and tok.value in _VALUE_KEYWORDS):
            what = "columns are not allowed in an IN list" if tok.kind == "name" else f"found {tok.describe()}"
            self.fail(f"expected a value {at}: {what}")
        self.count_value(tok)
        text = tok.text
        if is_numeric(kind):
            number = number_value(tok.value) if tok.kind in ("number", "string") else None
            if number is None:
                if tok.kind == "number":
                    self.fail(f"number {text} {at} is out of range")
                self.fail(f"{column} is numeric; {text} {at} is not a number")
            return number
        if kind == "text":
            if tok.kind != "string":
                self.fail(f"{column} is text; put the value {at} in quotes: '{tok.value}'")
            return tok.value
        if kind == "bool":
            if tok.kind == "keyword":
                return tok.value == "TRUE"
            if tok.kind == "number" and tok.value in ("0", "1"):
                return tok.value == "1"
            self.fail(f"{column} is true/false; {text} {at} is not (write TRUE or FALSE)")
        if tok.kind != "string":
            self.fail(f"{column} is a date-time; write {text} {at} as a quoted ISO date-time, e.g. '2026-01-31'")
        when = datetime_value(tok.value)
        if when is None:
            self.fail(f"{column} is a date-time; {text} {at} is not an ISO date-time such as '2026-01-31T12:00:00Z'")
        return when

    def param_value(self, column: str, tok: Token, at: str) -> Value:
        """A literal compared with a params field: a number, a quoted string, TRUE or FALSE.

        The field's JSON type decides what it equals: ``params.epochs = 3`` matches the number 3 only (never the
        string '3'), on SQLite and PostgreSQL alike (farm.store.filter_sql).
        """
        if tok.kind == "keyword" and tok.value == "NULL":
            self.fail(f"NULL {at} can't be compared: write {column} IS NULL or {column} IS NOT NULL")
        if tok.kind == "keyword" and tok.value in ("TRUE", "FALSE"):
            self.count_value(tok)
            return tok.value == "TRUE"
        if tok.kind == "string":
            self.count_value(tok)
            return tok.value
        if tok.kind == "number":
            self.count_value(tok)
            number = number_value(tok.value)
            if number is None:
                self.fail(f"number {tok.text} {at} is out of range")
            return number
        what = "columns are not allowed here" if tok.kind == "name" else f"found {tok.describe()}"
        self.fail(f"expected a value {at}: {what}")
