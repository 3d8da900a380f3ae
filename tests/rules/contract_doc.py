"""docs/firestore-contract.md as data: its code snippets, the history queries and the writes its JavaScript
snippets make, so tests hold the document to the rules, the index file and memharbor.calls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "firestore-contract.md"
INDEXES = ROOT / "rules" / "firestore.indexes.json"
SNIPPET_LANGUAGES = ("javascript", "swift", "kotlin", "dart")

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_WHERE = re.compile(r'where\("(\w+)", "==", \w+\)')
_QUERY = re.compile(r'query\((\w+), ((?:or\([^;]*?\)\)|where\([^)]*\)), )?orderBy\("(\w+)", "(asc|desc)"\)\)')


@dataclass(frozen=True)
class Snippet:
    """One fenced code block and the heading it stands under."""

    language: str
    code: str
    section: str


@dataclass(frozen=True)
class HistoryQuery:
    """A query of the doc: the `or` of equality filters (one for a plain `where`), ordered by one field."""

    collection: str
    equalities: tuple[str, ...]
    order_field: str
    descending: bool

    def indexes(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        """The composite indexes production needs for it: one per disjunct (Firestore runs each apart)."""
        order = "DESCENDING" if self.descending else "ASCENDING"
        return {
            (self.collection, ((name, "ASCENDING"), (self.order_field, order)))
            for name in self.equalities
            if name != self.order_field
        }


def text() -> str:
    return CONTRACT.read_text()


def snippets(source: str | None = None) -> list[Snippet]:
    """Every fenced block of the doc, with the nearest heading above it."""
    source = text() if source is None else source
    found = []
    for match in _FENCE.finditer(source):
        headings = re.findall(r"^#+ (.+)$", source[: match.start()], re.MULTILINE)
        found.append(Snippet(match.group(1), match.group(2), headings[-1] if headings else ""))
    return found


def history_queries(source: str | None = None) -> list[HistoryQuery]:
    """The `query(calls, ..., orderBy(...))` expressions of the JavaScript snippets.

    `calls` is the variable the snippet binds with `collection(db, "...")`.
    """
    queries = []
    for snippet in snippets(source):
        if snippet.language != "javascript":
            continue
        bound = dict(re.findall(r'const (\w+) = collection\(db, "(\w+)"\)', snippet.code))
        flat = " ".join(snippet.code.split())
        for variable, filters, order_field, direction in _QUERY.findall(flat):
            queries.append(
                HistoryQuery(bound[variable], tuple(_WHERE.findall(filters)), order_field, direction == "desc")
            )
    return queries


def js_write(call: str, collection: str, source: str | None = None) -> set[str]:
    """The field names of the one JavaScript `call(doc(db, "collection", ...), {...})` write in the doc
    (`call` is setDoc or updateDoc); AssertionError unless exactly one such write exists.
    """
    pattern = re.compile(rf'{call}\((?:doc\(db, "{collection}", [^)]*\)|\w+), \{{(.*?)\}}\)', re.DOTALL)
    bodies = [
        body
        for snippet in snippets(source)
        if snippet.language == "javascript"
        for body in pattern.findall(snippet.code)
        if _names_collection(snippet.code, collection)
    ]
    assert len(bodies) == 1, f"expected one JavaScript {call} on {collection}, found {len(bodies)}"
    # `name: value` or the shorthand `name`; no value in the doc's writes holds a comma or a colon.
    return {part.split(":")[0].strip() for part in bodies[0].split(",") if part.strip()}


def _names_collection(code: str, collection: str) -> bool:
    return f'doc(db, "{collection}"' in code
