"""Distribution shift between a reference sample and a current sample (SPEC §8): PSI and two-sample KS.

Low-level statistics shared by the feature checks (``features/quality.py``) and the compliance drift tables
(``governance/compliance/drift.py``).

PSI (population stability index) ``sum_i (c_i - r_i) ln(c_i / r_i)`` over bins whose edges are **quantiles of the
reference sample only**: ``n_bins - 1`` interior edges at the reference quantiles (deciles for ``n_bins = 10``,
taken as observed values, no interpolation), outer bins open-ended so current values outside the reference range
still land in a bin. Bins are left-closed ``[e_i, e_{i+1})``. Repeated quantiles are collapsed; an edge that is
a point mass of the reference (a repeated quantile, or >= 1/n_bins of the reference exactly at it: discrete or
constant data) also gets a bin of its own, so a move from the atom to nearby values is seen (a constant reference
at 0 has bins ``< 0``, ``{0}``, ``> 0``). An atom's bin holds the values within ``ATOM_TOL`` (1%) of
``min(|atom|, reference 5-95% range)`` of it, and quantiles that close to each other are one atom (so an atom at 0
and any atom of a constant reference are exact; heavy tails and large offsets do not widen the window). Why: model-derived features such as graph embeddings take one value per holdings pattern, and that value
moves by a few parts in ten thousand from month to month with the population's degree normalisation; exact
atoms turned that into PSI > 2 on unchanged distributions. Proportions are floored at ``EPS = 1e-4`` (an empty
bin would make PSI infinite). NaNs are excluded from both samples and their shares reported separately (``psi_detail``).
Equal-width bins over the combined min-max range are avoided on purpose: their bins move with the current
sample and are dominated by outliers.

KS: ``D = max_x |F_ref(x) - F_cur(x)|`` evaluated at every observed value (vectorised ``searchsorted``), p-value
from the asymptotic Kolmogorov distribution ``Q(sqrt(n m / (n + m)) D)`` (``scipy.special.kolmogorov``). With
large samples KS flags negligible shifts as significant, so KS is reported but statuses come from PSI alone.

One threshold set, used by every drift report of the platform: PSI < ``PSI_WARN`` (0.1) ok, ``PSI_WARN`` <= PSI <
``PSI_ALERT`` (0.25) warn, PSI >= ``PSI_ALERT`` alert. A group's status is that of its worst column.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PSI_WARN = 0.1
PSI_ALERT = 0.25
N_BINS = 10
EPS = 1e-4
ATOM_TOL = 0.01  # see the module doc: the share of min(|atom|, reference 5-95% range) that is still the atom

OK = "ok"
WARN = "warn"
ALERT = "alert"
MISSING = "missing evidence"


class DriftInputError(ValueError):
    """Inputs of a drift computation are malformed or empty."""


def psi_status(value: float | None) -> str:
    """ok / warn / alert by the one threshold set; None or NaN is missing evidence."""
    if value is None or not math.isfinite(value):
        return MISSING
    return ALERT if value >= PSI_ALERT else WARN if value >= PSI_WARN else OK


@dataclass(frozen=True)
class PSIResult:
    psi: float
    n_bins: int  # after collapsing repeated edges, atoms included
    edges: tuple[float, ...]  # interior edges (reference quantiles)
    atoms: tuple[float, ...]  # edges that are point masses of the reference and have a bin of their own
    reference_share: tuple[float, ...]  # per-bin proportions before the EPS floor
    current_share: tuple[float, ...]
    n_reference: int  # finite values used
    n_current: int
    reference_nan_share: float
    current_nan_share: float

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _finite(x: Any, name: str) -> tuple[np.ndarray, float]:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise DriftInputError(f"{name} must be 1-D, got shape {a.shape}")
    ok = np.isfinite(a)
    if not ok.any():
        raise DriftInputError(f"{name} has no finite values ({len(a)} values, all NaN/inf or empty)")
    return a[ok], float(1.0 - ok.mean())


def _bin_index(x: np.ndarray, edges: np.ndarray, atoms: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Bin of each value: intervals ``[e_{i-1}, e_i)`` are bins 0..len(edges) (outer ones open-ended); a value
    within ``tol`` of an atom edge (the nearest one) goes to that atom's own bin after them."""
    out = np.searchsorted(edges, x, side="right")
    a = edges[atoms]
    if len(a):
        j = np.searchsorted(a, x)
        lo, hi = np.clip(j - 1, 0, len(a) - 1), np.clip(j, 0, len(a) - 1)
        nearest = np.where(np.abs(x - a[lo]) <= np.abs(x - a[hi]), lo, hi)
        hit = np.abs(x - a[nearest]) <= tol[atoms][nearest]
        out = np.where(hit, len(edges) + 1 + nearest, out)
    return out


