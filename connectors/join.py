"""Join impressions and clicks into labelled examples by event time.

An impression with id ``i`` at ``t`` becomes a **positive** example as soon as
a click on ``i`` with ``t <= click.ts <= t + window`` is seen, and a
**negative** one once the watermark passes ``t + window`` without one.
``labeled`` events pass straight through.

Why the output depends only on the data (the daemon's checkpoints are
crash-exact, so it must not depend on how two topics interleave or where
batches end):

* The watermark is ``min`` over the registered sources of the largest ``ts``
  seen from each, minus ``lateness_ms``; a registered source that has sent
  nothing yet holds it back. So no source can be overtaken: as long as each
  source is ordered to within ``lateness_ms``, nothing it still has to
  deliver lies behind the watermark. Register every source of a shard
  (``sources=`` or :meth:`add_source`) before processing, or one fast topic
  can expire impressions before the other topic's clicks are read.
* A click whose impression is not known yet waits in a bounded buffer until
  the watermark passes ``click.ts + lateness_ms`` (then it is an *orphan*);
  the impression, when it comes, collects it. A matched impression stays
  (without its features) until its window closes, so a second click counts
  as a duplicate however the clicks and the impression are interleaved.
* Negatives come out in ``(ts, id)`` order.

Bounds break this on purpose: past ``max_pending`` impressions, or past
``max_pending_bytes`` of them (see :func:`pending_cost`), the oldest are
emitted as negatives early (``evicted``), in (ts, id) order until both bounds
hold (so a bound lowered at a restart trims at once, deterministically); past ``max_pending_clicks`` the
oldest waiting click becomes an orphan (``evicted_clicks``).

**Event time that a few events cannot hijack.** A hostile or broken producer
must not be able to move the watermark (which would turn every later event
"too late") with a handful of records. Three rules, all applied to every
event, a shard's first included:

* *wall clock*: an event more than ``max_clock_skew_ms`` ahead of the wall
  clock (``now_ms`` given to :meth:`JoinBuffer.process`) is rejected with
  reason ``ts_ahead_of_clock``. No live event can be from the future; this
  alone stops a live ratchet and a first event at ts 2**53-1.
* *robust source mark*: a source's mark is not its largest ``ts`` but the
  ``quorum``-th largest (while it has sent fewer, the smallest it sent). So
  fewer than ``quorum`` outliers never move it, however far ahead they are,
  and a source whose first event is an outlier does not stop holding the
  watermark back. The watermark is ``min`` over the registered sources' marks
  minus ``lateness_ms`` (evidence from every source is needed) and never
  moves back. Cost: the watermark trails the newest data by the time the last
  ``quorum`` events of the sparsest source span (clicks at 0.2/s per shard
  and a quorum of 32: 160 s), on top of ``lateness_ms``.
* *no jumps*: an event more than ``max_future_ms`` ahead of the shard's
  *frontier* (the largest mark of a source that has had ``2 * quorum - 1``
  events accepted, so robust to outliers on both sides: a stale event among
  a source's first ones cannot make it the bound) is rejected as
  ``ts_out_of_range``: each accepted outlier is at most ``max_future_ms``
  ahead, so it leaves the top ``quorum`` once real time passes it, and a
  ratchet (each event a little beyond the previous) is rejected from its
  second step, since the frontier did not follow the first. A real gap
  longer than ``max_future_ms`` in a replayed source's event time is
  dead-lettered too (raise ``max_future_ms`` for such history).

The rules depend only on the data and, for the first, on the wall clock at
processing; during a replay of history event time runs far faster than the
wall clock and nothing bounds its speed but the data, so a backfill of days
works. There is deliberately no rate bound against the wall clock: it would
make the output depend on processing speed (checkpoints are crash-exact only
because it does not).

Events older than ``watermark - window`` (their window is already closed)
are rejected with reason ``ts_out_of_range``. ``JoinResult.rejected`` carries
each rejection's reason and a detail for the dead-letter queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, NamedTuple

from connectors.codec import Click, Event, Features, Impression

REJECT_REASON = "ts_out_of_range"
CLOCK_REASON = "ts_ahead_of_clock"
TOO_LATE = "event time too late: its attribution window has closed"
TOO_FAR_AHEAD = "event time more than max_future_s ahead of the shard's event time"
AHEAD_OF_CLOCK = "event time more than max_clock_skew_s ahead of the wall clock"
SNAPSHOT_FORMAT = 2  # 1: a source's largest ts only (restored as a mark of one event)
# What a waiting impression costs beside its row, in bytes: its entry in the id dict, the
# (ts, features) tuple, the (ts, id) key in the run or heap and the id string's header (CPython
# 3.11, measured with tracemalloc on 100k impressions: ~190 B plus the id's characters).
PENDING_FIXED_BYTES = 192


def pending_cost(ident: str, features: Any) -> int:
    """The bytes one waiting impression is charged against ``max_pending_bytes``: a fixed cost,
    its id, and its features (a row's length; a feature dict's entries at 100 bytes each)."""
    if features is None:
        size = 0
    elif features.__class__ is bytes:
        size = len(features)
    else:
        size = 100 * len(features)
    return PENDING_FIXED_BYTES + len(ident) + size

Source = Hashable  # e.g. (topic, partition)


class Example(NamedTuple):
    """A labelled example: ``ts`` is the impression's event time, ``label`` 0 or 1."""

    ts: int
    features: Features
    label: int


