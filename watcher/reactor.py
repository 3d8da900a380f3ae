"""What the watcher does when a call changes: read, decide (`watcher/decisions.py`), write, act.

Every status a call reaches has one bundle of side effects. Before acting, a watcher claims that bundle
on the server-only document `callServer/{callId}`, which also remembers the last legal status and the
call's identity (to detect and revert illegal changes) and the reviews counted. A claim carries a lease,
so a crashed claimant's work is taken over by the periodic sweep once the lease lapses. What to do is
decided by the pure `decisions.decide`; this module only reads the documents, writes what the decision
says under preconditions on them, and carries out the effects.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from memharbor import calls, devices, groups
from memharbor.calls import Status
from memharbor.clock import Clock
from memharbor.devices import Device
from memharbor.errors import Conflict, NotFound
from memharbor.logs import get_logger
from memharbor.repositories.call_effects import DELETE, SERVER_TIME, CallEffectsStore, CallRead, Written, after
from memharbor.repositories.devices import DeviceStore
from memharbor.timeline import Event, EventKind, Scalar
from watcher import decisions
from watcher.decisions import ReactorConfig
from watcher.metrics import WatcherMetrics
from watcher.push import (
    Kind,
    Notifier,
    PushResult,
    PushTarget,
    call_ended_payload,
    incoming_call_payload,
    push_record,
    push_summary,
    resolve_targets,
)

log = get_logger()


@dataclass(frozen=True)
class _Hints:
    """What the listener saw of a call, used only to choose which documents to read with it."""

    receiver_id: str | None = None
    group_id: str | None = None
    # Read the receiver's devices alongside the call: its next status will push to them.
    devices: bool = False


class Claim(enum.Enum):
    RUN = "run"  # this instance owns the status's side effects now
    DONE = "done"  # already carried out (by anyone)
    BUSY = "busy"  # another live instance holds the lease
    REVERTED = "reverted"  # the change was illegal and has been undone
    INVALID = "invalid"  # the document is malformed; recorded, ignored from now on
    GONE = "gone"  # the document does not exist
    REVIEWED = "reviewed"  # a review write on an ended call was counted (reviewCount, lastReviewAt)


class ClaimRace(RuntimeError):
    """The call changed under every claim attempt; the sweep will try again."""


@dataclass(frozen=True)
class Audience:
    """The receiver's devices a claimed status pushes to, and what was already pushed to them for it."""

    uid: str
    devices: list[Device]
    # callServer's pushes.{status}: device key -> record, of a claimant that died before finishing.
    done: Mapping[str, Any]
    # Device documents to delete once the effects are done (stale, or beyond the per-user cap).
    prune: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claimed:
    """The outcome of a claim, with the call as read inside it (and the receiver, when a push follows)."""

    claim: Claim
    call: dict[str, Any]
    audience: Audience | None = None
    written: Written = field(default_factory=Written)  # the versions our claim's write left (RUN only)
    # The call and its server document as our claim left them (RUN only; None when that cannot be told).
    state: CallRead | None = None


_FINAL_MEMORY = 10_000
# A fan-out's records are written before its slowest device answers once that takes longer than this.
_SLOW_DEVICE_S = 0.5
_CLAIM_ATTEMPTS = 5
# Statuses whose effects push to the receiver's devices (ring; stop ringing, elsewhere or for good).
_PUSHING = frozenset({Status.PENDING, Status.ACCEPTED, Status.DECLINED, Status.CANCELLED, Status.MISSED})
# The stamp a ring timeout sets with `missed` (its transition's, as for any writer of `missed`).
_TIMEOUT_STAMP = calls.STATUS_STAMPS[Status.MISSED][-1]
_CLAIMS: dict[type, Claim] = {
    decisions.Gone: Claim.GONE,
    decisions.Invalid: Claim.INVALID,
    decisions.Revert: Claim.REVERTED,
    decisions.Review: Claim.REVIEWED,
    decisions.Run: Claim.RUN,
    decisions.Done: Claim.DONE,
    decisions.Busy: Claim.BUSY,
}


