"""What the watcher does when a call changes: check the transition, claim its side effect once, act.

Every status a call reaches has one bundle of side effects. Before acting, a watcher claims that bundle
in a transaction on the server-only document `callServer/{callId}`, which also remembers the last
legal status (to detect and revert illegal changes). A claim carries a lease, so a crashed claimant's
work is taken over by the periodic sweep once the lease lapses.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.cloud import firestore

from memharbor import calls, groups
from memharbor.calls import Actor, Status
from memharbor.clock import Clock
from memharbor.logs import get_logger
from memharbor.store import CALLS, GROUPS, USERS
from watcher.push import Notifier, call_ended_payload, incoming_call_payload, resolve_target

CALL_SERVER = "callServer"
log = get_logger()


@dataclass(frozen=True)
class _Hints:
    """What the listener saw of a call, used only to choose which documents to read with it."""

    receiver_id: str | None = None
    group_id: str | None = None


class Claim(enum.Enum):
    RUN = "run"  # this instance owns the status's side effects now
    DONE = "done"  # already carried out (by anyone)
    BUSY = "busy"  # another live instance holds the lease
    REVERTED = "reverted"  # the change was illegal and has been undone
    INVALID = "invalid"  # the document is malformed; recorded, ignored from now on
    GONE = "gone"  # the document does not exist


@dataclass(frozen=True)
class ClaimRace(RuntimeError):
    """The call changed under every claim attempt; the sweep will try again."""


def _nest(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Turn `effects.`x`` style keys into nested maps, for a create (which takes no field paths)."""
    nested: dict[str, Any] = {}
    for key, value in fields.items():
        if key.startswith("effects."):
            nested.setdefault("effects", {})[key.split(".", 1)[1].strip("`")] = value
        else:
            nested[key] = value
    return nested


@dataclass(frozen=True)
class Claimed:
    """The outcome of a claim, with the call as read inside it (and the receiver, when a push follows)."""

    claim: Claim
    call: dict[str, Any]
    user: dict[str, Any] | None = None


_FINAL_MEMORY = 10_000
_CLAIM_ATTEMPTS = 5
# Statuses whose effects push to the receiver's device.
_PUSHING = frozenset({Status.PENDING, Status.CANCELLED, Status.MISSED})


@dataclass(frozen=True)
class ReactorConfig:
    """Tunables of the reactor."""

    instance_id: str
    ring_timeout_s: float
    lease_s: float = 15.0


