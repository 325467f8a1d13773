"""Failpoints: named steps where a test makes the process die or stand still. Tests only.

``FEATSIEVE_FAILPOINT`` holds comma-separated ``<step>:<n>[=<action>]`` entries. At the
``n``-th time the process reaches ``<step>`` (or, where the step passes its own number, when
that number is ``n``) the action runs:

* ``kill`` (the default): the process ends at once with exit status 137, as SIGKILL would end it
  (no handler, no flush, no checkpoint); a file handed in is flushed first, so a test can leave
  a half-written file behind;
* ``pause``: the step blocks until its caller's stop condition holds (the daemon's: a SIGTERM)
  or the file named by ``FEATSIEVE_FAILPOINT_RESUME`` exists, so that a test can look at the
  process standing in that state (its /readyz, its metrics) and then let it go on.

Steps (the contract tests rely on):

* ``snapshot_write``: inside a snapshot write, half the payload on disk; ``n`` is the snapshot's
  sequence number (connectors/state_store.py);
* ``poll``: after the n-th poll that returned records, once they are applied (daemon/runloop.py);
* ``writer_fenced``: the single writer found itself fenced, before it closes and exits 3;
* ``gate_learn``: the gate trainer thread, before it trains its n-th batch (daemon/gate_worker.py).

Unset, every step is one dictionary lookup. Never set it in production.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import IO, Any

log = logging.getLogger(__name__)

ENV = "FEATSIEVE_FAILPOINT"
RESUME_ENV = "FEATSIEVE_FAILPOINT_RESUME"
ACTIONS = ("kill", "pause")
_hits: dict[str, int] = {}


class FailpointSpecError(ValueError):
    """``FEATSIEVE_FAILPOINT`` does not parse."""


def parse(spec: str) -> dict[str, tuple[int, str]]:
    """``"a:3,b:1=pause"`` -> ``{"a": (3, "kill"), "b": (1, "pause")}``."""
    out: dict[str, tuple[int, str]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        where, _, action = entry.partition("=")
        step, _, number = where.partition(":")
        action = action or "kill"
        if not step or not number.isdigit() or action not in ACTIONS:
            raise FailpointSpecError(f"{ENV}: {entry!r} is not <step>:<n>[=kill|pause]")
        out[step] = (int(number), action)
    return out


def hit(step: str, number: int | None = None, *, flush: IO[Any] | None = None,
        until: Callable[[], bool] = lambda: False) -> None:
    """Mark that the process reached ``step`` (its ``number``-th time unless given)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    armed = parse(spec).get(step)
    if armed is None:
        return
    if number is None:
        number = _hits[step] = _hits.get(step, 0) + 1
    if number != armed[0]:
        return
    if armed[1] == "kill":
        if flush is not None:
            flush.flush()
        os._exit(137)
    resume = os.environ.get(RESUME_ENV)
    log.warning("failpoint %s:%d: paused until stopped%s", step, number, f" or {resume} exists" if resume else "")
    while not until() and not (resume and os.path.exists(resume)):
        time.sleep(0.05)
