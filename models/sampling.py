"""Key-hash sampling: which records a rate keeps, and the rate that auto mode chooses.

A record is kept when the 64-bit hash of its key falls under the rate (docs/events.md,
"Sampling"):

    h = int.from_bytes(BLAKE2b(key, digest_size=8), "big")     # key: the record key's bytes
    kept  <=>  h < floor(rate * 2**64)                         # rate 1: every record

Impressions and clicks are keyed by the impression id, so a click is kept exactly when its
impression is (at one rate). The samples of two rates are nested: what a rate keeps, every
higher rate keeps too. A record without a key cannot be sampled consistently and is always
kept. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SPACE = 1 << 64


def key_hash(key: bytes) -> int:
    """The 64-bit sampling hash of a record key: BLAKE2b with an 8-byte digest, big-endian."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def threshold(rate: float) -> bytes:
    """The 8 big-endian bytes a key's digest must be under to be kept at ``rate`` in (0, 1].

    Comparing digests as bytes is comparing them as big-endian integers, without converting
    each one. Rate 1 returns 9 bytes, above every 8-byte digest: everything is kept.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"sample rate {rate!r} is not in (0, 1]")
    if rate >= 1:
        return b"\x01" + bytes(8)
    return min(int(rate * _SPACE), _SPACE - 1).to_bytes(8, "big")


def kept(key: bytes | None, rate: float) -> bool:
    """Whether a record with this key is in the sample at ``rate`` (keyless records always are)."""
    if key is None or rate >= 1:
        return True
    return hashlib.blake2b(key, digest_size=8).digest() < threshold(rate)


@dataclass
class AutoRate:
    """The sample rate of ``sample_rate = auto``: lowered while consumer lag grows, raised
    again once it is gone, always within ``[lowest, highest]``.

    ``observe(lag)`` takes the total consumer lag (records) once per control step and returns
    the rate for the next step:

    * lag above ``high_lag`` and larger than at the previous step: the rate is multiplied by
      ``down`` (the stream is outgrowing the instance; shed load quickly);
    * lag at or below ``low_lag`` for ``calm_steps`` steps in a row: the rate is multiplied
      by ``up`` (slowly: evidence comes back without tipping it into lag again);
    * otherwise it stays. The band between ``low_lag`` and ``high_lag`` and the calm steps are
      the hysteresis: the rate does not flap around one lag value.

    Monotone: a higher lag never yields a higher rate than a lower lag would from the same state.
    """

    lowest: float = 0.01
    highest: float = 1.0
    high_lag: int = 100_000
    low_lag: int = 1_000
    down: float = 0.5
    up: float = 1.25
    calm_steps: int = 3
    rate: float = 1.0
    _last_lag: int | None = None
    _calm: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.lowest <= self.highest <= 1:
            raise ValueError(f"need 0 < lowest <= highest <= 1, got {self.lowest}, {self.highest}")
        if not 0 < self.down < 1 < self.up:
            raise ValueError("need 0 < down < 1 < up")
        if self.low_lag > self.high_lag:
            raise ValueError("need low_lag <= high_lag")
        self.rate = min(max(self.rate, self.lowest), self.highest)

    def observe(self, lag: int) -> float:
        """Take this step's lag; return the rate from now on."""
        growing = self._last_lag is not None and lag > self._last_lag
        self._last_lag = lag
        if lag > self.high_lag and growing:
            self._calm = 0
            self.rate = max(self.lowest, self.rate * self.down)
        elif lag <= self.low_lag:
            self._calm += 1
            if self._calm >= self.calm_steps:
                self._calm = 0
                self.rate = min(self.highest, self.rate * self.up)
        else:
            self._calm = 0
        return self.rate


class RateSchedule:
    """The two rates of a sample whose rate changes: the impression rate (the sample the
    evidence is on) and the read rate (what the batch reader keeps, clicks included).

    A click must be read at the rate its impression was kept at, and the reader cannot tell
    the two apart by key. So the read rate is the highest impression rate in effect during the
    last ``hold_ms`` of event time (attribution window + lateness): raised at once, lowered only
    once every impression kept at the higher rate has had its window. Meanwhile the join leaves
    out impressions over the (lower) impression rate. Time is the caller's event time (the
    daemon's lowest watermark), so the hold is the same at any replay speed.
    """

    def __init__(self, rate: float, hold_ms: int) -> None:
        self.hold_ms = int(hold_ms)
        self.rate = rate
        # (event time it ended, rate) of earlier impression rates still inside the hold
        self._ended: list[tuple[int, float]] = []

    def set_rate(self, rate: float, now_ms: int) -> None:
        """The impression rate is ``rate`` from event time ``now_ms`` on."""
        if rate != self.rate:
            self._ended.append((now_ms, self.rate))
            self.rate = rate

    def read_rate(self, now_ms: int) -> float:
        """The rate the reader must keep at event time ``now_ms`` (at least :attr:`rate`)."""
        self._ended = [(t, r) for t, r in self._ended if t + self.hold_ms > now_ms]
        return max([self.rate, *(r for _, r in self._ended)])
