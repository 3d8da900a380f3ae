"""What the watcher does about a call, decided from what it read: no I/O, no clock, no Firestore types.

`decide` takes the call document, its server document `callServer/{callId}` (None until the watcher
first acted on the call), the call's care group (read only while the server document is None), the time
and the reactor's configuration, and returns one decision value. `watcher/reactor.py` reads the
documents, calls `decide` and writes what the decision says under preconditions on the documents as
read, so a decision made on documents that changed meanwhile is never written (it reads and decides
again).

A call is judged by its invariants (`memharbor.calls.invariant_errors`), not only by whether its status
is reachable: a call seen for the first time must be a valid call of its status with nothing
server-owned on it, and a status change must be reachable from the last legal status *and* proven by
the stamps of its path. What cannot be repaired makes the call invalid (ignored from then on); what can
is put back (status, identity fields, a malformed `updatedAt`). Either way the call gets a `violation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from memharbor import calls, groups
from memharbor.calls import Status


@dataclass(frozen=True)
class ReactorConfig:
    """Tunables of the reactor."""

    instance_id: str
    ring_timeout_s: float
    lease_s: float = 15.0
    # An `updatedAt` this far past the decision's time is malformed (clocks differ far less).
    future_tolerance_s: float = 60.0
    # Devices not refreshed for this long are pruned, never rung; at most this many are kept per user.
    device_ttl_s: float = 60 * 86400.0
    max_devices: int = 10


@dataclass(frozen=True)
class Violation:
    """The call's `violation` map, without its `at` stamp (the writer's time)."""

    reason: str
    attempted: Any  # the status found on the call
    restored: Any  # the status the call is left in, or None when it is ignored from now on


@dataclass(frozen=True)
class Gone:
    """The call document does not exist."""


@dataclass(frozen=True)
class Invalid:
    """Beyond repair: record `violation` (None: recorded before) and mark the server document invalid,
    so no effect ever runs for the call. `restore` only replaces a malformed `updatedAt`."""

    violation: Violation | None
    restore: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Revert:
    """Put back what the last legal state had: `restore` the fields (status, identity, `updatedAt`),
    `remove` the stamps the restored status cannot have, and record `violation`.

    `reviews_seen`: the reverted write stamped `updatedAt` on an ended call; it is not a review.
    """

    violation: Violation
    restore: Mapping[str, Any]
    remove: tuple[str, ...] = ()
    reviews_seen: datetime | None = None


@dataclass(frozen=True)
class Review:
    """Count one review write: `reviewCount` becomes `count` and `lastReviewAt` the review's `updatedAt`."""

    count: int
    at: datetime


@dataclass(frozen=True)
class Run:
    """Claim the effects of `status` for this instance until `lease_until`, then carry them out.

    In the same write: `ring` (channelName, ringDeadline) on a live call that lacks them; with `time_out`
    the call moves `pending -> missed` (the claim is for `missed`); `identity` is remembered on the server
    document when it holds none yet; `review` counts a review write the call carries. `stop_owed`: an
    `ended` call whose answered-elsewhere notices nobody sent or will send; its effects send them.
    """

    status: str
    lease_until: datetime
    ring: Mapping[str, Any] = field(default_factory=dict)
    time_out: bool = False
    identity: Mapping[str, str] | None = None
    review: Review | None = None
    stop_owed: bool = False


@dataclass(frozen=True)
class Done:
    """The effects of `status` were carried out (by anyone)."""

    status: str


@dataclass(frozen=True)
class Busy:
    """Another live instance holds the lease on the effects of `status`."""

    status: str


Decision = Gone | Invalid | Revert | Review | Run | Done | Busy


def decide(
    call_id: str,
    call: Mapping[str, Any] | None,
    server: Mapping[str, Any] | None,
    group: Mapping[str, Any] | None,
    now: datetime,
    config: ReactorConfig,
    time_out: bool = False,
) -> Decision:
    """What to do about the call `call_id` given its documents as read at `now`.

    `time_out`: the ring timer fired, so a pending call past its `ringDeadline` is moved to `missed`.
    """
    if call is None:
        return Gone()
    if server is not None and server.get("invalid"):
        return Invalid(None)
    stamp = _StampCheck(call, now, config)
    verdict = _judge_new(call_id, call, group, stamp) if server is None else _judge_known(call_id, call, server, stamp)
    if verdict is not None:
        return verdict
    return _claim(call_id, call, server, now, config, time_out)