def _ts(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _violation_kind(decision: decisions.Invalid | decisions.Revert) -> str:
    """A violation's metric label: its free-text reason reduced to a fixed set."""
    if decision.violation is not None and decision.violation.reason == groups.NOT_GROUP_MEMBERS:
        return "not_group_members"
    return "reverted" if isinstance(decision, decisions.Revert) else "invalid"


def _violation_detail(violation: decisions.Violation) -> dict[str, Scalar | None]:
    """A violation as a timeline event's detail."""
    return {"reason": violation.reason, "attempted": violation.attempted, "restored": violation.restored}


def _violation(violation: decisions.Violation) -> dict[str, Any]:
    return {
        "reason": violation.reason,
        "attempted": violation.attempted,
        "restored": violation.restored,
        "at": SERVER_TIME,
    }


class CallReactor:
    """Reacts to one call at a time (the caller serializes per call id)."""

    def __init__(
        self,
        store: CallEffectsStore,
        device_store: DeviceStore,
        notifier: Notifier,
        clock: Clock,
        config: ReactorConfig,
        schedule_timeout: Callable[[str, datetime], None],
        cancel_timeout: Callable[[str], None],
        recording_hooks: RecordingHooks | None = None,
        metrics: WatcherMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or WatcherMetrics()
        self._devices = device_store
        self._notifier = notifier
        self._clock = clock
        self._config = config
        self._schedule_timeout = schedule_timeout
        self._cancel_timeout = cancel_timeout
        self._recording = recording_hooks or NoRecording()
        # The last status per call whose effects this instance knows are done: spares a transaction
        # for each echo of our own writes. Any other status, even one seen before, is handled afresh.
        self._done: dict[str, str] = {}
        self._receivers: dict[str, str] = {}  # receiverId of each call in `_done`, for its timer's run
        # The devices each call rang from here: its stop-ringing notices go to them (a device registered
        # after the ring never rang), and the statuses after `pending` need no device or user read.
        self._rung: dict[str, Audience] = {}
        # Each call rung here, as our own writes left it (versions included): its ring timer decides from
        # this and commits guarded by those versions, reading only when someone wrote since (a Conflict).
        self._written: dict[str, CallRead] = {}

        # Calls this instance saw through to a final status other than `ended` (bounded): their later
        # events are echoes. An ended call is not among them: participants may still review it.
        self._final: OrderedDict[str, None] = OrderedDict()
        # Ended calls handled here, with the `updatedAt` they had (bounded): a review stamps a newer one,
        # so an event at the same stamp is the echo of our own write (`durationSec`, a review's count).
        self._ended_at: OrderedDict[str, datetime] = OrderedDict()

    def known_done(self, call_id: str, status: Any) -> bool:
        """True when the call is still in the status whose effects are known done."""
        return self._done.get(call_id) == str(status)

    def known_final(self, call_id: str, updated_at: datetime | None = None) -> bool:
        """True when this instance handled the call's final status and no app wrote since: for an ended
        call, when `updated_at` is the stamp it had then (each review write stamps a newer one)."""
        if call_id in self._final:
            return True
        handled = self._ended_at.get(call_id)
        return handled is not None and updated_at is not None and updated_at == handled

    def forget(self, call_id: str) -> None:
        """Drop what is cached about a call that reached a final status."""
        self._done.pop(call_id, None)
        self._receivers.pop(call_id, None)
        self._rung.pop(call_id, None)
        self._written.pop(call_id, None)
        _keep_bounded(self._final, call_id, None)

    def prune(self, active_ids: set[str]) -> None:
        """Forget active-status knowledge of calls that are no longer active (their events were lost)."""
        for call_id in [c for c in self._done if c not in active_ids]:
            del self._done[call_id]
            self._receivers.pop(call_id, None)
            self._rung.pop(call_id, None)
            self._written.pop(call_id, None)

    async def handle(
        self, call_id: str, receiver_hint: str | None = None, time_out: bool = False, group_hint: str | None = None
    ) -> Claim:
        """Bring the call's side effects up to date with its current document.

        `receiver_hint` and `group_hint` (the receiverId and groupId the listener saw) let the receiver's
        user document and the care group be read in the same round trip as the call (hints only choose
        what to prefetch: every decision uses the documents as read). With `time_out`, a pending call
        whose ring deadline has passed is moved to `missed` in the same write that claims the effects of
        `missed`.
        """
        claimed = await self._claim(call_id, self._hints(call_id, receiver_hint, group_hint), time_out)
        call = claimed.call
        status = str(call.get("status")) if call else ""
        if claimed.claim is Claim.RUN:
            effects = await self._effects(call_id, call, claimed.audience)
            await self._finish(call_id, status, effects, claimed)
            if claimed.audience is not None and claimed.audience.prune:
                await self._prune(claimed.audience)
        if claimed.claim in (Claim.RUN, Claim.DONE, Claim.REVIEWED):
            self._keep_timer(call_id, call)
            self._remember(call_id, call, status)
        self._metrics.decision(claimed.claim.value)
        return claimed.claim

    def _hints(self, call_id: str, receiver_hint: str | None, group_hint: str | None) -> _Hints:
        # A call handled here before has its server document, so its group was judged and need not be
        # read again; a ring timer's run has no listener event, so the receiver is the one remembered.
        # After `accepted` only `ended` can follow, which pushes nothing: its devices need no read.
        if call_id in self._rung:
            return _Hints()  # what its next status pushes to is known: only the call needs reading
        if call_id in self._done:
            pushes_next = self._done[call_id] != Status.ACCEPTED
            return _Hints(receiver_hint or self._receivers.get(call_id), None, pushes_next)
        return _Hints(receiver_hint, group_hint, True)

    def _remember(self, call_id: str, call: Mapping[str, Any], status: str) -> None:
        if status == Status.ENDED:
            self._done.pop(call_id, None)
            self._receivers.pop(call_id, None)
            self._rung.pop(call_id, None)
            self._written.pop(call_id, None)
            stamp = call.get("updatedAt")
            if isinstance(stamp, datetime):
                _keep_bounded(self._ended_at, call_id, stamp)
        elif status in calls.FINAL:
            self.forget(call_id)
        else:
            self._done[call_id] = status
            receiver = call.get("receiverId")
            if isinstance(receiver, str):
                self._receivers[call_id] = receiver

    def _keep_timer(self, call_id: str, call: Mapping[str, Any]) -> None:
        deadline = _ts(call.get("ringDeadline"))
        if call.get("status") == Status.PENDING and deadline is not None:
            self._schedule_timeout(call_id, deadline)
        elif call.get("status") != Status.PENDING:
            self._cancel_timeout(call_id)

    async def _claim(self, call_id: str, hints: _Hints, time_out: bool = False) -> Claimed:
        """Claim with optimistic concurrency: read, decide, write under preconditions, retry on a race.

        A Firestore transaction would do the same in four round trips with locks held in between; this
        takes two (three when the receiver was not known in advance) and never blocks an app's write. A
        ring timer's run of a call rung here takes one: it decides from what our own writes left (the
        documents are unchanged if its guarded commit succeeds) and reads only after a Conflict.
        """
        # Whatever this run does, what our writes left is stale after it: use it once, for a timeout.
        own = self._written.pop(call_id, None)
        if not time_out:
            own = None
        for attempt in range(_CLAIM_ATTEMPTS):
            try:
                return await self._claim_once(call_id, hints, time_out, own)
            except NotFound:
                if own is None:
                    raise
                # Deleted since we wrote it: a read says so (and decides Gone).
            except Conflict:
                # Someone wrote between our read and our write: read again.
                if own is None:
                    await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
            own = None
        raise ClaimRace(f"call {call_id} kept changing during {_CLAIM_ATTEMPTS} claim attempts")

    async def _claim_once(
        self, call_id: str, hints: _Hints, time_out: bool = False, own: CallRead | None = None
    ) -> Claimed:
        """One read (none when `own`, the documents as our writes left them, is given), one decision, at
        most one write (guarded by the documents' update times as read or as written)."""
        receiver = hints.receiver_id if hints.receiver_id and calls.ID_PATTERN.fullmatch(hints.receiver_id) else None
        group_id = hints.group_id if hints.group_id and calls.GROUP_ID_PATTERN.fullmatch(hints.group_id) else None
        if own is not None:
            read, device_docs = own, None
        else:
            # The devices are a query, not a document: read concurrently with the documents, in one round trip.
            read, device_docs = await asyncio.gather(
                self._store.read(call_id, receiver, group_id),
                self._devices.read(receiver) if receiver and hints.devices else _nothing(),
            )
        prefetched = (receiver, device_docs) if device_docs is not None else None
        call, server = read.call, read.server
        # Membership is judged once, when the watcher first sees the call (no server document yet).
        group = await self._group_of(call, read) if call is not None and server is None else None
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        decision = decisions.decide(call_id, call, server, group, now, self._config, time_out)
        claim = _CLAIMS[type(decision)]
        match decision:
            case decisions.Invalid() | decisions.Revert():
                violation = decision.violation
                noted = [] if violation is None else [self._event(EventKind.VIOLATION, **_violation_detail(violation))]
                await self._store.commit(read, *_violation_writes(call_id, decision, server is not None), noted)
                if decision.violation is not None:
                    log.warning("call.violation", call_id=call_id, reason=decision.violation.reason)
                    self._metrics.violation(_violation_kind(decision))
            case decisions.Review():
                await self._store.commit(read, *_review_writes(decision))
                log.info("call.review_counted", call_id=call_id, review_count=decision.count)
            case decisions.Run():
                pushing = {**(call or {}), "status": decision.status}
                call_fields, server_fields, known = _run_writes(call_id, decision, self._config.instance_id)
                deadline = _ts((call or {}).get("ringDeadline"))
                late_s = (now - deadline).total_seconds() if deadline is not None else 0.0
                written = await self._store.commit(
                    read, call_fields, server_fields, self._claim_events(decision, late_s)
                )
                if decision.time_out:
                    log.info("call.timed_out", call_id=call_id)
                    self._metrics.timed_out(late_s)
                audience = await self._audience(call_id, pushing, read, prefetched, now, decision.stop_owed)
                # Only a ring's is kept (for its timer's run), so only a ring's is worked out.
                state = after(read, call_fields, server_fields, written) if decision.status == Status.PENDING else None
                return Claimed(claim, {**(call or {}), **known}, audience, written, state)
        return Claimed(claim, call or {})

    def _event(self, kind: EventKind, **detail: Scalar | None) -> Event:
        """A timeline event of this instance, now."""
        return Event(kind, detail, self._config.instance_id, self._clock.time())

    def _claim_events(self, decision: decisions.Run, late_s: float) -> list[Event]:
        """What a claim tells the call's timeline: the status seen, a channel assigned, a ring timeout."""
        events = [self._event(EventKind.CALL_SEEN, status=decision.status)]
        channel = decision.ring.get("channelName")
        if isinstance(channel, str):
            events.append(self._event(EventKind.CHANNEL_ASSIGNED, channel=channel))
        if decision.time_out:
            events.append(self._event(EventKind.RING_TIMEOUT, lateMs=round(late_s * 1000)))
        return events

    async def _audience(
        self,
        call_id: str,
        call: Mapping[str, Any],
        read: CallRead,
        prefetched: tuple[str | None, dict[str, dict[str, Any]]] | None,
        now: datetime,
        stop_owed: bool = False,
    ) -> Audience | None:
        """The devices the claimed status pushes to: those its ring reached, or the receiver's as read now.

        An ended call pushes only when it owes the `accepted` notices (`stop_owed`); their records are
        `accepted`'s, so the devices a dead `accepted` claimant reached are not pushed again.
        """
        receiver = call.get("receiverId")
        pushing = call.get("status") in _PUSHING or stop_owed
        if not pushing or not isinstance(receiver, str) or not receiver:
            return None
        pushes = (read.server or {}).get("pushes")
        records_of = Status.ACCEPTED.value if stop_owed else str(call["status"])
        done = pushes.get(records_of) if isinstance(pushes, Mapping) else None
        done = done if isinstance(done, Mapping) else {}
        rung = self._rung.get(call_id)
        if rung is not None and rung.uid == receiver and call.get("status") != Status.PENDING:
            return Audience(receiver, rung.devices, done)
        user = read.users[receiver] if receiver in read.users else await self._store.user(receiver)
        # Hints only choose what to prefetch: devices read for another uid than the call's are not used.
        hinted = prefetched is not None and prefetched[0] == receiver
        docs = prefetched[1] if prefetched is not None and hinted else await self._devices.read(receiver)
        ttl = timedelta(seconds=self._config.device_ttl_s)
        plan = devices.prune_plan(docs, now, ttl, self._config.max_devices)
        audience = Audience(receiver, devices.devices_of(user, plan.keep), done, plan.drop)
        if call.get("status") == Status.PENDING:
            self._rung[call_id] = Audience(receiver, audience.devices, {})
        return audience

    async def _prune(self, audience: Audience) -> None:
        try:
            await self._devices.delete(audience.uid, audience.prune)
        except Exception as exc:
            # The next push to this user tries again; the effects themselves are done.
            log.warning("devices.prune_failed", uid=audience.uid, error=type(exc).__name__)
            return
        log.info("devices.pruned", uid=audience.uid, count=len(audience.prune))

    async def _group_of(self, call: Mapping[str, Any], read: CallRead) -> dict[str, Any] | None:
        """The call's care group as stored (read with the call when the listener hinted it), or None."""
        group_id = call.get("groupId")
        if not isinstance(group_id, str) or not calls.GROUP_ID_PATTERN.fullmatch(group_id):
            return None
        return read.groups[group_id] if group_id in read.groups else await self._store.group(group_id)

    async def _finish(self, call_id: str, status: str, effects: _Effects, claimed: Claimed) -> None:
        """Record the effects' results on the call (per-device push records, timeline events) and mark them
        done, in one write; close the claim (`effectOpen`) unless a later status's claim is open meanwhile.

        The sweep finds lapsed claims by `effectOpen`: clearing it under a later status's claim (the call
        moved on while these effects ran) would hide that claim from the sweep, should its holder die.
        After a ring, the call is guarded too, so that what the write left is known (`_written`).
        """
        done = {f"effects.`{status}`.state": "done", f"effects.`{status}`.doneAt": SERVER_TIME, **effects.records}
        state = claimed.state if status == Status.PENDING else None
        version, closing = claimed.written.server, {"effectOpen": False}
        call_version = state.versions[0] if state is not None and effects.call else None
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                # Guarded: nobody wrote the server document since `version`, so no other claim is open.
                written = await self._store.update(
                    call_id, effects.call, done | closing, effects.events, version, call_version
                )
            except Conflict:
                read = await self._store.read(call_id)
                version, closing, state, call_version = read.versions[1], _closing(read, status), None, None
                continue
            left = after(state, effects.call, done | closing, written) if state is not None else None
            if left is not None:
                self._written[call_id] = left
            return
        await self._store.update(call_id, effects.call, done | closing, effects.events)

    async def _effects(self, call_id: str, call: dict[str, Any], audience: Audience | None) -> _Effects:
        """Carry out the status's effects: what they leave for the finishing write."""
        handlers: dict[str, Callable[[str, dict[str, Any], Audience | None], Awaitable[_Effects]]] = {
            Status.PENDING: self._ring,
            Status.ACCEPTED: self._accepted,
            Status.DECLINED: self._stop_ringing,
            Status.CANCELLED: self._stop_ringing,
            Status.MISSED: self._stop_ringing,
            Status.ENDED: self._ended,
        }
        handler = handlers.get(str(call.get("status")))
        return await handler(call_id, call, audience) if handler is not None else _Effects()

    async def _ring(self, call_id: str, call: dict[str, Any], audience: Audience | None) -> _Effects:
        deadline: datetime = call["ringDeadline"]
        self._schedule_timeout(call_id, deadline)
        if "pushSent" in call and audience is None:
            return _Effects()  # a previous claimant sent it and recorded the result before dying
        if deadline.timestamp() <= self._clock.time():
            # Apple and Google would drop it anyway, and the phone must not ring for a missed call.
            log.warning("push.skipped", call_id=call_id, kind="incoming_call", reason="ring_deadline_passed")
            skipped = self._event(EventKind.PUSH_SKIPPED, reason="ring_deadline_passed")
            return _Effects(
                {"pushSent": False, "pushPlatform": None, "pushError": "ring_deadline_passed"}, {}, [skipped]
            )
        fanned = await self._fan_out(call, audience, "incoming_call", incoming_call_payload(call), deadline)
        sent, platform, error = push_summary(fanned.all_records)
        return _Effects(
            {"pushSent": sent, "pushPlatform": platform, "pushError": error}, fanned.unwritten, fanned.events
        )

    async def _fan_out(
        self,
        call: Mapping[str, Any],
        audience: Audience | None,
        kind: Kind,
        payload: dict[str, str],
        expires: datetime,
        recipients: list[Device] | None = None,
        claimed: str | None = None,
    ) -> _FanOut:
        """Push to every device at once; each device's result is recorded when it lands (`_Landing`).

        The records are the call's status's; `claimed` names the status whose claim covers the pushes
        when that is another (its lease is the one kept during retries). A device with a record for this
        status (from a claimant that died midway) is not pushed again.
        """
        call_id, status = str(call.get("callId")), str(call.get("status"))
        if audience is None:
            return _FanOut([], {}, [])
        chosen = audience.devices if recipients is None else recipients
        targets = resolve_targets(audience.uid, chosen, kind)
        earlier = {key: record for key, record in audience.done.items() if isinstance(record, Mapping)}
        todo = [t for t in targets if t.device not in earlier]
        skipped = []
        if not targets:
            log.info("push.skipped", call_id=call_id, kind=kind, reason="no_device_token")
            if kind == "incoming_call":
                skipped.append(self._event(EventKind.PUSH_SKIPPED, reason="no_device_token"))
        if kind == "incoming_call":
            wanted = functools.partial(self._still_ringing, call_id)
        else:
            wanted = functools.partial(self._keep_claim, call_id, claimed or status)
        announce = kind == "incoming_call" and "pushSent" not in call
        landing = _Landing(self._store, call_id, status, len(todo), announce)

        async def one(target: PushTarget) -> tuple[str, dict[str, Any]]:
            record, noted = await self._push(call_id, status, target, kind, payload, expires, wanted)
            if record["result"] == "dead_token":
                await self._forget_token(audience.uid, target)
            await landing.landed(target.device, record, noted)
            return target.device, record

        landed = dict(await asyncio.gather(*(one(t) for t in todo)))
        ordered = [landed[t.device] if t.device in landed else earlier[t.device] for t in targets]
        records, events = landing.rest()
        return _FanOut(ordered, records, skipped + events)

    async def _push(
        self,
        call_id: str,
        status: str,
        target: PushTarget,
        kind: Kind,
        payload: dict[str, str],
        expires: datetime,
        wanted: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[dict[str, Any], Event]:
        """Push to one device: its record for callServer, and its timeline event (with the push's latency)."""
        started = self._clock.monotonic()
        if expires.timestamp() <= self._clock.time():
            # Checked again at each device: a freeze or a slow fan-out since the ring's own check would
            # ring a phone for a call already missed (APNs delivers a past expiry once, at once).
            reason = "ring_deadline_passed" if kind == "incoming_call" else "expired"
            result = PushResult(False, target.platform, reason)
        else:
            result = await self._notifier.send(target, kind, payload, expires.timestamp(), wanted)
        record = push_record(result, target.platform, datetime.fromtimestamp(self._clock.time(), UTC))
        took_s = self._clock.monotonic() - started
        self._metrics.push(kind, target.platform, str(record["result"]), took_s)
        event = "push.sent" if result.sent else "push.failed"
        log.info(event, call_id=call_id, kind=kind, device=target.device, platform=target.platform, error=result.error)
        noted = self._event(
            _PUSH_EVENTS[(kind, result.sent)],
            device=target.device,
            platform=target.platform,
            status=status,
            result=str(record["result"]),
            reason=result.error,
            latencyMs=round(took_s * 1000, 1),
        )
        return record, noted

    async def _forget_token(self, uid: str, target: PushTarget) -> None:
        removed = await self._devices.forget_token(uid, target.device, target.user_field, target.token)
        log.info("push.token_removed", uid=uid, device=target.device, field=target.user_field, removed=removed)

    async def _still_ringing(self, call_id: str) -> bool:
        """Asked between push retries: is the call still pending? If so, extend our claim's lease.

        Retries may outlast the lease; renewing it keeps another replica from claiming the ring (and
        pushing again) while this one is still trying.
        """
        if await self._store.status(call_id) != Status.PENDING:
            return False
        return await self._keep_claim(call_id, Status.PENDING)

    async def _keep_claim(self, call_id: str, status: str) -> bool:
        """Asked between retries of a stop-ringing notice (always wanted): extend this status's lease.

        Without it, a notice still retrying when the lease lapses is taken over by another replica, and
        both deliver it (found by the soak with APNs holding answers).
        """
        lease = datetime.fromtimestamp(self._clock.time(), UTC) + timedelta(seconds=self._config.lease_s)
        await self._store.update(call_id, {}, {f"effects.`{status}`.leaseUntil": lease})
        return True

    async def _accepted(self, call_id: str, call: dict[str, Any], audience: Audience | None) -> _Effects:
        self._cancel_timeout(call_id)
        sid = await self._recording.on_accepted(call_id, call)
        stopped = await self._stop_ringing(call_id, call, audience)
        if sid is None:
            return stopped
        requested = self._event(EventKind.RECORDING_REQUESTED, sid=sid)
        return _Effects(stopped.call, stopped.records, [*stopped.events, requested])

    async def _stop_ringing(
        self, call_id: str, call: dict[str, Any], audience: Audience | None, claimed: str | None = None
    ) -> _Effects:
        """Tell the receiver's devices to stop ringing: all of them, or the others when one answered."""
        self._cancel_timeout(call_id)
        if audience is None:
            return _Effects()
        expires = datetime.fromtimestamp(self._clock.time() + 60, UTC)
        recipients = devices.stop_recipients(audience.devices, str(call.get("status")), call.get(calls.ANSWERED_ON))
        payload = call_ended_payload(call)
        fanned = await self._fan_out(call, audience, "call_ended", payload, expires, recipients, claimed)
        return _Effects({}, fanned.unwritten, fanned.events)

    async def _ended(self, call_id: str, call: dict[str, Any], audience: Audience | None) -> _Effects:
        """The call's duration and the end of its recording; with an audience (the `accepted` notices were
        owed, see `decisions.stop_owed`), the answered-elsewhere notices too, as `accepted` sends them."""
        duration = calls.duration_seconds(_ts(call.get("answeredAt")), _ts(call.get("endedAt")))
        log.info("call.ended", call_id=call_id, duration_s=duration)
        await self._recording.on_ended(call_id, call)
        if audience is None:
            return _Effects({"durationSec": duration})
        # Only after a fault (watchers down or behind): worth a warning.
        log.warning("call.stop_owed", call_id=call_id, reason="no watcher sent the answered-elsewhere notices")
        answered = {**call, "status": Status.ACCEPTED.value}
        stopped = await self._stop_ringing(call_id, answered, audience, claimed=Status.ENDED.value)
        return _Effects({"durationSec": duration}, stopped.records, stopped.events)


@dataclass(frozen=True)
class _Effects:
    """What a status's effects leave to the finishing write: call fields, push records (by field path under
    `pushes`), timeline events."""

    call: dict[str, Any] = field(default_factory=dict)
    records: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[Event] = ()


# The timeline event of one device's push, by push kind and whether the service accepted it.
_PUSH_EVENTS = {
    ("incoming_call", True): EventKind.PUSH_SENT,
    ("incoming_call", False): EventKind.PUSH_FAILED,
    ("call_ended", True): EventKind.STOP_RINGING_SENT,
    ("call_ended", False): EventKind.STOP_RINGING_FAILED,
}


@dataclass(frozen=True)
class _FanOut:
    """One fan-out's records in device order (earlier claimants' included), and the records (by field path)
    and timeline events not yet written."""

    all_records: list[Mapping[str, Any]]
    unwritten: dict[str, Any]
    events: list[Event]


class _Landing:
    """Writes a fan-out's per-device records early when some device is slow, one write at a time.

    When every device answers within `_SLOW_DEVICE_S` (the usual case, and always for a single device),
    all records go into the finishing write: no extra write, and an extra write to `calls` would cost the
    change feed. A device still outstanding after that (retries, a slow network) delays neither the
    others' records nor `pushSent` (announced on the call with the first acceptance): what has landed is
    written then. Writes are serialized because concurrent updates of one document contend (the emulator
    locks documents pessimistically).
    """

    def __init__(self, store: CallEffectsStore, call_id: str, status: str, outstanding: int, announce: bool) -> None:
        self._store = store
        self._call_id = call_id
        self._status = status
        self._outstanding = outstanding
        self._announce = announce
        self._pending: dict[str, tuple[dict[str, Any], Event]] = {}
        self._lock = asyncio.Lock()
        self._all_in = asyncio.Event()

    async def landed(self, device: str, record: dict[str, Any], event: Event) -> None:
        """Note one device's record and timeline event; write what has landed once some device is slow."""
        self._pending[device] = (record, event)
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._all_in.set()
            return
        try:
            async with asyncio.timeout(_SLOW_DEVICE_S):
                await self._all_in.wait()
            return
        except TimeoutError:
            pass
        async with self._lock:
            while self._pending and self._outstanding > 0:
                taken, self._pending = self._pending, {}
                await self._write(taken)

    def rest(self) -> tuple[dict[str, Any], list[Event]]:
        """The records not written yet, by field path, and their events (for the finishing write)."""
        return {_record_path(self._status, device): record for device, (record, _) in self._pending.items()}, [
            event for _, event in self._pending.values()
        ]

    async def _write(self, landed: Mapping[str, tuple[dict[str, Any], Event]]) -> None:
        paths = {_record_path(self._status, device): record for device, (record, _) in landed.items()}
        accepted = next((r for r, _ in landed.values() if r.get("result") == "sent"), None)
        announced: dict[str, Any] = {}
        if self._announce and accepted is not None:
            self._announce = False
            announced = {"pushSent": True, "pushPlatform": accepted.get("platform"), "pushError": None}
        await self._store.update(self._call_id, announced, paths, [event for _, event in landed.values()])


def _record_path(status: str, device: str) -> str:
    return f"pushes.`{status}`.`{device}`"


async def _nothing() -> None:
    return None


def _keep_bounded(memory: OrderedDict[str, Any], call_id: str, value: Any) -> None:
    """Remember `value` for the call, forgetting the oldest calls past _FINAL_MEMORY."""
    memory[call_id] = value
    memory.move_to_end(call_id)
    while len(memory) > _FINAL_MEMORY:
        memory.popitem(last=False)


# What a decision writes: fields for the call, and for its server document (created if it is missing).
_Writes = tuple[dict[str, Any], dict[str, Any]]


def _violation_writes(call_id: str, decision: decisions.Invalid | decisions.Revert, server_exists: bool) -> _Writes:
    """Record the violation and put back what the decision restores; mark an invalid call so."""
    update = dict(decision.restore)
    server: dict[str, Any] = {}
    if decision.violation is not None:
        update["violation"] = _violation(decision.violation)
    if isinstance(decision, decisions.Revert):
        update |= {name: DELETE for name in decision.remove}
        if decision.reviews_seen is not None:
            server = {"reviews.seen": decision.reviews_seen}
    elif decision.violation is not None:
        server = {"callId": call_id, "invalid": True, "effectOpen": False}
        if not server_exists:
            server["status"] = decision.violation.attempted
    return update, server


def _closing(read: CallRead, status: str) -> dict[str, Any]:
    """`effectOpen: False`, unless the call moved on from `status` and its new status's claim is open."""
    current = (read.call or {}).get("status")
    effects = (read.server or {}).get("effects")
    effect = effects.get(current) if isinstance(effects, Mapping) and current != status else None
    held = isinstance(effect, Mapping) and effect.get("state") == "claimed"
    return {} if held else {"effectOpen": False}


def _review_writes(decision: decisions.Review) -> _Writes:
    """Count one review write, on the call and on the server document."""
    return (
        {"reviewCount": decision.count, "lastReviewAt": decision.at},
        {"reviews": {"count": decision.count, "seen": decision.at}},
    )


def _run_writes(
    call_id: str, decision: decisions.Run, instance_id: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Claim the effects of the decision's status: (call fields, server fields, the call's fields as known after)."""
    status = decision.status
    server: dict[str, Any] = {
        "callId": call_id,
        "status": status,
        "effectOpen": True,
        f"effects.`{status}`": {"state": "claimed", "by": instance_id, "leaseUntil": decision.lease_until},
    }
    if decision.identity is not None:
        server["identity"] = dict(decision.identity)
    known: dict[str, Any] = {"status": status, **decision.ring}
    if decision.review is not None:
        server["reviews"] = {"count": decision.review.count, "seen": decision.review.at}
        known |= {"reviewCount": decision.review.count, "lastReviewAt": decision.review.at}
    stamps = {_TIMEOUT_STAMP: SERVER_TIME, "updatedAt": SERVER_TIME}
    update = {**known, **stamps} if decision.time_out else {k: v for k, v in known.items() if k != "status"}
    return update, server, known


class RecordingHooks(Protocol):
    """Requests a recording when a call is accepted and stops it when the call ends."""

    async def on_accepted(self, call_id: str, call: Mapping[str, Any]) -> str | None:
        """Request the call's recording if wanted; the new session's id when this made the request."""
        ...

    async def on_ended(self, call_id: str, call: Mapping[str, Any]) -> None: ...


class NoRecording:
    """The recording hooks while no recorder exists: they only say so in the log."""

    async def on_accepted(self, call_id: str, call: Mapping[str, Any]) -> str | None:
        log.debug("recording.not_requested", call_id=call_id, reason="no recorder in this deployment")
        return None

    async def on_ended(self, call_id: str, call: Mapping[str, Any]) -> None:
        log.debug("recording.not_stopped", call_id=call_id, reason="no recorder in this deployment")
