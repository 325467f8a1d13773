"""The gate model's CTR network: one fused table of hashed rows, ``bias + linear + FM + MLP``, and how it learns.

Contract. ``GateNet`` owns the learnt weights and their optimiser state and
nothing about gates: a caller passes in whatever rows it wants scored (the
looked-up rows, or gated rows it built from them).

* Every field value (its 64-bit hash, folded into ``buckets_per_field`` rows
  of its field's slice of the table) has one table row: an embedding
  (``dim``) followed by a linear weight.
* ``fit`` takes one step on a batch with every gate at 1: sparse Adagrad on
  the table rows the batch touched (duplicates summed first, one step per
  row), Adam on the bias and MLP (batch-mean gradient). Nothing else in the
  gate model changes the weights; ``hold`` drops the dense gradients another
  backward pass left behind, so a held model stays held.
* ``closing_rise`` is the network's answer to "what if field c were closed":
  the summed log loss with c's rows replaced by a given closed row, minus
  with them open, for every field at once in closed form.

Initialisation draws from the ``generator`` it is given (table, then MLP
weights) and nothing else; torch's global generator is only touched by
``torch.nn.Linear``'s own initialisation, which is overwritten. Pure: no
clock, no I/O.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from models.gates import GateConfig


class GateNet:
    """Embeddings, linear weights, FM and MLP over ``max_fields`` hashed columns; learns with ``fit``."""

    def __init__(self, cfg: GateConfig, generator: torch.Generator) -> None:
        self.config = cfg
        rows = cfg.max_fields * cfg.buckets_per_field
        width = cfg.dim + 1  # embedding, then the linear weight
        self.table = torch.empty(rows, width)
        with torch.no_grad():
            self.table[:, : cfg.dim].normal_(0.0, 0.01, generator=generator)
            self.table[:, cfg.dim].zero_()
        self.ada = torch.full((rows, width), cfg.adagrad_init)
        layers: list[Any] = []
        width_in = cfg.max_fields * cfg.dim
        for h in cfg.hidden:
            layers += [torch.nn.Linear(width_in, h), torch.nn.ReLU()]
            width_in = h
        layers.append(torch.nn.Linear(width_in, 1))
        self.mlp = torch.nn.Sequential(*layers)
        with torch.no_grad():
            for layer in self.mlp:
                if isinstance(layer, torch.nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.zero_()
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self.opt_dense = torch.optim.Adam([*self.mlp.parameters(), self.bias], lr=cfg.dense_lr)

    # ------------------------------------------------------------ lookups
    def rows(self, hashes: np.ndarray) -> torch.Tensor:
        """Table row indices ``(n, f)`` of a batch of value hashes ``(n, f)`` (column c uses slice c)."""
        b = np.uint64(self.config.buckets_per_field)
        cols = np.arange(hashes.shape[1], dtype=np.int64)
        idx = (hashes % b).astype(np.int64) + cols * self.config.buckets_per_field
        return torch.from_numpy(idx)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """The table rows ``(n, f, dim + 1)`` of row indices ``(n, f)``."""
        return self.table.index_select(0, idx.reshape(-1)).reshape(idx.shape[0], idx.shape[1], -1)

    @staticmethod
    def targets(labels: np.ndarray) -> torch.Tensor:
        """0/1 labels as the float targets of the log loss."""
        return torch.from_numpy(labels.astype(np.float32))

    def field_means(self, freq: torch.Tensor) -> torch.Tensor:
        """Traffic-weighted mean row of each field (its closed row); zero for fields without traffic."""
        cfg = self.config
        w = freq.to(torch.float32).reshape(cfg.max_fields, cfg.buckets_per_field, 1)
        table = self.table.reshape(cfg.max_fields, cfg.buckets_per_field, -1)
        total = w.sum(dim=1)
        return (table * w).sum(dim=1) / total.clamp(min=1.0)

    # ------------------------------------------------------------ forward
    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits from looked-up (effective) rows ``(n, f, dim + 1)``."""
        d = self.config.dim
        return self.logits_of(rows[:, :, :d], rows[:, :, d])

    def logits_of(self, e: torch.Tensor, lin: torch.Tensor) -> torch.Tensor:
        """Logits from embeddings ``(n, f, dim)`` and linear weights ``(n, f)``; only the used columns of the MLP."""
        n, f, d = e.shape
        s = e.sum(dim=1)
        fm = 0.5 * ((s * s).sum(dim=1) - (e * e).sum(dim=(1, 2)))
        first: Any = self.mlp[0]
        h = torch.nn.functional.linear(e.reshape(n, f * d), first.weight[:, : f * d], first.bias)
        out: torch.Tensor = self.bias + lin.sum(dim=1) + fm + self.mlp[1:](h).squeeze(-1)
        return out

    def probabilities(self, rows: torch.Tensor) -> torch.Tensor:
        """Click probabilities of (effective) rows, without autograd."""
        with torch.inference_mode():
            return torch.sigmoid(self.logits(rows))

    # -------------------------------------------------------------- learn
    def fit(self, flat: torch.Tensor, looked_up: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step with every gate at 1 on rows ``looked_up`` (indices ``flat``, flattened); returns the
        (pre-step) probabilities."""
        cfg = self.config
        d = cfg.dim
        # two contiguous leaves: autograd through slices of one (n, f, d + 1) tensor fills and adds
        # whole zero tensors per slice, which cost more than the model itself
        e = looked_up[:, :, :d].contiguous().requires_grad_(True)
        lin = looked_up[:, :, d].contiguous().requires_grad_(True)
        logits = self.logits_of(e, lin)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        self.opt_dense.zero_grad()
        loss.backward()
        for p in self.opt_dense.param_groups[0]["params"]:
            if p.grad is not None:
                p.grad.div_(len(y))  # the dense part learns from the batch mean
        self.opt_dense.step()
        assert e.grad is not None and lin.grad is not None
        grad = torch.cat([e.grad.reshape(flat.shape[0], d), lin.grad.reshape(-1, 1)], dim=1)
        with torch.no_grad():
            # sparse Adagrad on the rows touched, duplicates summed first (one step per row, as
            # coalescing does); unique + index_add_ measured 3x faster than a full-table scratch
            used, inverse = torch.unique(flat, return_inverse=True)
            total = torch.zeros(used.shape[0], grad.shape[1]).index_add_(0, inverse, grad)
            state = self.ada.index_select(0, used).addcmul_(total, total)
            self.ada.index_copy_(0, used, state)
            self.table.index_add_(0, used, total.mul_(torch.rsqrt(state)).mul_(-cfg.lr))
        return torch.sigmoid(logits.detach())

    def hold(self) -> None:
        """Forget the dense gradients a backward pass through the held model left (no step is taken)."""
        for p in self.opt_dense.param_groups[0]["params"]:
            p.grad = None

    # -------------------------------------------------------------- probe
    def closing_rise(self, rows: torch.Tensor, closed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per field c of ``rows`` ``(s, f, dim + 1)``: the log loss summed over the ``s`` examples with c's
        rows replaced by ``closed[c]``, minus the log loss with every row as given (float64, ``(f,)``).

        Closing field c moves only its own inputs: the linear, FM and first-layer terms change by
        closed-form deltas, so the f closings cost one small MLP tail pass, not f forwards.
        """
        d = self.config.dim
        s, f, _ = rows.shape
        first: Any = self.mlp[0]
        with torch.inference_mode():
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            e = rows[:, :, :d]
            total = e.sum(dim=1)  # (s, d)
            pre = torch.nn.functional.linear(e.reshape(s, f * d), first.weight[:, : f * d], first.bias)
            base_logit = self.bias + rows[:, :, d].sum(dim=1) + 0.5 * (
                (total * total).sum(dim=1) - (e * e).sum(dim=(1, 2))) + self.mlp[1:](pre).squeeze(-1)
            delta = closed.unsqueeze(0) - rows  # (s, f, d + 1)
            de = delta[:, :, :d]
            moved = total.unsqueeze(1) + de  # (s, f, d): the sum of embeddings with c closed
            new_e = e + de
            fm = 0.5 * ((moved * moved).sum(-1) - (e * e).sum(dim=(1, 2)).unsqueeze(1)
                        - (new_e * new_e).sum(-1) + (e * e).sum(-1))
            w = first.weight[:, : f * d].reshape(-1, f, d)  # (h, f, d)
            hidden = pre.unsqueeze(1) + torch.einsum("sfd,hfd->sfh", de, w)
            tail = self.mlp[1:](hidden.reshape(s * f, -1)).reshape(s, f)
            lin = rows[:, :, d].sum(dim=1, keepdim=True) + delta[:, :, d]
            closed_logit = self.bias + lin + fm + tail
            base = bce(base_logit, target, reduction="none")
            closed_loss = bce(closed_logit, target.unsqueeze(1).expand(s, f), reduction="none")
            return (closed_loss - base.unsqueeze(1)).sum(dim=0).to(torch.float64)