class _StampCheck:
    """Whether the call's `updatedAt` must be put back: the change feed orders calls by it, so a value
    that is not a timestamp, or lies far in the future, would hide the call (or others) from it."""

    def __init__(self, call: Mapping[str, Any], now: datetime, config: ReactorConfig) -> None:
        updated = call.get("updatedAt")
        self.reason: str | None = None
        if not isinstance(updated, datetime):
            self.reason = "updatedAt must be a timestamp"
        elif updated > now + timedelta(seconds=config.future_tolerance_s):
            self.reason = "updatedAt lies in the future"
        self.restore: dict[str, Any] = {} if self.reason is None else {"updatedAt": now}


def _judge_new(
    call_id: str, call: Mapping[str, Any], group: Mapping[str, Any] | None, stamp: _StampCheck
) -> Invalid | None:
    """A call the watcher never acted on: valid for its status, untouched by anyone posing as the server,
    between members of its care group (admin writes bypass the rules' membership test)."""
    status = call.get("status")
    errors = calls.invariant_errors(call, call_id)
    if stamp.reason is not None and stamp.reason not in errors:
        errors.append(stamp.reason)
    preset = calls.server_fields_in(call)
    if preset:
        errors.append("server-owned fields set before the server saw the call: " + ", ".join(preset))
    if errors:
        return Invalid(Violation("; ".join(errors), status, None), stamp.restore)
    if not groups.are_members(group, call["callerId"], call["receiverId"]):
        return Invalid(Violation(groups.NOT_GROUP_MEMBERS, status, None))
    return None


def _stored_identity(call_id: str, server: Mapping[str, Any]) -> Mapping[str, str] | None:
    """The identity fields remembered at the first claim (older server documents have none)."""
    identity = server.get("identity")
    if not isinstance(identity, Mapping) or identity.get("callId") != call_id:
        return None
    if not all(isinstance(identity.get(name), str) for name in calls.IDENTITY_FIELDS):
        return None
    return identity


def _illegal_move(last: str, call: Mapping[str, Any]) -> str | None:
    """Why the change from the last legal status to the call's status is illegal, or None."""
    status = call.get("status")
    if status == last:
        return None
    if not isinstance(status, str) or not calls.reachable(last, status):
        return f"illegal transition {last} -> {status}"
    unproven = calls.stamp_errors(call)
    if unproven:
        return f"{last} -> {status} not proven by its stamps: " + "; ".join(unproven)
    return None


def _judge_known(
    call_id: str, call: Mapping[str, Any], server: Mapping[str, Any], stamp: _StampCheck
) -> Decision | None:
    """A call the watcher acted on before: a legal change of a valid call, or a violation."""
    last = server.get("status")
    status = call.get("status")
    if not isinstance(last, str) or last not in calls.STATUS_STAMPS:
        # Only a hand-edited server document gets here: with no legal status to go back to, leave the call.
        return Invalid(Violation(f"no last legal status to judge {status} by", status, None))
    identity = _stored_identity(call_id, server) or {}
    restore: dict[str, Any] = {name: value for name, value in identity.items() if call.get(name) != value}
    reasons = [f"{name} changed" for name in restore]
    restore |= stamp.restore
    if stamp.reason is not None:
        reasons.append(stamp.reason)
    repaired = {**call, **restore}
    illegal = _illegal_move(last, repaired)
    if illegal is not None:
        return _revert(last, repaired, [illegal, *reasons], restore)
    errors = calls.invariant_errors(repaired, call_id)
    if errors:
        return Invalid(Violation("; ".join(reasons + errors), status, None), stamp.restore)
    if restore:
        # A fresh updatedAt on an ended call is the server's, not a review.
        seen = restore.get("updatedAt") if status == Status.ENDED else None
        return Revert(Violation("; ".join(reasons), status, status), restore, reviews_seen=seen)
    return None


def _revert(last: str, call: Mapping[str, Any], reasons: list[str], restore: Mapping[str, Any]) -> Revert:
    """Back to the last legal status, without the stamps it cannot have."""
    own = calls.STATUS_STAMPS[Status(last)]
    remove = tuple(name for name in calls.STAMPS if name not in own and name in call)
    updated = call.get("updatedAt")
    seen = updated if last == Status.ENDED and isinstance(updated, datetime) else None
    violation = Violation("; ".join(reasons), call.get("status"), last)
    return Revert(violation, {**restore, "status": last}, remove, seen)


