"""Seeded synthetic impression/click stream with a known ground truth.

Used by ``featsieve generate``, the demo, tests and benchmarks. Every
impression draws one value per field (popularity Zipf-like, a share missing),
and clicks with probability ``sigmoid(b0 + Σ effect[field][value])`` where the
per-value effects are drawn once from the seed and ``b0`` is calibrated so
the mean CTR is ``base_ctr``. Field roles:

* ``informative``: graded effects, cardinality 2 … ~28k (the largest draws a
  CTR per value from a Beta, like an ad id);
* ``noise``: no effect, low to high cardinality, str/int/float/bool;
* ``id_like``: no effect, (almost) unique per event: the fields that fool
  uncorrected mutual information;
* an XOR pair: two uniform binary fields, no marginal signal, informative
  together; a duplicate: an exact copy of an informative field;
* ``interactions`` (some presets): a low-rank term ``strength * <u[a], v[b]>``
  between two fields' values (a user x item affinity), so a field weak alone
  can be strong together with another.

Presets (``PRESETS``; ``PRESET_CTR`` gives each one's default ``base_ctr``):
``small`` and ``default`` (the demo's and the tests' streams), ``clear``
(strong effects, for ranker agreement), and three that reproduce what real
click logs do to a selector: ``collaborative`` (an app-usage log: a dominant
item field, a user field weak alone and strong with the item, context
fields each worth a little), ``click-poor`` (an RTB log at ~0.45% CTR: a few
hundred clicks in 48k impressions) and ``dominant-id`` (one ad-id field
carries most of the signal; several weak fields are still worth keeping;
a 50 000-value noise field).

With ``drift_at`` set, after that share of the impressions one informative
field loses its effect and one noise field gains one; ground truth then lists
those two only under ``drift``. Clicks come at the impression's ts plus a
log-normal delay (median ``click_delay_median_s``); a share arrives after the
attribution window (orphans) and a share is sent twice (duplicates).
Events are yielded in ts order, clicks interleaved at their own ts.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from connectors.codec import Click, Impression

_ROLES = ("informative", "noise", "id_like", "xor", "duplicate")


@dataclass(frozen=True, slots=True)
class Interaction:
    """A low-rank interaction between the values of fields ``a`` and ``b``: the logit gains
    ``strength * <u[a_value], v[b_value]>`` with unit-variance rank-``rank`` factors."""

    a: str
    b: str
    strength: float
    rank: int = 4
_XOR_WEIGHT = 0.6  # logit added when xor_a != xor_b, subtracted otherwise


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One generated field. ``strength`` is the sd of per-value logit effects (0: no signal);
    ``beta`` draws a CTR per value instead; ``zipf`` is the popularity exponent (0: uniform)."""

    name: str
    role: str
    kind: str  # str | int | float | bool
    cardinality: int
    strength: float = 0.0
    zipf: float = 1.0
    beta: tuple[float, float] | None = None
    missing: bool = True
    of: str | None = None  # for role "duplicate"


def _f(name: str, role: str, kind: str, card: int, strength: float = 0.0, **kw: Any) -> FieldSpec:
    return FieldSpec(name, role, kind, card, strength, **kw)


_XOR = (_f("xor_a", "xor", "int", 2, zipf=0.0, missing=False),
        _f("xor_b", "xor", "int", 2, zipf=0.0, missing=False))

