"""The gate search of one continuation window: closed rows, the field probe, the value gates, the hard masks.

Contract. ``GateSearch`` holds every gate and the traffic counts of the
current window, and never changes the network's weights (it takes a
``GateNet`` per call and calls ``hold`` after each backward pass through it).
The caller (``GatedCTR.learn``) drives one window as::

    count(flat)                       every batch, fit and search alike
    open(net)                         once, at the first search example
    anneal(progress); probe(...); step(...)   every search batch
    close()                           at the window's end: the new hard masks

* ``open`` computes each field's *closed* row ``c_f``, the traffic-weighted
  mean row of the field over the window so far, and restarts the value gates
  at ``init``, the field evidence at zero and the temperature at ``t_start``.
* A gate interpolates between a row and its field's closed row: ``row_eff =
  c_f + g (row - c_f)``. Closing means "treat as an average value of the
  field", not "zero", which the MLP was never trained on.
* **Field gates** are decided by finite difference, not by a relaxed gate's
  gradient (too noisy next to a field's worth): ``probe`` adds, on the first
  ``probe`` examples of each search batch, the log loss with each field
  closed minus with it open, less ``field_penalty`` per example.
* **Value gates** ``g(m) = sigmoid(T * m) / sigmoid(init)`` (1 at ``T = 1, m =
  init``, a 0/1-like step as ``T`` grows) move under log loss plus
  ``penalty`` times the gates each example uses (``step``).
* ``close`` reads the hard masks: a field is open when its mean evidence plus
  a clipped hysteresis term is > 0; a value when its gate at ``t_max`` is >=
  1/2. ``mask`` (rows whose field and value are open), ``field_mask`` and
  ``value_mask`` stay None until the first window closes.

Pure: no clock, no I/O, no randomness.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from models.gate_net import GateNet
    from models.gates import GateConfig


class GateSearch:
    """Field and value gates, their evidence and the hard masks of the last completed window."""

    def __init__(self, cfg: GateConfig) -> None:
        self.config = cfg
        rows = cfg.max_fields * cfg.buckets_per_field
        self.value_gate = torch.full((rows,), cfg.init)
        self.field_gate = torch.zeros(cfg.max_fields, dtype=torch.float64)  # sum of (loss rise on closing - penalty)
        self.field_probed = 0  # examples probed in the current search
        self.field_evidence = np.zeros(cfg.max_fields)  # last window's decision margins, nats per example
        self.closed_rows = torch.zeros(cfg.max_fields, cfg.dim + 1)  # c_f: traffic-weighted mean row per field
        self.norm = 1.0 + math.exp(-cfg.init)  # 1 / sigmoid(init)
        self.temperature = cfg.t_start
        self.mask: np.ndarray | None = None  # hard mask (rows: field and value open) of the last window
        self.field_mask: np.ndarray | None = None  # hard field decisions of the last window
        self.value_mask: np.ndarray | None = None  # hard value decisions (rows) of the last window
        self._freq = torch.zeros(rows, dtype=torch.int64)  # examples per row in the current window
        self.freq = self._freq.numpy()  # a view
        self.last_freq = np.zeros(rows, dtype=np.int64)
        self.hard: torch.Tensor | None = None  # torch view of the mask as floats, for scoring

    def set_mask(self, mask: np.ndarray, field_mask: np.ndarray, value_mask: np.ndarray) -> None:
        """Install hard masks (read at a window's close, or restored from a snapshot)."""
        self.mask, self.field_mask, self.value_mask = mask, field_mask, value_mask
        self.hard = torch.from_numpy(mask.astype(np.float32))

    def count(self, flat: torch.Tensor) -> None:
        """Count a batch's rows (flattened indices) in the current window's traffic."""
        self._freq.index_add_(0, flat, torch.ones_like(flat))

    # ------------------------------------------------------------- search
    def open(self, net: GateNet) -> None:
        """Start the search on the held model: closed rows from this window's traffic, gates reopened."""
        cfg = self.config
        self.closed_rows = net.field_means(self._freq)
        self.value_gate.fill_(cfg.init)
        self.field_gate.zero_()
        self.field_probed = 0
        self.temperature = cfg.t_start

    def anneal(self, progress: float) -> None:
        """Set the temperature for ``progress`` (0 to 1) through the search phase: geometric, t_start to t_max."""
        cfg = self.config
        self.temperature = cfg.t_start * (cfg.t_max / cfg.t_start) ** progress

    def probe(self, net: GateNet, looked_up: torch.Tensor, y: torch.Tensor) -> None:
        """The field gates' evidence: on the first ``probe`` examples, the log loss with each field closed
        (its rows replaced by the closed row) minus the log loss with it open, less the penalty.

        This is the field gate's decision taken by finite difference between closed and open,
        instead of by the derivative of a relaxed gate: a field's worth is small (1e-4 to 1e-2
        nats per example) next to the noise of a per-batch gradient, and the difference of two
        losses on the same examples is far less noisy.
        """
        rows = looked_up[: self.config.probe]
        s, f, _ = rows.shape
        with torch.inference_mode():
            rise = net.closing_rise(rows, self.closed_rows[:f], y[:s])
            self.field_gate[:f] += rise - self.config.field_penalty * s
        self.field_probed += s

    def step(self, net: GateNet, idx: torch.Tensor, flat: torch.Tensor, looked_up: torch.Tensor,
             y: torch.Tensor) -> None:
        """Value gates only, on the held model: SGD on their gradient summed over the batch.

        The loss sees each gate capped at 1 (a gate may close a row, not amplify it: amplifying
        every row would stand in for a sharper model); the penalty acts on the uncapped gate, so
        a gate above the cap still drifts down unless the loss holds it. Summing over the batch
        makes a value's drift grow with its traffic: a value seen a few times barely moves (stays
        open, its field decides) and only frequent values are decided. The step is divided by
        the temperature, which keeps it stable as the gates sharpen.
        """
        cfg = self.config
        n, f = idx.shape
        mv = self.value_gate.index_select(0, flat).reshape(n, f).requires_grad_(True)
        sv = torch.sigmoid(self.temperature * mv) * self.norm
        gates = sv.clamp(max=1.0)
        d = cfg.dim
        closed = self.closed_rows[:f]
        e = closed[:, :d] + gates.unsqueeze(-1) * (looked_up[:, :, :d] - closed[:, :d])
        lin = closed[:, d] + gates * (looked_up[:, :, d] - closed[:, d])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net.logits_of(e, lin), y, reduction="sum")
        loss = loss + cfg.penalty * sv.sum()
        loss.backward()
        assert mv.grad is not None
        with torch.no_grad():
            self.value_gate.index_add_(0, flat, mv.grad.reshape(-1).mul_(-cfg.gate_lr / self.temperature))
        net.hold()  # the model is held

    def close(self) -> None:
        """Read the hard masks, then start the next window's counts (its fit phase has every gate at 1)."""
        cfg = self.config
        # hysteresis: one window's probe is noisy next to the smallest field worths, so the last
        # margin, clipped to one penalty, is carried over; a field whose worth moves by more than
        # 1.5 penalties (a real gain or loss of signal) still flips in the first window
        carried = cfg.field_memory * np.clip(self.field_evidence, -cfg.field_penalty, cfg.field_penalty)
        self.field_evidence = self.field_gate.numpy() / max(self.field_probed, 1) + carried
        field_mask = self.field_evidence > 0
        # a value closes when its gate, at the final temperature, is below one half: an informative
        # value settles where the loss balances the penalty (about 0.9), just under the cap and near
        # m = 0, so the sign of m would split informative values at random
        value_open = (torch.sigmoid(cfg.t_max * self.value_gate) * self.norm >= 0.5).numpy()
        self.set_mask(value_open & np.repeat(field_mask, cfg.buckets_per_field), field_mask, value_open)
        self.last_freq = self.freq.copy()
        self._freq.zero_()
        self.temperature = cfg.t_start

    # ------------------------------------------------------------ scoring
    def masked(self, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``(n, f, dim + 1)`` at indices ``idx`` with the hard masks applied: a closed row reads
        as its field's closed row. Call only once a window has closed (``hard`` is set)."""
        assert self.hard is not None
        with torch.inference_mode():
            hard = self.hard.index_select(0, idx.reshape(-1)).reshape(idx.shape)
            closed = self.closed_rows[: idx.shape[1]]
            return closed + hard.unsqueeze(-1) * (rows - closed)
