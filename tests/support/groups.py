"""Care groups for tests that place calls: only members of one group may call each other."""

from __future__ import annotations

from collections.abc import Iterable

from google.cloud import firestore

from memharbor.groups import group_document
from tests.support.firestore_rest import FirestoreRest

# The group most tests place their calls in, and everyone the tests let ring each other in it.
GROUP_ID = "group1"
MEMBERS = ("alice", "bob", "carol", "dan", "dave", "erin")


def seed_group(
    db: firestore.Client | FirestoreRest, group_id: str = GROUP_ID, members: Iterable[str] = MEMBERS
) -> None:
    """Write `groups/{group_id}` with admin rights, as the app's group management would."""
    doc = group_document(list(members))
    if isinstance(db, FirestoreRest):
        result = db.as_owner().set(f"groups/{group_id}", doc)
        assert result.ok, result
    else:
        db.collection("groups").document(group_id).set(doc)