PRESETS: dict[str, tuple[FieldSpec, ...]] = {
    "small": (
        _f("device", "informative", "str", 4, 0.6, zipf=0.5),
        _f("hour", "informative", "int", 24, 0.5, zipf=0.2),
        _f("ad_cat", "informative", "str", 60, 0.8),
        _f("ad_id", "informative", "str", 2000, beta=(0.4, 12.0), zipf=0.9),
        _f("browser", "noise", "str", 8),
        _f("country", "noise", "str", 50),
        _f("keyword", "noise", "str", 1000, zipf=0.8),
        _f("bid_floor", "noise", "float", 500, zipf=0.5),
        _f("request_id", "id_like", "str", 0),
        *_XOR,
        _f("ad_cat_copy", "duplicate", "str", 60, of="ad_cat"),
    ),
    "default": (
        _f("device", "informative", "str", 4, 0.45, zipf=0.5),
        _f("req", "id_like", "str", 0),
        _f("is_app", "informative", "bool", 2, 0.33, zipf=0.3),
        _f("hour", "informative", "int", 24, 0.4, zipf=0.2),
        _f("browser", "noise", "str", 8),
        _f("os", "noise", "str", 6),
        _f("ad_cat", "informative", "str", 60, 0.5),
        _f("country", "noise", "str", 50),
        _f("user", "id_like", "int", 5_000_000, zipf=0.0),
        _f("site", "informative", "str", 800, 0.6, zipf=1.1),
        _f("lang", "noise", "str", 20),
        _f("conn", "noise", "str", 4, zipf=0.5),
        _f("placement", "informative", "str", 12, 0.5, zipf=0.6),
        _f("slot", "noise", "str", 10),
        _f("creative", "informative", "str", 5000, 0.6, zipf=1.1),
        _f("gender", "noise", "str", 3, zipf=0.3),
        _f("age", "noise", "int", 7, zipf=0.3),
        _f("session", "id_like", "str", 20_000_000, zipf=0.0),
        _f("region", "noise", "str", 300),
        _f("ad_id", "informative", "str", 28_000, beta=(0.5, 16.0), zipf=1.05),
        _f("city", "noise", "str", 3000),
        _f("publisher", "noise", "str", 1500),
        _f("campaign", "noise", "str", 400),
        _f("keyword", "noise", "str", 10_000, zipf=0.9),
        _f("weekend", "noise", "bool", 2, zipf=0.0),
        _f("consent", "noise", "bool", 2, zipf=0.5),
        _f("width", "noise", "int", 40),
        _f("mday", "noise", "int", 31, zipf=0.0),
        _f("bid_floor", "noise", "float", 2000, zipf=0.7),
        _f("latency", "noise", "float", 5000, zipf=0.3),
        _f("ip", "id_like", "int", 10_000_000, zipf=0.0),
        _f("carrier", "noise", "str", 25),
        _f("rating", "noise", "str", 5),
        _f("depth", "noise", "int", 20),
        _f("os_ver", "noise", "str", 30),
        *_XOR,
        _f("site_copy", "duplicate", "str", 800, of="site"),
        _f("vh", "noise", "int", 60),
    ),
}
# "clear": the default preset's fields (the same noise, ID-like, XOR and duplicate fields) with
# stronger informative effects, tuned so that with base_ctr 0.1 and seed 11 (featsieve bench
# score) the true MIs are 0.0078 .. 0.040 nats, each at least 15% from the next: every informative
# field is far above chance and their order is unambiguous (other seeds draw other effects, with
# near-ties). For checking agreement with another ranker (OutRank) where the signal is clear; see
# docs/outrank.md.
_CLEAR_STRENGTH = {"device": 1.0, "is_app": 1.05, "hour": 1.05, "ad_cat": 1.3, "site": 1.5,
                   "placement": 1.35, "creative": 1.65}