def _claim(
    call_id: str,
    call: Mapping[str, Any],
    server: Mapping[str, Any] | None,
    now: datetime,
    config: ReactorConfig,
    time_out: bool,
) -> Decision:
    """A legal call: time it out, claim its status's effects, count a review, or leave it."""
    status = str(call["status"])
    lease_until = now + timedelta(seconds=config.lease_s)
    identity = None if server is not None and _stored_identity(call_id, server) else _identity(call)
    if time_out and _ring_over(call, now):
        return Run(Status.MISSED.value, lease_until, time_out=True, identity=identity)
    effect = _effect(server, status)
    review = _review(call, server)
    if _may_claim(effect, now, config.instance_id):
        owed = status == Status.ENDED and stop_owed(server, now)
        ring = _ring_setup(call_id, call, config)
        return Run(status, lease_until, ring, identity=identity, review=review, stop_owed=owed)
    if review is not None:
        return review
    return Done(status) if effect.get("state") == "done" else Busy(status)


def stop_owed(server: Mapping[str, Any] | None, now: datetime) -> bool:
    """True when the call rang but the `accepted` stop-ringing notices were never sent and never will be:
    no watcher ran `accepted` (all down, or behind, until the call had ended), or its claimant died.

    The call has moved on, so no watcher will claim `accepted` any more: the `ended` claimant sends them,
    else the receiver's other devices keep ringing after the call is over.
    """
    if not _effect(server, Status.PENDING):
        return False  # nobody rang: nothing rings
    accepted = _effect(server, Status.ACCEPTED)
    if not accepted:
        return True
    lease = accepted.get("leaseUntil")
    lapsed = not isinstance(lease, datetime) or lease <= now
    return accepted.get("state") != "done" and lapsed


def _identity(call: Mapping[str, Any]) -> dict[str, str]:
    return {name: call[name] for name in calls.IDENTITY_FIELDS}


def _ring_over(call: Mapping[str, Any], now: datetime) -> bool:
    """A call still ringing at or after its deadline."""
    deadline = call.get("ringDeadline")
    return call.get("status") == Status.PENDING and isinstance(deadline, datetime) and deadline <= now


def _effect(server: Mapping[str, Any] | None, status: str) -> Mapping[str, Any]:
    effects = (server or {}).get("effects")
    effect = effects.get(status) if isinstance(effects, Mapping) else None
    return effect if isinstance(effect, Mapping) else {}


def _may_claim(effect: Mapping[str, Any], now: datetime, instance_id: str) -> bool:
    """Not done, and not held by another instance whose lease still runs."""
    if effect.get("state") == "done":
        return False
    lease = effect.get("leaseUntil")
    held = effect.get("state") == "claimed" and isinstance(lease, datetime) and lease > now
    return not held or effect.get("by") == instance_id


def _ring_setup(call_id: str, call: Mapping[str, Any], config: ReactorConfig) -> dict[str, Any]:
    """channelName (for any live call that lacks one, e.g. accepted before we saw it ring) and
    ringDeadline (for a pending call), when not already assigned."""
    if call.get("status") not in calls.ACTIVE:
        return {}
    created: datetime = call["createdAt"]
    update: dict[str, Any] = {}
    if not call.get("channelName"):
        epoch_ms = int(created.timestamp() * 1000)
        update["channelName"] = calls.channel_name(
            call["groupId"], call["callerId"], call["receiverId"], call_id, epoch_ms
        )
    if call.get("status") == Status.PENDING and not isinstance(call.get("ringDeadline"), datetime):
        update["ringDeadline"] = created + timedelta(seconds=config.ring_timeout_s)
    return update


def _review(call: Mapping[str, Any], server: Mapping[str, Any] | None) -> Review | None:
    """The review write an ended call carries and the server has not counted, or None.

    After `ended` the rules let participants make only review writes, each stamping `updatedAt`, so a
    later `updatedAt` than `endedAt` (and than the last review counted) is a review write not yet counted.
    """
    updated, ended = call.get("updatedAt"), call.get("endedAt")
    if call.get("status") != Status.ENDED or not isinstance(updated, datetime) or not isinstance(ended, datetime):
        return None
    reviews = (server or {}).get("reviews")
    reviews = reviews if isinstance(reviews, Mapping) else {}
    seen, count = reviews.get("seen"), reviews.get("count")
    if updated <= ended or (isinstance(seen, datetime) and updated <= seen):
        return None
    return Review((count if isinstance(count, int) and not isinstance(count, bool) else 0) + 1, updated)