def _reference_spread(ref_sorted: np.ndarray) -> float:
    """The reference's 5-95% range (its full range when that is 0; 0 for a constant)."""
    lo, hi = np.quantile(ref_sorted, [0.05, 0.95])
    return float(hi - lo if hi > lo else ref_sorted[-1] - ref_sorted[0])


def _atom_tolerance(values: np.ndarray, spread: float) -> np.ndarray:
    return ATOM_TOL * np.minimum(np.abs(values), spread)


def _merge_near_edges(q: np.ndarray, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct quantile edges with how many quantiles each stands for; a quantile within the atom
    tolerance of the previous kept edge is the same point mass (e.g. one atom whose value differs slightly between
    the months pooled into the reference) and is merged into it."""
    edges, counts = [], []
    for v in np.sort(q):
        if edges and v - edges[-1] <= _atom_tolerance(np.array(edges[-1]), spread):
            counts[-1] += 1
        else:
            edges.append(v)
            counts.append(1)
    return np.asarray(edges, dtype=float), np.asarray(counts)


def psi_detail(reference: Any, current: Any, n_bins: int = N_BINS) -> PSIResult:
    """PSI with reference quantile bins and the bin proportions / NaN shares behind it (module docstring)."""
    if n_bins < 2:
        raise DriftInputError(f"n_bins must be >= 2, got {n_bins}")
    ref, ref_nan = _finite(reference, "reference")
    cur, cur_nan = _finite(current, "current")
    ref_sorted = np.sort(ref)
    q = np.quantile(ref_sorted, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], method="inverted_cdf")
    spread = _reference_spread(ref_sorted)
    edges, repeats = _merge_near_edges(q, spread)
    tol = _atom_tolerance(edges, spread)
    mass = (np.searchsorted(ref_sorted, edges + tol, side="right") - np.searchsorted(ref_sorted, edges - tol)) / len(ref)
    atoms = (repeats > 1) | (mass >= 1.0 / n_bins)
    k = len(edges) + 1 + int(atoms.sum())
    r = np.bincount(_bin_index(ref, edges, atoms, tol), minlength=k) / len(ref)
    c = np.bincount(_bin_index(cur, edges, atoms, tol), minlength=k) / len(cur)
    rf, cf = np.maximum(r, EPS), np.maximum(c, EPS)
    value = float(((cf - rf) * np.log(cf / rf)).sum())
    return PSIResult(psi=value, n_bins=k, edges=tuple(map(float, edges)),
                     atoms=tuple(map(float, edges[atoms])), reference_share=tuple(map(float, r)),
                     current_share=tuple(map(float, c)), n_reference=len(ref), n_current=len(cur),
                     reference_nan_share=ref_nan, current_nan_share=cur_nan)


def psi(reference: Any, current: Any, n_bins: int = N_BINS) -> float:
    """Population stability index of ``current`` against ``reference`` (NaNs excluded; see ``psi_detail``)."""
    return psi_detail(reference, current, n_bins).psi


def ks(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic two-sided p-value (NaNs excluded)."""
    a, _ = _finite(reference, "reference")
    b, _ = _finite(current, "current")
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])  # the ECDF difference changes only at observed values
    d = float(np.abs(np.searchsorted(a, x, side="right") / len(a)
                     - np.searchsorted(b, x, side="right") / len(b)).max())
    en = len(a) * len(b) / (len(a) + len(b))
    from scipy.special import kolmogorov  # scipy costs ~1 s at import: only the KS test needs it

    return d, float(kolmogorov(math.sqrt(en) * d))