PRESETS["clear"] = tuple(
    replace(s, strength=_CLEAR_STRENGTH[s.name]) if s.name in _CLEAR_STRENGTH
    else replace(s, beta=(0.4, 2.0)) if s.name == "ad_id" else s
    for s in PRESETS["default"]
)
# Presets that reproduce real click logs' failure modes of a selector (docs/policy.md).
PRESETS["collaborative"] = (
    _f("user", "informative", "int", 1000, 0.08, zipf=0.8),
    _f("item", "informative", "str", 800, 1.1, zipf=1.0),
    _f("daytime", "informative", "str", 7, 0.25, zipf=0.3),
    _f("weekday", "informative", "str", 7, 0.12, zipf=0.2),
    _f("isweekend", "informative", "bool", 2, 0.1, zipf=0.3),
    _f("homework", "informative", "str", 3, 0.2, zipf=0.5),
    _f("cost", "informative", "str", 2, 0.35, zipf=0.8),
    _f("weather", "informative", "str", 9, 0.1, zipf=0.6),
    _f("country", "informative", "str", 80, 0.15, zipf=1.2),
    _f("city", "noise", "int", 400, zipf=1.0),
)
PRESETS["click-poor"] = (
    _f("slot_id", "informative", "str", 20, 0.7, zipf=0.8),
    _f("creative", "informative", "str", 300, 0.6, zipf=1.0),
    _f("advertiser", "informative", "int", 30, 0.5, zipf=0.9),
    _f("hour", "informative", "int", 24, 0.35, zipf=0.2),
    _f("region", "informative", "int", 35, 0.3, zipf=0.8),
    _f("slot_size", "informative", "str", 8, 0.45, zipf=0.7),
    _f("adexchange", "informative", "int", 4, 0.3, zipf=0.5),
    _f("os", "noise", "str", 6, zipf=0.8),
    _f("browser", "noise", "str", 10, zipf=0.8),
    _f("city", "noise", "int", 300, zipf=0.9),
    _f("visibility", "noise", "int", 3, zipf=0.5),
    _f("slot_format", "noise", "int", 3, zipf=0.5),
    _f("bid_price", "noise", "float", 50, zipf=0.6),
    _f("domain", "noise", "str", 2000, zipf=0.9),
    _f("user_tag", "noise", "str", 1000, zipf=0.7),
    _f("bid_id", "id_like", "str", 0),
)
PRESETS["dominant-id"] = (
    _f("ad_id", "informative", "str", 20_000, beta=(0.35, 3.0), zipf=1.05),
    _f("device", "informative", "str", 4, 0.25, zipf=0.5),
    _f("hour", "informative", "int", 24, 0.2, zipf=0.2),
    _f("placement", "informative", "str", 12, 0.22, zipf=0.6),
    _f("site", "informative", "str", 300, 0.25, zipf=1.1),
    _f("os", "noise", "str", 6),
    _f("country", "noise", "str", 50),
    _f("keyword", "noise", "str", 50_000, zipf=0.3),
    _f("req", "id_like", "str", 0),
    *_XOR,
)
PRESET_CTR = {"collaborative": 0.26, "click-poor": 0.0045, "dominant-id": 0.12}
INTERACTIONS: dict[str, tuple[Interaction, ...]] = {
    "collaborative": (Interaction("user", "item", 1.3, rank=4),),
}
_DRIFT = {"small": ("ad_cat", "browser"), "default": ("ad_cat", "browser"),
          "clear": ("ad_cat", "browser"), "collaborative": ("daytime", "city"),
          "click-poor": ("slot_id", "os"), "dominant-id": ("device", "os")}  # (loses, gains)


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Everything that determines a stream; equal configs give byte-identical streams.

    ``event_rate`` is impressions per second of event time; ``drift_at`` a share
    of the impressions (None: no drift); delays are in seconds of event time.
    """

    seed: int = 7
    n_impressions: int = 100_000
    preset: str = "default"
    base_ctr: float | None = None  # None: the preset's (PRESET_CTR, else 0.03)
    event_rate: float = 1000.0
    start_ms: int = 1_700_000_000_000
    missing_rate: float = 0.02
    click_delay_median_s: float = 20.0
    click_delay_sigma: float = 1.5
    late_click_rate: float = 0.03
    duplicate_click_rate: float = 0.01
    attribution_window_s: float = 1800.0
    drift_at: float | None = None
    chunk: int = 8192

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if self.base_ctr is None:
            object.__setattr__(self, "base_ctr", PRESET_CTR.get(self.preset, 0.03))
        if self.n_impressions < 0 or self.chunk < 1:
            raise ValueError("n_impressions must be >= 0 and chunk >= 1")
        if not 0 < self.ctr < 1 or self.event_rate <= 0:
            raise ValueError("base_ctr must be in (0, 1) and event_rate > 0")
        for name in ("missing_rate", "late_click_rate", "duplicate_click_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.drift_at is not None and not 0 <= self.drift_at <= 1:
            raise ValueError("drift_at must be in [0, 1]")

    @property
    def ctr(self) -> float:
        """The mean click probability (``base_ctr`` as resolved from the preset)."""
        assert self.base_ctr is not None
        return self.base_ctr


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hb(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats."""
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