def _ts(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _violation(reason: str, attempted: Any, restored: Any) -> dict[str, Any]:
    return {"reason": reason, "attempted": attempted, "restored": restored, "at": firestore.SERVER_TIMESTAMP}


class CallReactor:
    """Reacts to one call at a time (the caller serializes per call id)."""

    def __init__(
        self,
        db: firestore.AsyncClient,
        notifier: Notifier,
        clock: Clock,
        config: ReactorConfig,
        schedule_timeout: Callable[[str, datetime], None],
        cancel_timeout: Callable[[str], None],
        recording_hooks: RecordingHooks | None = None,
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._clock = clock
        self._config = config
        self._schedule_timeout = schedule_timeout
        self._cancel_timeout = cancel_timeout
        self._recording = recording_hooks or NoRecording()
        # The last status per call whose effects this instance knows are done: spares a transaction
        # for each echo of our own writes. Any other status, even one seen before, is handled afresh.
        self._done: dict[str, str] = {}

        # Calls this instance saw through to a final status (bounded): their removal from the
        # listener's result set is an echo too.
        self._final: OrderedDict[str, None] = OrderedDict()

    def known_done(self, call_id: str, status: Any) -> bool:
        """True when the call is still in the status whose effects are known done."""
        return self._done.get(call_id) == str(status)

    def known_final(self, call_id: str) -> bool:
        """True when this instance handled the call's final status."""
        return call_id in self._final

    def forget(self, call_id: str) -> None:
        """Drop what is cached about a call that reached a final status."""
        self._done.pop(call_id, None)
        self._final[call_id] = None
        while len(self._final) > _FINAL_MEMORY:
            self._final.popitem(last=False)

    def prune(self, active_ids: set[str]) -> None:
        """Forget active-status knowledge of calls that are no longer active (their events were lost)."""
        for call_id in [c for c in self._done if c not in active_ids]:
            del self._done[call_id]

    async def handle(
        self, call_id: str, receiver_hint: str | None = None, time_out: bool = False, group_hint: str | None = None
    ) -> Claim:
        """Bring the call's side effects up to date with its current document.

        `receiver_hint` and `group_hint` (the receiverId and groupId the listener saw) let the receiver's
        user document and the care group be read in the same round trip as the call (hints only choose
        what to prefetch: every decision uses the documents as read). With `time_out`, a pending call
        whose ring deadline has passed is moved to `missed` in the same write that claims the effects of
        `missed` (see `_timeout`).
        """
        claimed = await self._claim(call_id, _Hints(receiver_hint, group_hint), time_out)
        call = claimed.call
        status = str(call.get("status")) if call else ""
        if claimed.claim is Claim.RUN:
            call_update = await self._effects(call_id, call, claimed.user)
            await self._finish(call_id, status, call_update)
        if claimed.claim in (Claim.RUN, Claim.DONE):
            self._done[call_id] = status
            self._keep_timer(call_id, call)
            if status in calls.FINAL:
                self.forget(call_id)
        return claimed.claim

    def _keep_timer(self, call_id: str, call: Mapping[str, Any]) -> None:
        deadline = _ts(call.get("ringDeadline"))
        if call.get("status") == Status.PENDING and deadline is not None:
            self._schedule_timeout(call_id, deadline)
        elif call.get("status") != Status.PENDING:
            self._cancel_timeout(call_id)

    async def _claim(self, call_id: str, hints: _Hints, time_out: bool = False) -> Claimed:
        """Claim with optimistic concurrency: read, decide, write under preconditions, retry on a race.

        A Firestore transaction would do the same in four round trips with locks held in between; this
        takes two (three when the receiver was not known in advance) and never blocks an app's write.
        """
        for attempt in range(_CLAIM_ATTEMPTS):
            try:
                return await self._claim_once(call_id, hints, time_out)
            except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted, gexc.Conflict):
                # Someone wrote between our read and our write: read again.
                await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
        raise ClaimRace(f"call {call_id} kept changing during {_CLAIM_ATTEMPTS} claim attempts")

    async def _claim_once(self, call_id: str, hints: _Hints, time_out: bool = False) -> Claimed:
        call_ref = self._db.collection(CALLS).document(call_id)
        server_ref = self._db.collection(CALL_SERVER).document(call_id)
        refs = [call_ref, server_ref]
        if hints.receiver_id and calls.ID_PATTERN.fullmatch(hints.receiver_id):
            refs.append(self._db.collection(USERS).document(hints.receiver_id))
        if hints.group_id and calls.GROUP_ID_PATTERN.fullmatch(hints.group_id):
            refs.append(self._db.collection(GROUPS).document(hints.group_id))
        snaps = {snap.reference.path: snap async for snap in self._db.get_all(refs)}
        call_snap, server_snap = snaps[call_ref.path], snaps[server_ref.path]
        if not call_snap.exists:
            return Claimed(Claim.GONE, {})
        call = call_snap.to_dict() or {}
        server = server_snap.to_dict() if server_snap.exists else None
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        guard_call = self._db.write_option(last_update_time=call_snap.update_time)
        batch = self._db.batch()
        # Membership is judged once, when the watcher first sees the call (no server document yet).
        group = await self._group_of(call, snaps) if server is None else None
        verdict = self._judge(call, server, group)
        if verdict is not None:
            claim, write = verdict
            if write is not None:
                batch.update(call_ref, write, option=guard_call)
            if claim is Claim.INVALID:
                self._write_server(
                    batch, server_snap, {"callId": call_id, "invalid": True, "status": call.get("status")}
                )
            if write is not None or claim is Claim.INVALID:
                await batch.commit()
            return Claimed(claim, call)
        timeout = self._timeout(call, now) if time_out else None
        if timeout is not None:
            batch.update(call_ref, timeout, option=guard_call)
            call = {**call, "status": Status.MISSED.value}
        elif not self._may_claim(call, server, now):
            return Claimed(Claim.DONE if self._is_done(call, server) else Claim.BUSY, call)
        self._write_server(batch, server_snap, self._lease(call_id, call, now))
        ring = self._ring_setup(call_id, call)
        if ring:
            batch.update(call_ref, ring, option=guard_call)
        user = await self._user_for_push(call, snaps)
        await batch.commit()
        if timeout is not None:
            log.info("call.timed_out", call_id=call_id)
        call.update(ring)
        return Claimed(Claim.RUN, call, user)

    @staticmethod
    def _timeout(call: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
        """The `pending -> missed` update when the call still rings past its deadline, else None.

        Written in the claim's batch: one read and one write instead of a transaction followed by a
        second claim, which halves the round trips of every unanswered call.
        """
        deadline = _ts(call.get("ringDeadline"))
        if call.get("status") != Status.PENDING or deadline is None or deadline > now:
            return None
        move = calls.check_transition(call, Status.MISSED.value, Actor.SERVER)
        return {
            "status": Status.MISSED.value,
            move.stamp: firestore.SERVER_TIMESTAMP,
            "updatedAt": firestore.SERVER_TIMESTAMP,
        }

    def _write_server(self, batch: Any, server_snap: Any, fields: dict[str, Any]) -> None:
        """Create the server document, or update it only if nobody changed it since we read it."""
        if server_snap.exists:
            guard = self._db.write_option(last_update_time=server_snap.update_time)
            batch.update(server_snap.reference, fields, option=guard)
        else:
            batch.create(server_snap.reference, _nest(fields))

    async def _group_of(self, call: Mapping[str, Any], snaps: Mapping[str, Any]) -> dict[str, Any] | None:
        """The call's care group as stored (prefetched when the listener hinted it), or None."""
        group_id = call.get("groupId")
        if not isinstance(group_id, str) or not calls.GROUP_ID_PATTERN.fullmatch(group_id):
            return None
        ref = self._db.collection(GROUPS).document(group_id)
        snap = snaps.get(ref.path) or await ref.get()
        return snap.to_dict() if snap.exists else None

    async def _user_for_push(self, call: Mapping[str, Any], snaps: Mapping[str, Any]) -> dict[str, Any] | None:
        receiver = call.get("receiverId")
        if call.get("status") not in _PUSHING or not isinstance(receiver, str) or not receiver:
            return None
        ref = self._db.collection(USERS).document(receiver)
        snap = snaps.get(ref.path) or await ref.get()
        return snap.to_dict() if snap.exists else None

    def _ring_setup(self, call_id: str, call: Mapping[str, Any]) -> dict[str, Any]:
        """channelName (for any live call that lacks one, e.g. accepted before we saw it ring) and
        ringDeadline (for a pending call), when not already assigned."""
        if call.get("status") not in calls.ACTIVE:
            return {}
        created = _ts(call.get("createdAt")) or datetime.fromtimestamp(self._clock.time(), UTC)
        update: dict[str, Any] = {}
        if not call.get("channelName"):
            epoch_ms = int(created.timestamp() * 1000)
            update["channelName"] = calls.channel_name(
                call["groupId"], call["callerId"], call["receiverId"], call_id, epoch_ms
            )
        if call.get("status") == Status.PENDING and _ts(call.get("ringDeadline")) is None:
            update["ringDeadline"] = created + timedelta(seconds=self._config.ring_timeout_s)
        return update

    def _judge(
        self, call: Mapping[str, Any], server: Mapping[str, Any] | None, group: Mapping[str, Any] | None = None
    ) -> tuple[Claim, dict[str, Any] | None] | None:
        """INVALID or REVERTED with the call update to make, or None when the change is legal.

        `group` is the call's care group, read when the call is first seen (`server` is None).
        """
        status = call.get("status")
        if server is not None and server.get("invalid"):
            return Claim.INVALID, None
        if server is None:
            errors = calls.field_errors(call)
            if _ts(call.get("createdAt")) is None:
                errors.append("createdAt must be a timestamp")
            if errors:
                return Claim.INVALID, {"violation": _violation("; ".join(errors), status, None)}
            # Admin writes bypass the rules' membership test: a stranger's call never rings.
            if not groups.are_members(group, call["callerId"], call["receiverId"]):
                return Claim.INVALID, {"violation": _violation(groups.NOT_GROUP_MEMBERS, status, None)}
            return None
        last = server.get("status")
        if last != status and not calls.reachable(last, str(status)):
            # Only admin credentials or undeployed rules get here: put the last legal status back.
            reason = f"illegal transition {last} -> {status}"
            return Claim.REVERTED, {"status": last, "violation": _violation(reason, status, last)}
        return None

    @staticmethod
    def _effect(call: Mapping[str, Any], server: Mapping[str, Any] | None) -> Mapping[str, Any]:
        return ((server or {}).get("effects") or {}).get(str(call.get("status"))) or {}

    def _is_done(self, call: Mapping[str, Any], server: Mapping[str, Any] | None) -> bool:
        return self._effect(call, server).get("state") == "done"

    def _may_claim(self, call: Mapping[str, Any], server: Mapping[str, Any] | None, now: datetime) -> bool:
        """Not done, and not held by another instance whose lease still runs."""
        effect = self._effect(call, server)
        if effect.get("state") == "done":
            return False
        lease = _ts(effect.get("leaseUntil"))
        held = effect.get("state") == "claimed" and lease is not None and lease > now
        return not held or effect.get("by") == self._config.instance_id

    def _lease(self, call_id: str, call: Mapping[str, Any], now: datetime) -> dict[str, Any]:
        """The server-document fields that claim the effects of the call's current status."""
        status = str(call.get("status"))
        return {
            "callId": call_id,
            "status": status,
            "effectOpen": True,
            f"effects.`{status}`": {
                "state": "claimed",
                "by": self._config.instance_id,
                "leaseUntil": now + timedelta(seconds=self._config.lease_s),
            },
        }

    async def _finish(self, call_id: str, status: str, call_update: dict[str, Any]) -> None:
        """Record the effects' results on the call and mark them done, in one write."""
        batch = self._db.batch()
        if call_update:
            batch.update(self._db.collection(CALLS).document(call_id), call_update)
        done = {
            f"effects.`{status}`.state": "done",
            f"effects.`{status}`.doneAt": firestore.SERVER_TIMESTAMP,
            "effectOpen": False,
        }
        batch.update(self._db.collection(CALL_SERVER).document(call_id), done)
        await batch.commit()

    async def _effects(self, call_id: str, call: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
        handlers: dict[str, Callable[[str, dict[str, Any], dict[str, Any] | None], Awaitable[dict[str, Any]]]] = {
            Status.PENDING: self._ring,
            Status.ACCEPTED: self._accepted,
            Status.CANCELLED: self._stop_ringing,
            Status.MISSED: self._stop_ringing,
            Status.ENDED: self._ended,
        }
        handler = handlers.get(str(call.get("status")))
        return await handler(call_id, call, user) if handler is not None else {}

    async def _ring(self, call_id: str, call: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
        deadline: datetime = call["ringDeadline"]
        self._schedule_timeout(call_id, deadline)
        if "pushSent" in call:
            return {}  # a previous claimant sent it and recorded the result before dying
        if deadline.timestamp() <= self._clock.time():
            # Apple and Google would drop it anyway, and the phone must not ring for a missed call.
            log.warning("push.skipped", call_id=call_id, kind="incoming_call", reason="ring_deadline_passed")
            return {"pushSent": False, "pushPlatform": None, "pushError": "ring_deadline_passed"}
        sent, platform, error = await self._push(call, user, "incoming_call", incoming_call_payload(call), deadline)
        return {"pushSent": sent, "pushPlatform": platform, "pushError": error}

    async def _push(
        self,
        call: Mapping[str, Any],
        user: dict[str, Any] | None,
        kind: Any,
        payload: dict[str, str],
        expires: datetime,
    ) -> tuple[bool, str | None, str | None]:
        receiver = str(call.get("receiverId"))
        platform = (user or {}).get("platform")
        target = resolve_target(receiver, user, kind)
        if target is None:
            log.info("push.skipped", call_id=call.get("callId"), kind=kind, reason="no_device_token")
            return False, platform if isinstance(platform, str) else None, "no_device_token"
        # An incoming-call push is retried only while the call still rings.
        wanted = functools.partial(self._still_ringing, str(call.get("callId"))) if kind == "incoming_call" else None
        result = await self._notifier.send(target, kind, payload, expires.timestamp(), wanted)
        if result.token_invalid:
            await self._forget_token(receiver, target.user_field)
        event = "push.sent" if result.sent else "push.failed"
        log.info(event, call_id=call.get("callId"), kind=kind, platform=target.platform, error=result.error)
        return result.sent, result.platform, result.error

    async def _forget_token(self, uid: str, field: str) -> None:
        await (
            self._db.collection(USERS)
            .document(uid)
            .update({field: firestore.DELETE_FIELD, "pushTokenInvalidAt": firestore.SERVER_TIMESTAMP})
        )
        log.info("push.token_removed", uid=uid, field=field)

    async def _still_ringing(self, call_id: str) -> bool:
        """Asked between push retries: is the call still pending? If so, extend our claim's lease.

        Retries may outlast the lease; renewing it keeps another replica from claiming the ring (and
        pushing again) while this one is still trying.
        """
        snap = await self._db.collection(CALLS).document(call_id).get()
        if not snap.exists or snap.get("status") != Status.PENDING:
            return False
        lease = datetime.fromtimestamp(self._clock.time(), UTC) + timedelta(seconds=self._config.lease_s)
        await self._db.collection(CALL_SERVER).document(call_id).update({"effects.`pending`.leaseUntil": lease})
        return True

    async def _accepted(self, call_id: str, call: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
        self._cancel_timeout(call_id)
        await self._recording.on_accepted(call_id, call)
        return {}

    async def _stop_ringing(self, call_id: str, call: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
        self._cancel_timeout(call_id)
        expires = datetime.fromtimestamp(self._clock.time() + 60, UTC)
        await self._push(call, user, "call_ended", call_ended_payload(call), expires)
        return {}

    async def _ended(self, call_id: str, call: dict[str, Any], user: dict[str, Any] | None) -> dict[str, Any]:
        duration = calls.duration_seconds(_ts(call.get("answeredAt")), _ts(call.get("endedAt")))
        log.info("call.ended", call_id=call_id, duration_s=duration)
        await self._recording.on_ended(call_id, call)
        return {"durationSec": duration}


class RecordingHooks(Protocol):
    """Requests a recording when a call is accepted and stops it when the call ends."""

    async def on_accepted(self, call_id: str, call: Mapping[str, Any]) -> None: ...

    async def on_ended(self, call_id: str, call: Mapping[str, Any]) -> None: ...


class NoRecording:
    """The recording hooks while no recorder exists: they only say so in the log."""

    async def on_accepted(self, call_id: str, call: Mapping[str, Any]) -> None:
        log.debug("recording.not_requested", call_id=call_id, reason="no recorder in this deployment")

    async def on_ended(self, call_id: str, call: Mapping[str, Any]) -> None:
        log.debug("recording.not_stopped", call_id=call_id, reason="no recorder in this deployment")
