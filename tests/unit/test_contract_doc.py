"""docs/firestore-contract.md agrees with rules/firestore.indexes.json and memharbor.calls (no emulator)."""

from __future__ import annotations

import json
import re

from memharbor import calls
from tests.rules import contract_doc

# The watcher's own query on calls (status == pending, ringDeadline <= now): not an app query.
SERVER_CALL_INDEXES = {("calls", (("status", "ASCENDING"), ("ringDeadline", "ASCENDING")))}


def shipped_indexes(collection: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    data = json.loads(contract_doc.INDEXES.read_text())
    return {
        (ix["collectionGroup"], tuple((f["fieldPath"], f["order"]) for f in ix["fields"]))
        for ix in data["indexes"]
        if ix["collectionGroup"] == collection and ix["queryScope"] == "COLLECTION"
    }


class TestHistoryIndexes:
    """The index file holds exactly the composite indexes the doc's queries on calls need, and the server's."""

    def test_calls_indexes_are_the_docs_and_the_servers(self) -> None:
        """Every index the history queries need is shipped, and no calls index is shipped for nothing."""
        needed: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for query in contract_doc.history_queries():
            needed |= query.indexes()
        assert needed, "no history query found in the doc"
        assert shipped_indexes("calls") == needed | SERVER_CALL_INDEXES

    def test_or_query_needs_both_single_indexes(self) -> None:
        """The `or` of callerId and receiverId ordered by createdAt needs one index per disjunct."""
        both = contract_doc.HistoryQuery("calls", ("callerId", "receiverId"), "createdAt", True)
        assert both.indexes() == {
            ("calls", (("callerId", "ASCENDING"), ("createdAt", "DESCENDING"))),
            ("calls", (("receiverId", "ASCENDING"), ("createdAt", "DESCENDING"))),
        }

    def test_parser_reads_a_query(self) -> None:
        """A snippet's query(..., where(...), orderBy(...)) is read with its collection and direction."""
        source = (
            '## H\n\n```javascript\nconst c = collection(db, "calls");\n'
            'const q = query(c, where("receiverId", "==", uid),\n  orderBy("createdAt", "asc"));\n```\n'
        )
        assert contract_doc.history_queries(source) == [
            contract_doc.HistoryQuery("calls", ("receiverId",), "createdAt", False)
        ]


class TestSnippets:
    """Every snippet section has all four languages, and the JavaScript writes are the contract's fields."""

    def test_four_languages_per_section(self) -> None:
        """A section with a snippet in one of the four SDK languages has one in each of them."""
        sections: dict[str, set[str]] = {}
        for snippet in contract_doc.snippets():
            if snippet.language in contract_doc.SNIPPET_LANGUAGES:
                sections.setdefault(snippet.section, set()).add(snippet.language)
        assert sections
        incomplete = {name: sorted(langs) for name, langs in sections.items() if len(langs) != 4}
        assert incomplete == {}

    def test_javascript_is_the_modular_sdk(self) -> None:
        """JavaScript snippets use the modular API (doc(db, ...)), never the namespaced db.collection()."""
        code = "\n".join(s.code for s in contract_doc.snippets() if s.language == "javascript")
        assert "doc(db, " in code
        assert "db.collection(" not in code and "firebase.firestore" not in code

    def test_create_fields(self) -> None:
        """The JavaScript create writes every required field and only fields apps may create."""
        fields = contract_doc.js_write("setDoc", "calls")
        assert calls.CREATE_REQUIRED <= fields <= calls.CREATE_REQUIRED | calls.CREATE_OPTIONAL

    def test_recording_request_fields(self) -> None:
        """The JavaScript recording request writes exactly calls.RECORDING_REQUEST_FIELDS."""
        assert contract_doc.js_write("setDoc", "recordings") == calls.RECORDING_REQUEST_FIELDS

    def test_recording_stop_field(self) -> None:
        """The JavaScript stop writes only the stop field."""
        assert contract_doc.js_write("updateDoc", "recordings") == {calls.RECORDING_STOP_FIELD}

    def test_js_write_needs_exactly_one(self) -> None:
        """The write finder refuses a doc with no such write rather than checking nothing."""
        try:
            contract_doc.js_write("setDoc", "calls", "no snippets here")
        except AssertionError as error:
            assert "found 0" in str(error)
        else:
            raise AssertionError("js_write accepted a doc without the write")


class TestRingTimer:
    """Apps time out from the document's ringDeadline, never a hard-coded ring length."""

    def test_timer_snippets_use_ring_deadline(self) -> None:
        """Each ring-timer snippet reads ringDeadline and writes missed."""
        timers = [s for s in contract_doc.snippets() if s.section == "The caller's ring timer"]
        assert {s.language for s in timers} == set(contract_doc.SNIPPET_LANGUAGES)
        for snippet in timers:
            assert "ringDeadline" in snippet.code and "missed" in snippet.code, snippet.language

    def test_no_hard_coded_sixty_seconds_for_apps(self) -> None:
        """No call-step or timer snippet carries a 60 s ring length, and the doc no longer tells apps to use one."""
        steps = [s for s in contract_doc.snippets() if s.section[:2] in {"1.", "4."} or "ring timer" in s.section]
        assert steps
        for snippet in steps:
            assert not re.search(r"\b60(_?000)?\b", snippet.code), snippet.section
        assert "use the same 60 s as the server" not in contract_doc.text()


class TestMigrationNote:
    """The v1 to v2 migration note opens the doc."""

    def test_note_before_collections(self) -> None:
        """The migration section comes before the first data section and names each change."""
        text = contract_doc.text()
        note = text.index("## Contract v2")
        assert note < text.index("## Collections")
        section = text[note : text.index("## Collections")]
        for topic in ("Listen", "indexes", "ringDeadline", "Recordings", "JavaScript"):
            assert topic in section, topic