class _Model:
    """Per-value probabilities, effects and rendered values, all drawn from the seed."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self.cfg = cfg
        self.specs = PRESETS[cfg.preset]
        setup, self.cal_seed, self.data_seed = np.random.SeedSequence(cfg.seed).spawn(3)
        rng = np.random.default_rng(setup)
        self.cdf: dict[str, np.ndarray] = {}
        self.probs: dict[str, np.ndarray] = {}
        self.effects: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}
        base_logit = math.log(cfg.ctr / (1 - cfg.ctr))
        for s in self.specs:
            if s.role in ("id_like", "duplicate"):
                continue
            k = s.cardinality
            w = 1.0 / np.arange(1, k + 1) ** s.zipf
            rng.shuffle(w)  # popularity unrelated to the value's name
            m = cfg.missing_rate if s.missing else 0.0
            probs = np.append(w / w.sum() * (1 - m), m)  # index k is "missing"
            self.probs[s.name] = probs
            self.cdf[s.name] = np.cumsum(probs)
            eff = np.zeros(k + 1)
            if s.beta is not None:
                ctr = np.clip(rng.beta(*s.beta, size=k), 1e-4, 0.9)
                eff[:k] = np.log(ctr / (1 - ctr)) - base_logit
            elif s.strength:
                # rescale so the traffic-weighted sd is exactly `strength`: the graded order of
                # the fields then holds for every seed, not only on average
                z = rng.normal(0.0, 1.0, size=k)
                w_k = probs[:k] / probs[:k].sum()
                z -= w_k @ z
                eff[:k] = z * s.strength / max(math.sqrt(w_k @ z**2), 1e-12)
            self.effects[s.name] = eff
            self.values[s.name] = _render(s, rng)
        loses, gains = _DRIFT[cfg.preset]
        self.drift = (loses, gains) if cfg.drift_at is not None else None
        self.drift_index = (
            int(cfg.drift_at * cfg.n_impressions) if cfg.drift_at is not None else cfg.n_impressions
        )
        gain_sd = next(s.strength for s in self.specs if s.name == loses)
        # the gaining field gets the lost field's strength, rescaled to traffic-weighted sd as the
        # informative fields are (a raw draw let popular values get small effects: on some seeds the
        # gained signal was a quarter of the lost one); the draw itself is unchanged, so streams
        # without drift stay byte-identical
        k_gain = len(self.probs[gains]) - 1
        z_gain = rng.normal(0.0, gain_sd, size=k_gain)
        w_gain = self.probs[gains][:k_gain] / self.probs[gains][:k_gain].sum()
        z_gain -= w_gain @ z_gain
        z_gain *= gain_sd / max(math.sqrt(w_gain @ z_gain**2), 1e-12)
        gained = np.append(z_gain, 0.0)
        self.drifted = dict(self.effects)
        self.drifted.update({loses: np.zeros_like(self.effects[loses]), gains: gained})
        # interaction factors, drawn after everything else so presets without them stay byte-identical;
        # entries of sd rank^-1/4 give <u, v> unit variance; the missing value's row is zero
        self.interactions: list[tuple[Interaction, np.ndarray, np.ndarray]] = []
        for inter in INTERACTIONS.get(cfg.preset, ()):
            sd = inter.rank ** -0.25
            u = rng.normal(0.0, sd, size=(len(self.probs[inter.a]), inter.rank))
            v = rng.normal(0.0, sd, size=(len(self.probs[inter.b]), inter.rank))
            u[-1] = 0.0
            v[-1] = 0.0
            self.interactions.append((inter, u, v))
        self.b0 = self._calibrate()

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Value indices for n impressions, one array per modelled field."""
        return {name: np.searchsorted(cdf, rng.random(n), side="right").clip(max=len(cdf) - 1)
                for name, cdf in self.cdf.items()}

    def logit_sum(self, idx: dict[str, np.ndarray], drifted: bool) -> np.ndarray:
        """Σ of the effects (without b0) for each impression."""
        return np.sum(np.stack(list(self.logit_parts(idx, drifted).values())), axis=0)

    def logit_parts(self, idx: dict[str, np.ndarray], drifted: bool) -> dict[str, np.ndarray]:
        eff = self.drifted if drifted else self.effects
        parts = {name: e[idx[name]] for name, e in eff.items() if name in idx and e.any()}
        if "xor_a" in idx:
            parts["xor"] = np.where(idx["xor_a"] != idx["xor_b"], _XOR_WEIGHT, -_XOR_WEIGHT)
        for inter, u, v in self.interactions:
            parts[f"{inter.a}*{inter.b}"] = inter.strength * np.einsum(
                "ij,ij->i", u[idx[inter.a]], v[idx[inter.b]])
        return parts

    def _calibrate(self) -> float:
        """b0 such that the mean click probability before drift is base_ctr."""
        rng = np.random.default_rng(self.cal_seed)
        total = self.logit_sum(self.draw(rng, 20_000), drifted=False)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _sigmoid(mid + total).mean() < self.cfg.ctr else (lo, mid)
        return (lo + hi) / 2

    def true_mi(self, drifted: bool = False) -> tuple[dict[str, float], float]:
        """MI (nats) of each modelled field with the click, from the model's own probabilities:
        p(y | value) averages the sigmoid over the distribution of the other fields' logit.
        Also the joint MI of the XOR pair."""
        rng = np.random.default_rng(self.cal_seed)
        idx = self.draw(rng, 20_000)
        parts = self.logit_parts(idx, drifted)
        total = np.sum(np.stack(list(parts.values())), axis=0)
        qs = (np.arange(256) + 0.5) / 256
        eff = self.drifted if drifted else self.effects
        out: dict[str, float] = {}
        for name, probs in self.probs.items():
            if name not in parts or name.startswith("xor_"):
                out[name] = 0.0
                continue
            rest = np.quantile(total - parts[name], qs)
            p_y = _sigmoid(self.b0 + eff[name][:, None] + rest[None, :]).mean(axis=1)
            out[name] = _mi(probs, p_y)
        if "xor" not in parts:
            return out, 0.0
        rest = np.quantile(total - parts["xor"], qs)
        p_y = _sigmoid(self.b0 + np.array([-_XOR_WEIGHT, _XOR_WEIGHT])[:, None] + rest).mean(axis=1)
        return out, _mi(np.array([0.5, 0.5]), p_y)


