"""Tokens of the ``--where`` grammar (docs/query.md). Positions are 1-based character offsets.

Nothing here knows about columns or SQL: it splits text into numbers, strings, names, keywords and
punctuation, and rejects what can never be part of an expression (``;``, ``--``, unterminated strings,
unbalanced parentheses) with one line that names the position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from farm.errors import ConfigError

TokenKind = Literal["number", "string", "name", "keyword", "op", "lparen", "rparen", "comma", "end"]

KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS", "NULL", "TRUE", "FALSE"})
#: Comparison operators, with the spellings each one accepts (SQL's, plus pandas' ``==``).
OPERATORS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

#: A number literal: an optional sign, digits with an optional fraction, an optional exponent (ASCII digits).
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A name, or a name and one field (``params.epochs``).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
_SPACE = re.compile(r"\s+")
_OPERATOR = re.compile(r"==|!=|<>|<=|>=|[=<>]")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_.]")

#: Longest expression accepted, in characters (keeps the SQL, and the database's parser, small).
MAX_LENGTH = 10_000


@dataclass(frozen=True)
class Token:
    """One token: its kind, its value (the keyword upper-cased, a string unquoted) and its 1-based position."""

    kind: TokenKind
    value: str
    pos: int
    text: str = ""

    def describe(self) -> str:
        """The token as a message quotes it."""
        if self.kind == "end":
            return "the end"
        return repr(self.text or self.value)


def tokenize(text: str, *, source: str) -> list[Token]:
    """Split ``text`` into tokens, ending with an ``end`` token.

    Args:
        text: the expression.
        source: the option or argument it came from, for messages.

    Returns:
        The tokens.

    Raises:
        ConfigError: a character that belongs to no token, an unterminated string, a malformed number,
            a NUL character or text that is not valid Unicode, unbalanced parentheses, or an expression
            longer than :data:`MAX_LENGTH`.
    """
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"expression is too long ({len(text)} characters; at most {MAX_LENGTH})", source=source)
    _check_characters(text, source)
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        pos = i + 1
        if m := _SPACE.match(text, i):
            i = m.end()
        elif ch in "'\"":
            value, i = _string(text, i, source)
            tokens.append(Token("string", value, pos, text[pos - 1 : i]))
        elif m := NUMBER.match(text, i):
            if _NAME_CHAR.match(text, m.end()):
                end = m.end()
                while end < len(text) and _NAME_CHAR.match(text, end):
                    end += 1
                raise ConfigError(f"malformed number {text[i:end]!r} at position {pos}", source=source)
            tokens.append(Token("number", m.group(), pos, m.group()))
            i = m.end()
        elif m := _NAME.match(text, i):
            word = m.group()
            if word.upper() in KEYWORDS:
                tokens.append(Token("keyword", word.upper(), pos, word))
            else:
                tokens.append(Token("name", word, pos, word))
            i = m.end()
        elif m := _OPERATOR.match(text, i):
            tokens.append(Token("op", OPERATORS[m.group()], pos, m.group()))
            i = m.end()
        elif ch == "(":
            tokens.append(Token("lparen", ch, pos, ch))
            i += 1
        elif ch == ")":
            tokens.append(Token("rparen", ch, pos, ch))
            i += 1
        elif ch == ",":
            tokens.append(Token("comma", ch, pos, ch))
            i += 1
        else:
            raise ConfigError(f"unexpected character {ch!r} at position {pos}", source=source)
    tokens.append(Token("end", "", len(text) + 1))
    _check_parentheses(tokens, source)
    return tokens


def _check_characters(text: str, source: str) -> None:
    if "\x00" in text:
        raise ConfigError(f"NUL character at position {text.index(chr(0)) + 1}", source=source)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. from undecodable command-line bytes
        raise ConfigError(f"invalid character at position {e.start + 1} (not valid Unicode)", source=source) from None


def _string(text: str, start: int, source: str) -> tuple[str, int]:
    """The string literal opening at ``start`` (its quote doubled inside means the quote) and the index after it."""
    quote = text[start]
    parts: list[str] = []
    i = start + 1
    while True:
        end = text.find(quote, i)
        if end < 0:
            raise ConfigError(f"unterminated string starting at position {start + 1}", source=source)
        parts.append(text[i:end])
        if text.startswith(quote * 2, end):
            parts.append(quote)
            i = end + 2
            continue
        return "".join(parts), end + 1


def _check_parentheses(tokens: list[Token], source: str) -> None:
    opened: list[Token] = []
    for tok in tokens:
        if tok.kind == "lparen":
            opened.append(tok)
        elif tok.kind == "rparen":
            if not opened:
                raise ConfigError(
                    f"unbalanced parentheses at position {tok.pos}: this ')' has no matching '('", source=source
                )
            opened.pop()
    if opened:
        raise ConfigError(
            f"unbalanced parentheses at position {opened[-1].pos}: this '(' is never closed", source=source
        )
