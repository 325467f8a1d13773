"""Progress bars of the offline commands: tqdm on stderr (done/total, rate, ETA), one configuration.

The callers decide whether a bar is shown (a terminal, or ``--progress``); a bar that is not
shown is a silent tqdm, so the calling code is the same either way. tqdm's monitor thread is
turned off: callers refresh their bars themselves, and a second thread alive would make
``daemon.tools.tabular`` start its counting workers with 'spawn' instead of 'fork'.
"""

from __future__ import annotations

import sys
from typing import Any


def bar(total: int | None, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar on stderr; ``unit`` "B" counts bytes (scaled to k/M/G by 1024)."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, mininterval=0.5, miniters=1, dynamic_ncols=True, disable=not enabled)