def _mi(probs: np.ndarray, p_y: np.ndarray) -> float:
    mean = float(probs @ p_y)
    return float(_hb(np.array(mean)) - probs @ _hb(p_y))


def _render(s: FieldSpec, rng: np.random.Generator) -> np.ndarray:
    """Object array of the field's JSON values by index; the last slot (missing) is None."""
    k = s.cardinality
    if s.kind == "bool":
        vals: list[Any] = [False, True]
    elif s.kind == "int":
        vals = list(range(k))
    elif s.kind == "float":
        vals = sorted({round(float(x), 2) for x in rng.lognormal(0.0, 1.0, size=4 * k)})[:k]
        vals += [float(len(vals) + i) for i in range(k - len(vals))]
    else:
        vals = [f"{s.name[:2]}{i}" for i in range(k)]
    arr = np.empty(k + 1, dtype=object)
    arr[:k] = vals
    arr[k] = None
    return arr


def generate(config: GeneratorConfig) -> Iterator[Impression | Click]:
    """Yield the stream: impressions in ts order, clicks interleaved at their own ts."""
    model = _Model(config)
    rng = np.random.default_rng(model.data_seed)
    names = [s.name for s in model.specs]
    gap_ms = 1000.0 / config.event_rate
    window_s = config.attribution_window_s
    median = math.log(config.click_delay_median_s)
    clicks: list[tuple[int, int, str]] = []  # (ts, sequence, id)
    seq = 0
    clock = float(config.start_ms)
    prefix = f"{config.seed:x}."
    for start in range(0, config.n_impressions, config.chunk):
        n = min(config.chunk, config.n_impressions - start)
        idx = model.draw(rng, n)
        rows = np.arange(start, start + n)
        before = rows < model.drift_index
        logit = model.b0 + np.where(
            before,
            model.logit_sum(idx, drifted=False),
            model.logit_sum(idx, drifted=True) if model.drift else 0.0,
        )
        clicked = rng.random(n) < _sigmoid(logit)
        delay = rng.lognormal(median, config.click_delay_sigma, n)
        late = rng.random(n) < config.late_click_rate
        delay = np.where(late, window_s + rng.uniform(1.0, window_s, n), delay)
        dup = rng.random(n) < config.duplicate_click_rate
        dup_delay = delay + rng.uniform(0.0, 10.0, n)
        when = clock + np.cumsum(rng.exponential(gap_ms, n))
        clock = float(when[-1])
        ts = np.floor(when).astype(np.int64)
        columns = []
        for s in model.specs:
            if s.role == "id_like":
                draws = rng.integers(0, s.cardinality or 2**62, n)
                if s.kind == "int":
                    columns.append(draws.tolist())
                else:
                    columns.append([f"{s.name[:1]}{x:x}" for x in draws.tolist()])
            else:
                src = s.of or s.name
                columns.append(model.values[src][idx[src]].tolist())
        ts_list = ts.tolist()
        click_rows = np.flatnonzero(clicked).tolist()
        click_ts = (ts + (delay * 1000).astype(np.int64)).tolist()
        dup_ts = (ts + (dup_delay * 1000).astype(np.int64)).tolist()
        dup_list = dup.tolist()
        for r in click_rows:
            ident = f"{prefix}{start + r:x}"
            heapq.heappush(clicks, (click_ts[r], seq, ident))
            seq += 1
            if dup_list[r]:
                heapq.heappush(clicks, (dup_ts[r], seq, ident))
                seq += 1
        for r, row in enumerate(zip(*columns, strict=True)):
            t = ts_list[r]
            while clicks and clicks[0][0] <= t:
                ct, _, cid = heapq.heappop(clicks)
                yield Click(cid, ct)
            yield Impression(f"{prefix}{start + r:x}", t, dict(zip(names, row, strict=True)))
    while clicks:
        ct, _, cid = heapq.heappop(clicks)
        yield Click(cid, ct)