@dataclass(slots=True)
class JoinResult:
    """What one :meth:`JoinBuffer.process` call produced.

    ``rejected`` holds ``(index into the events given, reason, detail)``; ``orphans``
    and ``duplicates`` count clicks classified during this call (clicks that
    wait and later turn orphan are counted by :meth:`JoinBuffer.stats`).
    """

    examples: list[Example] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    orphans: int = 0
    duplicates: int = 0


_COUNTERS = (
    "orphan_clicks", "duplicate_clicks", "positives", "negatives", "labeled", "too_late",
    "too_far_ahead", "ahead_of_clock", "evicted", "evicted_clicks", "duplicate_impressions",
)


class JoinBuffer:
    """Bounded event-time join of impressions and clicks (see the module docstring).

    Not thread-safe; one instance per shard. ``snapshot()`` → ``restore()``
    gives a buffer whose future output equals that of the original.
    """

    def __init__(
        self,
        window_ms: int,
        lateness_ms: int = 0,
        max_pending: int = 1_000_000,
        max_future_ms: int = 86_400_000,
        max_pending_clicks: int | None = None,
        sources: Iterable[Source] = (),
        quorum: int = 1,
        max_clock_skew_ms: int | None = None,
        max_pending_bytes: int = 1 << 62,
    ) -> None:
        if window_ms < 0 or lateness_ms < 0 or max_future_ms < 0:
            raise ValueError("window_ms, lateness_ms and max_future_ms must be >= 0")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {quorum}")
        if max_clock_skew_ms is not None and max_clock_skew_ms < 0:
            raise ValueError("max_clock_skew_ms must be >= 0")
        # quorum 1 is the plain running maximum (offline tools, trusted files); the daemon uses more
        self.quorum = int(quorum)
        # None: no wall-clock bound (offline tools); the daemon passes now_ms to process()
        self.max_clock_skew_ms = None if max_clock_skew_ms is None else int(max_clock_skew_ms)
        if max_pending_bytes < 1:
            raise ValueError(f"max_pending_bytes must be >= 1, got {max_pending_bytes}")
        self.max_pending_bytes = int(max_pending_bytes)
        self._bytes = 0  # pending_cost() of every waiting impression
        self.window_ms = int(window_ms)
        self.lateness_ms = int(lateness_ms)
        self.max_pending = int(max_pending)
        self.max_future_ms = int(max_future_ms)
        # clicks are a few % of impressions, so a tenth of the impression bound is generous
        self.max_pending_clicks = int(max_pending_clicks or max(1000, max_pending // 10))
        # id -> (ts, features); features None once matched (kept only to spot duplicate clicks)
        self._imps: dict[str, tuple[int, Features | None]] = {}
        # (ts, id) of every pending impression, in two parts: those that arrived in (ts, id) order,
        # a sorted deque (append and popleft, no sifting), and the rest, a heap; the oldest is
        # the smaller of the two heads. Most streams are nearly ordered, so the heap stays small.
        self._imp_run: deque[tuple[int, str]] = deque()
        self._imp_heap: list[tuple[int, str]] = []
        # id -> click timestamps waiting for their impression; the heap may hold stale entries
        self._clicks: dict[str, list[int]] = {}
        self._click_heap: list[tuple[int, str]] = []
        self._n_clicks = 0
        # per source, a min-heap of the ``quorum`` largest ts it sent; its head is the source's mark
        self._source_top: dict[Source, list[int]] = {s: [] for s in sources}
        # per source, how many events it has had accepted (for when its mark may bound others)
        self._source_count: dict[Source, int] = {s: 0 for s in sources}
        self._watermark: int | None = None
        self._c = dict.fromkeys(_COUNTERS, 0)
        # key-hash sampling while its rate is being lowered (docs/events.md, "Sampling"): an impression
        # whose id's sampling digest (models.sampling) is not under this is left out; clicks are not
        # (their reader still reads at the higher rate, so those of impressions kept before still join)
        self.impression_below: bytes | None = None
        self.sampled_out_impressions = 0  # left out that way (not checkpointed: a process counter)

    # ------------------------------------------------------------- sources
    def add_source(self, source: Source) -> None:
        """Register a source; until it sends data it holds the watermark where it is."""
        self._source_top.setdefault(source, [])
        self._source_count.setdefault(source, 0)

    def forget_source(self, source: Source) -> None:
        """Drop a (revoked) source from the watermark. The watermark never moves back."""
        self._source_top.pop(source, None)
        self._source_count.pop(source, None)
        self._update_watermark()

    def set_event_time_bounds(self, quorum: int, max_clock_skew_ms: int | None) -> None:
        """Apply other bounds to a restored buffer (the settings of this run, not the snapshot's).
        A smaller quorum keeps each source's largest ``quorum`` timestamps; a larger one makes a
        source's mark its smallest kept timestamp until it has sent that many more."""
        if quorum < 1:
            raise ValueError(f"quorum must be >= 1, got {quorum}")
        self.quorum = int(quorum)
        self.max_clock_skew_ms = None if max_clock_skew_ms is None else int(max_clock_skew_ms)
        for source, top in self._source_top.items():
            if len(top) > quorum:
                self._source_top[source] = sorted(top)[-quorum:]

    def source_marks(self) -> dict[Source, int | None]:
        """Each source's mark: its ``quorum``-th largest ts (the smallest while it sent fewer)."""
        return {s: (top[0] if top else None) for s, top in self._source_top.items()}

    @property
    def _established(self) -> int:
        """Accepted events after which a source's mark bounds what is too far ahead: 2k-1, so that
        a stale event (ts 0, say) among a source's first ones can be its mark only if k of them
        are as stale; otherwise the bound would sit at 1970 and reject everything after it."""
        return 2 * self.quorum - 1

    @property
    def frontier_ms(self) -> int | None:
        """The largest mark of a source that has had ``2 * quorum - 1`` events accepted: how far
        this shard's event time has credibly got (None before any source has)."""
        n = self._established
        counts = self._source_count
        marks = [top[0] for s, top in self._source_top.items() if top and counts.get(s, 0) >= n]
        return max(marks) if marks else None

    @property
    def watermark_ms(self) -> int | None:
        """Event time up to which all sources are complete; None before every source sent data."""
        return self._watermark

    @property
    def pending_impressions(self) -> int:
        return len(self._imps)

    @property
    def pending_bytes(self) -> int:
        """What the waiting impressions are charged against ``max_pending_bytes``."""
        return self._bytes

    def reconfigure(self, max_pending: int, max_future_ms: int, max_pending_bytes: int) -> None:
        """New bounds for a restored buffer (changed settings). A lower bound takes effect at the
        next impression, which evicts the oldest until both bounds hold."""
        if max_pending < 1 or max_pending_bytes < 1 or max_future_ms < 0:
            raise ValueError("max_pending and max_pending_bytes must be >= 1, max_future_ms >= 0")
        self.max_pending = int(max_pending)
        self.max_pending_clicks = max(1000, self.max_pending // 10)
        self.max_future_ms = int(max_future_ms)
        self.max_pending_bytes = int(max_pending_bytes)

    @property
    def pending_clicks(self) -> int:
        return self._n_clicks

    def _update_watermark(self) -> None:
        tops = self._source_top.values()
        if not tops or not all(tops):
            return
        marks = [top[0] for top in tops]
        wm = min(marks) - self.lateness_ms
        if self._watermark is None or wm > self._watermark:
            self._watermark = wm

    # ------------------------------------------------------------- processing
    def process(self, events: Sequence[Event], source: Source, now_ms: int | None = None,
                accepted: Callable[[int, Event], None] | None = None,
                watch: Container[int] = ()) -> JoinResult:
        """Join a batch of decoded events from ``source``; returns positives, labeled examples,
        early negatives from eviction, and the indices of events rejected (with reason and detail).

        ``now_ms`` is the wall clock (epoch ms) for the ``max_clock_skew_ms`` bound; without it
        (or without that bound) only the event-time rules apply. ``accepted(i, event)`` is called
        for each event whose index is in ``watch`` once it has passed the range checks and before
        it is joined (it may replace ``event.features``): the daemon counts the field names of
        accepted events there, never those of rejected ones. The watermark moves at the end of the
        batch; call :meth:`expire` to get the negatives whose window it closed.
        """
        res = JoinResult()
        out = res.examples
        rejected = res.rejected
        c = self._c
        orphans0, dups0 = c["orphan_clicks"], c["duplicate_clicks"]
        wm = self._watermark
        too_old = -(2**63) if wm is None else wm - self.window_ms
        frontier = self.frontier_ms
        ahead = self.max_future_ms
        unbounded = 2**63
        too_new = unbounded if frontier is None else frontier + ahead
        if now_ms is not None and self.max_clock_skew_ms is not None:
            clock_limit = int(now_ms) + self.max_clock_skew_ms
        else:
            clock_limit = 2**63
        top = self._source_top.setdefault(source, [])
        count = self._source_count.get(source, 0)
        established = self._established
        k = self.quorum
        head = top[0] if len(top) >= k else None  # a new ts enters the top k only above this
        for i, ev in enumerate(events):
            ts = ev.ts
            if ts < too_old:
                c["too_late"] += 1
                rejected.append((i, REJECT_REASON, TOO_LATE))
                continue
            if ts > clock_limit:
                c["ahead_of_clock"] += 1
                rejected.append((i, CLOCK_REASON, AHEAD_OF_CLOCK))
                continue
            if ts > too_new:
                c["too_far_ahead"] += 1
                rejected.append((i, REJECT_REASON, TOO_FAR_AHEAD))
                continue
            count += 1
            if head is None:
                heappush(top, ts)
                if len(top) >= k:
                    head = top[0]
            elif ts > head:
                heapreplace(top, ts)
                head = top[0]
            if head is not None and count >= established and (too_new == unbounded or head + ahead > too_new):
                too_new = head + ahead  # the mark rose (or the source is now established): so does the bound
            if accepted is not None and i in watch:
                accepted(i, ev)
            kind = type(ev)
            if kind is Impression:
                below = self.impression_below
                if below is not None and blake2b(ev.id.encode("utf-8", "surrogatepass"), digest_size=8).digest() >= below:  # type: ignore[union-attr]
                    self.sampled_out_impressions += 1
                    continue
                self._impression(ev, out)  # type: ignore[arg-type]
            elif kind is Click:
                self._click(ev, out, wm)  # type: ignore[arg-type]
            else:
                label = ev.label  # type: ignore[union-attr]
                out.append(Example(ts, ev.features, label))  # type: ignore[arg-type]
                c["labeled"] += 1
                c["positives" if label else "negatives"] += 1
        self._source_count[source] = count
        self._update_watermark()
        res.orphans = c["orphan_clicks"] - orphans0
        res.duplicates = c["duplicate_clicks"] - dups0
        return res

    def _impression(self, ev: Impression, out: list[Example]) -> None:
        ident, t = ev.id, ev.ts
        imps = self._imps
        entry = (t, ev.features)
        if imps.setdefault(ident, entry) is not entry:  # ids are unique by contract; the first one wins
            self._c["duplicate_impressions"] += 1
            return
        self._bytes += pending_cost(ident, ev.features)
        waiting = self._clicks.pop(ident, None)
        if waiting is not None:
            self._n_clicks -= len(waiting)
            end = t + self.window_ms
            hits = sum(1 for ct in waiting if t <= ct <= end)
            self._c["orphan_clicks"] += len(waiting) - hits
            if hits:
                self._c["duplicate_clicks"] += hits - 1
                self._c["positives"] += 1
                out.append(Example(t, ev.features, 1))
                imps[ident] = (t, None)  # matched: kept only to spot duplicate clicks
                self._bytes -= pending_cost(ident, ev.features) - pending_cost(ident, None)
        key = (t, ident)
        run = self._imp_run
        if not run or key > run[-1]:
            run.append(key)
        else:
            heappush(self._imp_heap, key)
        while len(imps) > self.max_pending or self._bytes > self.max_pending_bytes:
            self._evict_impression(out)

    def _click(self, ev: Click, out: list[Example], wm: int | None) -> None:
        ident, ct = ev.id, ev.ts
        known = self._imps.get(ident)
        c = self._c
        if known is not None:
            t, feats = known
            if not t <= ct <= t + self.window_ms:
                c["orphan_clicks"] += 1
            elif feats is None:
                c["duplicate_clicks"] += 1
            else:
                self._imps[ident] = (t, None)
                self._bytes -= pending_cost(ident, feats) - pending_cost(ident, None)
                c["positives"] += 1
                out.append(Example(t, feats, 1))
            return
        if wm is not None and ct < wm - self.lateness_ms:
            c["orphan_clicks"] += 1  # its impression would already be too late to arrive
            return
        waiting = self._clicks.get(ident)
        if waiting is None:
            self._clicks[ident] = [ct]
        else:
            waiting.append(ct)
        heappush(self._click_heap, (ct, ident))
        self._n_clicks += 1
        while self._n_clicks > self.max_pending_clicks:
            self._pop_click(evicted=True)

    def _pop_oldest_impression(self) -> tuple[int, str]:
        run, heap = self._imp_run, self._imp_heap
        if heap and (not run or heap[0] < run[0]):
            return heappop(heap)
        return run.popleft()

    def _evict_impression(self, out: list[Example]) -> None:
        t, ident = self._pop_oldest_impression()
        _, feats = self._imps.pop(ident)
        self._bytes -= pending_cost(ident, feats)
        self._c["evicted"] += 1
        if feats is not None:
            self._c["negatives"] += 1
            out.append(Example(t, feats, 0))

    def _pop_click(self, evicted: bool, before: int | None = None) -> bool:
        """Turn the oldest waiting click (if older than ``before``) into an orphan, skipping heap
        entries whose click an impression already collected. False when there is none."""
        heap, clicks = self._click_heap, self._clicks
        while heap and (before is None or heap[0][0] < before):
            ct, ident = heappop(heap)
            waiting = clicks.get(ident)
            if waiting is None or ct not in waiting:
                continue  # stale
            waiting.remove(ct)
            if not waiting:
                del clicks[ident]
            self._n_clicks -= 1
            self._c["orphan_clicks"] += 1
            if evicted:
                self._c["evicted_clicks"] += 1
            return True
        return False

    def expire(self) -> list[Example]:
        """Emit, in (ts, id) order, the negatives whose window the watermark has passed,
        and turn clicks that waited past ``watermark`` + lateness into orphans."""
        wm = self._watermark
        out: list[Example] = []
        if wm is None:
            return out
        run, heap, imps = self._imp_run, self._imp_heap, self._imps
        limit = wm - self.window_ms  # open while t + window >= watermark
        neg = 0
        freed = 0
        append = out.append
        while True:
            if heap and (not run or heap[0] < run[0]):
                if heap[0][0] >= limit:
                    break
                t, ident = heappop(heap)
            elif run and run[0][0] < limit:
                t, ident = run.popleft()
            else:
                break
            feats = imps.pop(ident)[1]
            freed += pending_cost(ident, feats)
            if feats is not None:
                append(Example(t, feats, 0))
                neg += 1
        self._bytes -= freed
        self._c["negatives"] += neg
        climit = wm - self.lateness_ms
        while self._pop_click(evicted=False, before=climit):
            pass
        if len(self._click_heap) > 2 * self._n_clicks + 1024:  # shed stale (collected) entries
            self._click_heap = [(ct, i) for i, cts in self._clicks.items() for ct in cts]
            heapify(self._click_heap)
        return out

    advance = expire

    def flush(self) -> list[Example]:
        """End of input: emit every unmatched pending impression as a negative, in (ts, id) order,
        and count every waiting click as an orphan. Leaves the buffer empty."""
        imps = self._imps
        pending = sorted([*self._imp_run, *self._imp_heap])
        out = [Example(t, f, 0) for t, i in pending if (f := imps[i][1]) is not None]
        self._c["negatives"] += len(out)
        self._c["orphan_clicks"] += self._n_clicks
        self._imps.clear()
        self._imp_run.clear()
        self._imp_heap.clear()
        self._clicks.clear()
        self._click_heap.clear()
        self._n_clicks = 0
        self._bytes = 0
        return out

    # ------------------------------------------------------------- state
    def stats(self) -> dict[str, int]:
        """Cumulative counters plus the current buffer sizes."""
        out = dict(self._c)
        out["pending_impressions"] = len(self._imps)
        out["pending_clicks"] = self._n_clicks
        out["pending_bytes"] = self._bytes
        return out

    def map_features(self, convert: Callable[[list[Any]], list[Any]]) -> int:
        """Replace the features of the impressions still waiting by ``convert(features)`` (one
        call, in arrival order; matched impressions keep None). Returns how many were converted."""
        waiting = [(i, t, f) for i, (t, f) in self._imps.items() if f is not None]
        if waiting:
            for (i, t, _), new in zip(waiting, convert([f for _, _, f in waiting]), strict=True):
                self._imps[i] = (t, new)
            self._bytes = self._recount_bytes()
        return len(waiting)

    def _recount_bytes(self) -> int:
        return sum(pending_cost(i, f) for i, (_, f) in self._imps.items())

    def snapshot(self) -> dict[str, Any]:
        """Plain-data state (lists, dicts, ints, str; sources as given). Feature dicts are
        shared, not copied: serialise the snapshot before mutating them."""
        return {
            "format": SNAPSHOT_FORMAT,
            "config": {
                "window_ms": self.window_ms, "lateness_ms": self.lateness_ms,
                "max_pending": self.max_pending, "max_future_ms": self.max_future_ms,
                "max_pending_clicks": self.max_pending_clicks, "max_pending_bytes": self.max_pending_bytes,
                "quorum": self.quorum, "max_clock_skew_ms": self.max_clock_skew_ms,
            },
            "impressions": [[i, t, f] for i, (t, f) in self._imps.items()],
            "clicks": [[i, list(cts)] for i, cts in self._clicks.items()],
            "sources": [[s, sorted(top), self._source_count.get(s, 0)] for s, top in self._source_top.items()],
            "watermark": self._watermark,
            "counters": dict(self._c),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> JoinBuffer:
        """Rebuild a buffer from :meth:`snapshot` (also after a JSON round trip: list sources
        become tuples)."""
        fmt = snap.get("format")
        if fmt not in (1, SNAPSHOT_FORMAT):
            raise ValueError(
                f"join snapshot format {fmt!r}, expected 1 or {SNAPSHOT_FORMAT}"
            )
        buf = cls(**snap["config"])
        buf._imps = {i: (int(t), f) for i, t, f in snap["impressions"]}
        buf._imp_run = deque(sorted((t, i) for i, (t, _) in buf._imps.items()))
        buf._clicks = {i: [int(ct) for ct in cts] for i, cts in snap["clicks"]}
        buf._click_heap = [(ct, i) for i, cts in buf._clicks.items() for ct in cts]
        heapify(buf._click_heap)
        buf._n_clicks = sum(len(cts) for cts in buf._clicks.values())
        tops: dict[Source, list[int]] = {}
        counts: dict[Source, int] = {}
        for s, m, *rest in snap["sources"]:
            if fmt == 1:  # the largest ts only: a mark of one event (a sorted list is a heap)
                m = [] if m is None else [int(m)]
            key = tuple(s) if isinstance(s, list) else s
            tops[key] = [int(t) for t in m]
            counts[key] = int(rest[0]) if rest else len(m)
        buf._source_top = tops
        buf._source_count = counts
        buf._watermark = snap["watermark"]
        buf._c.update(snap["counters"])
        buf._bytes = buf._recount_bytes()
        return buf