def ground_truth(config: GeneratorConfig) -> dict[str, Any]:
    """JSON-able truth about the stream :func:`generate` yields for ``config``.

    ``informative`` is ordered by true MI (strongest first); ``noise``,
    ``id_like``, the XOR pair and the duplicate are disjoint from it. With
    drift, the field that loses and the field that gains signal appear only
    under ``drift``. ``true_mi`` (nats) is before drift, ``drift.true_mi_after`` after.
    """
    model = _Model(config)
    mi, xor_mi = model.true_mi()
    specs = model.specs
    dup = next((s for s in specs if s.role == "duplicate"), None)
    if dup is not None:
        mi[dup.name] = mi[dup.of or ""]
    for s in specs:
        mi.setdefault(s.name, 0.0)
    drifting = set(model.drift or ())
    by_role = {role: [s.name for s in specs if s.role == role and s.name not in drifting]
               for role in _ROLES}
    informative = sorted(by_role["informative"], key=lambda n: (-mi[n], n))
    truth: dict[str, Any] = {
        "preset": config.preset,
        "config": asdict(config),
        "informative": informative,
        "noise": by_role["noise"],
        "id_like": by_role["id_like"],
        "true_mi": {s.name: mi[s.name] for s in specs},
        "xor_pair": by_role["xor"],
        "xor_pair_mi": xor_mi,
        "duplicate": {"field": dup.name, "of": dup.of} if dup is not None else None,
        "interactions": [[i.a, i.b, i.strength] for i, _, _ in model.interactions],
        "cardinality": {s.name: s.cardinality for s in specs},
        "b0": model.b0,
        "drift": None,
    }
    if model.drift is not None:
        loses, gains = model.drift
        after, _ = model.true_mi(drifted=True)
        truth["drift"] = {
            "at": config.drift_at,
            "at_index": model.drift_index,
            "approx_at_ts": int(config.start_ms + model.drift_index * 1000.0 / config.event_rate),
            "loses_signal": loses,
            "gains_signal": gains,
            "true_mi_after": {loses: after[loses], gains: after[gains]},
        }
    return truth


@dataclass(frozen=True)
class LabelledExamples:
    """The stream of :func:`generate` joined into labelled examples, in impression (event-time) order.

    ``rows[i]`` holds impression ``ids[i]``'s values in the order of ``names``; ``ts`` (epoch ms,
    int64) and ``labels`` (int8, 0/1) are aligned with it.
    """

    names: list[str]
    ids: list[str]
    ts: np.ndarray
    rows: list[tuple[Any, ...]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def labelled_examples(config: GeneratorConfig) -> LabelledExamples:
    """Every impression of ``config``'s stream with the label the daemon's join gives it.

    Positive when a click on its id arrives with ``ts <= click.ts <= ts + attribution window``
    (duplicate clicks count once, a late click leaves it negative), as ``connectors.join`` labels
    it; the order is the impressions' (the join emits positives earlier than negatives, but a
    consumer that needs event-time order sorts by ``ts``, which this order already is).
    """
    window_ms = int(config.attribution_window_s * 1000)
    names: list[str] = []
    ids: list[str] = []
    ts: list[int] = []
    rows: list[tuple[Any, ...]] = []
    first_click: dict[str, int] = {}
    for ev in generate(config):
        if isinstance(ev, Impression):
            names = names or list(ev.features)
            rows.append(tuple(ev.features[k] for k in names))
            ids.append(ev.id)
            ts.append(ev.ts)
        else:
            first_click.setdefault(ev.id, ev.ts)  # clicks come in ts order: the first is the earliest
    t = np.asarray(ts, dtype=np.int64)
    click = np.fromiter((first_click.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
    labels = ((click >= t) & (click <= t + window_ms)).astype(np.int8)
    return LabelledExamples(names, ids, t, rows, labels)
