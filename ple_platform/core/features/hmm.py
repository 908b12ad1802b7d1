"""Gaussian HMMs over customers' own monthly sequences: feature group ``hmm_states`` (SPEC §4 row 7).

The reference fitted its HMMs on ONE sequence made of different customers in table order, so "transitions" ran
between unrelated customers, and seeded them with Python's salted ``hash()``. Here:

* :class:`GaussianHMM` runs Baum-Welch over many independent sequences at once (one per customer, batched over
  the customer axis, variable lengths through a mask), so every transition is within one customer.
* Features are *forward-filtered* posteriors ``P(state at the last valid month | observations up to it)``:
  no backward pass, no look-ahead, so month t's features never see month t+1.
* Seeds come from ``zlib.crc32`` of the mode name (:func:`mode_seed`); the fit canonicalises the customer
  order first, so the fitted model is identical whatever order the rows arrive in.

Mask semantics: ``mask[n, t]`` False means "no observation for that month" and the step is *skipped*: no
emission and no transition (the customer's valid months form its sequence, in order). Sequences may be left-
or right-padded or have gaps; values at masked steps are ignored (they may be NaN).

Observations are standardised with the pooled mean/std of the fit data, stored in the model; pass features on a
roughly Gaussian scale (e.g. ``log1p`` of amounts and counts).
"""

from __future__ import annotations

import zlib

import numpy as np

from ple_platform.core.features.spec import FEATURE_GROUPS_BY_NAME, HMM_MODES

HMM_COLUMNS = FEATURE_GROUPS_BY_NAME["hmm_states"].columns
# Dwell times are capped: 1/(1 - A_ss) explodes as A_ss -> 1, and beyond ten years it carries no information
# about a 12-month window while it would dominate any scaler downstream.
MAX_DWELL_MONTHS = 120.0
# Transition/start probabilities are floored so a state EM drove to exactly 0 cannot make a later
# observation impossible (a zero forward normaliser); 1e-10 leaves the likelihood unchanged in practice.
_PROB_FLOOR = 1e-10
_CHUNK_ELEMENTS = 4_000_000
_INIT_SAMPLE = 50_000


def mode_seed(mode: str, base_seed: int = 0) -> int:
    """Deterministic per-mode seed (crc32 of the name, stable across processes, unlike ``hash()``)."""
    return (zlib.crc32(mode.encode("utf-8")) + int(base_seed)) % (2**32)


def _check(X: np.ndarray, mask: np.ndarray, n_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(X, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if x.ndim != 3 or m.shape != x.shape[:2]:
        raise ValueError(f"X must be (N, T, D) and mask (N, T); got {x.shape} and {m.shape}")
    if n_dim is not None and x.shape[2] != n_dim:
        raise ValueError(f"model was fitted on D={n_dim} observations, got D={x.shape[2]}")
    x = np.where(m[:, :, None], x, 0.0)  # masked values are ignored, even NaN
    if not np.isfinite(x).all():
        raise ValueError("X must be finite at unmasked steps")
    return x, m


def _rows_matvec(v: np.ndarray, A: np.ndarray) -> np.ndarray:
    """v @ A for a batch of row vectors (N, K). An explicit loop over the K (<= 6) terms is faster than a
    broadcast-and-reduce and keeps each row's arithmetic independent of the batch (a BLAS GEMM may block rows
    differently by position and change the last bit)."""
    out = v[:, :1] * A[0]
    for i in range(1, A.shape[0]):
        out += v[:, i : i + 1] * A[i]
    return out


def _row_entropy(P: np.ndarray) -> np.ndarray:
    logp = np.log(P, out=np.zeros_like(P), where=P > 0)
    return -(P * logp).sum(axis=-1)


class GaussianHMM:
    """Diagonal-covariance Gaussian HMM fitted by batched Baum-Welch on many independent sequences.

    Attributes after :meth:`fit` (states are relabelled in lexicographic order of their means, so the state
    ids are stable across refits and do not depend on EM's arbitrary labelling):
    ``startprob_`` (K,), ``transmat_`` (K, K), ``means_`` / ``vars_`` (K, D) in standardised units,
    ``scale_mean_`` / ``scale_std_`` (D,), ``loglik_history_`` (total log-likelihood of each parameter set
    evaluated, the last one being the returned model), ``n_iter_`` (EM updates done), ``converged_``.
    """

    def __init__(self, n_states: int, seed: int = 0, var_floor: float = 1e-3):
        if n_states < 1:
            raise ValueError("n_states must be >= 1")
        self.n_states = int(n_states)
        self.seed = int(seed)
        # Floor on each state's variance, in units of the pooled variance (data are standardised): stops a state
        # collapsing onto repeated values (e.g. all-zero months) and the likelihood running off to infinity.
        self.var_floor = float(var_floor)
        self.startprob_: np.ndarray | None = None
        self.transmat_: np.ndarray | None = None
        self.means_: np.ndarray | None = None
        self.vars_: np.ndarray | None = None
        self.scale_mean_: np.ndarray | None = None
        self.scale_std_: np.ndarray | None = None
        self.loglik_history_: list[float] = []
        self.n_iter_ = 0
        self.converged_ = False

    # ------------------------------------------------------------------------------------------------------
    # fitting
    # ------------------------------------------------------------------------------------------------------

    def fit(self, X: np.ndarray, mask: np.ndarray, n_iter: int = 30, tol: float = 1e-4) -> GaussianHMM:
        """Baum-Welch on N independent sequences: X (N, T, D), mask (N, T) bool.

        Stops after ``n_iter`` EM updates or when the mean log-likelihood per observation improves by less
        than ``tol``. Pass a training-month subsample of customers; cost is linear in N*T.
        """
        x, m = _check(X, mask)
        if not m.any():
            raise ValueError("no valid observation to fit on")
        # Canonical customer order (lexicographic in the data): k-means++ draws and every EM sum then run in the
        # same order whatever order the caller's rows came in, so the model is bit-identical under shuffles.
        keys = np.concatenate([m.astype(np.float64), x.reshape(x.shape[0], -1)], axis=1)
        canon = np.lexsort(keys.T[::-1])
        x, m = x[canon], m[canon]

        pooled = x[m]
        self.scale_mean_ = pooled.mean(axis=0)
        std = pooled.std(axis=0)
        self.scale_std_ = np.where(std > 0, std, 1.0)
        z = np.where(m[:, :, None], (x - self.scale_mean_) / self.scale_std_, 0.0)
        self._init_params(z[m])

        n_obs = int(m.sum())
        self.loglik_history_ = []
        self.converged_ = False
        self.n_iter_ = 0
        for it in range(n_iter + 1):
            ll, suff = self._e_step(z, m)
            self.loglik_history_.append(ll)
            if it > 0 and (ll - self.loglik_history_[-2]) / n_obs < tol:
                self.converged_ = True
                break
            if it == n_iter:
                break
            self._m_step(z, m, suff)
            self.n_iter_ += 1
        self._sort_states()
        return self

    def _init_params(self, obs: np.ndarray) -> None:
        """k-means++ seeding + a few Lloyd steps on (a seeded subsample of) the pooled standardised observations."""
        K = self.n_states
        rng = np.random.default_rng(self.seed)
        if len(obs) > _INIT_SAMPLE:  # initialisation only needs the rough cluster layout
            obs = obs[np.sort(rng.choice(len(obs), _INIT_SAMPLE, replace=False))]
        M, D = obs.shape

        def sqdist(centers: np.ndarray) -> np.ndarray:  # (M, K) without an (M, K, D) temporary
            out = np.zeros((M, len(centers)))
            for d in range(D):
                out += (obs[:, d, None] - centers[:, d]) ** 2
            return out

        centers = np.empty((K, D))
        centers[0] = obs[rng.integers(M)]
        d2 = sqdist(centers[:1])[:, 0]
        for k in range(1, K):
            total = d2.sum()
            idx = rng.integers(M) if total <= 0 else int(np.searchsorted(np.cumsum(d2), rng.random() * total))
            centers[k] = obs[min(idx, M - 1)]
            d2 = np.minimum(d2, sqdist(centers[k : k + 1])[:, 0])
        for _ in range(10):
            lab = sqdist(centers).argmin(axis=1)
            for k in range(K):
                sel = obs[lab == k]
                if len(sel):
                    centers[k] = sel.mean(axis=0)
        lab = sqdist(centers).argmin(axis=1)
        self.means_ = centers
        self.vars_ = np.ones((K, D))
        for k in range(K):
            sel = obs[lab == k]
            if len(sel) > 1:
                self.vars_[k] = np.maximum(sel.var(axis=0), self.var_floor)
        self.startprob_ = np.full(K, 1.0 / K)
        # Sticky start: monthly behaviour regimes persist, and a diagonal-heavy start helps EM find them.
        self.transmat_ = 0.7 * np.eye(K) + 0.3 / K

    def _log_emission(self, z: np.ndarray) -> np.ndarray:
        """log N(z | mean_k, diag var_k) for z (N, T, D) -> (N, T, K). Loops over the few dimensions instead of
        materialising (N, T, K, D): same arithmetic per element, a fraction of the memory traffic."""
        const = -0.5 * np.log(2 * np.pi * self.vars_).sum(axis=1)
        acc = np.zeros(z.shape[:2] + (self.n_states,))
        for d in range(z.shape[2]):
            acc += (z[:, :, d, None] - self.means_[:, d]) ** 2 / self.vars_[:, d]
        return const - 0.5 * acc

    def _forward(self, logb: np.ndarray, m: np.ndarray):
        """Scaled forward pass. Returns alpha (N, T, K) carried through masked steps, the per-step emission
        ratios b (N, T, K), normalisers c (N, T), the per-sequence log-likelihood (N,) and the index of each
        step's predecessor alpha (for xi): alpha_prev (N, T, K) and has_prev (N, T)."""
        N, T, K = logb.shape
        A, pi = self.transmat_, self.startprob_
        shift = logb.max(axis=2, keepdims=True)
        b = np.exp(logb - shift)  # the best state has ratio 1, so c below cannot underflow to 0
        alpha = np.zeros((N, T, K))
        alpha_prev = np.zeros((N, T, K))
        c = np.ones((N, T))
        loglik = np.zeros(N)
        cur = np.zeros((N, K))
        started = np.zeros(N, dtype=bool)
        has_prev = np.zeros((N, T), dtype=bool)
        for t in range(T):
            mt = m[:, t]
            pred = np.where(started[:, None], _rows_matvec(cur, A), pi[None, :])
            a = pred * b[:, t]
            ct = np.maximum(a.sum(axis=1), 1e-300)
            alpha_prev[:, t] = cur
            has_prev[:, t] = started & mt
            cur = np.where(mt[:, None], a / ct[:, None], cur)
            c[:, t] = np.where(mt, ct, 1.0)
            loglik += np.where(mt, np.log(ct) + shift[:, t, 0], 0.0)
            started |= mt
            alpha[:, t] = cur
        return alpha, b, c, loglik, alpha_prev, has_prev

    def _e_step(self, z: np.ndarray, m: np.ndarray):
        N, T, D = z.shape
        K = self.n_states
        A = self.transmat_
        logb = self._log_emission(z)
        alpha, b, c, loglik, alpha_prev, has_prev = self._forward(logb, m)

        # Backward pass: g = b_s * beta_s / c_s at the next valid step s; masked steps carry it unchanged.
        gamma = np.zeros((N, T, K))
        xi = np.zeros((K, K))
        g = np.zeros((N, K))
        has_next = np.zeros(N, dtype=bool)
        for t in range(T - 1, -1, -1):
            mt = m[:, t]
            beta = np.where(has_next[:, None], _rows_matvec(g, A.T), 1.0)
            gm = alpha[:, t] * beta
            gm /= np.maximum(gm.sum(axis=1, keepdims=True), 1e-300)
            gamma[:, t] = np.where(mt[:, None], gm, 0.0)
            g_t = b[:, t] * beta / c[:, t, None]
            w = has_prev[:, t].astype(np.float64)
            # xi summed over customers: sum_n alpha_prev[n,i] * g_t[n,j], times A[i,j]
            xi += np.einsum("ni,nj->ij", alpha_prev[:, t] * w[:, None], g_t)
            g = np.where(mt[:, None], g_t, g)
            has_next |= mt
        xi *= A
        first = np.argmax(m, axis=1)
        has_any = m.any(axis=1)
        start = gamma[np.arange(N), first][has_any].sum(axis=0)
        return float(loglik.sum()), (gamma, xi, start)

    def _m_step(self, z: np.ndarray, m: np.ndarray, suff) -> None:
        gamma, xi, start = suff
        K = self.n_states
        self.startprob_ = np.maximum(start / start.sum(), _PROB_FLOOR)
        self.startprob_ /= self.startprob_.sum()
        rows = xi.sum(axis=1, keepdims=True)
        # A state never left has no transition evidence: keep its row (any row is an M-step optimum then).
        A = np.where(rows > 0, xi / np.where(rows > 0, rows, 1.0), self.transmat_)
        A = np.maximum(A, _PROB_FLOOR)
        self.transmat_ = A / A.sum(axis=1, keepdims=True)
        occ = gamma.sum(axis=(0, 1))
        live = occ > 1e-8
        mu = np.einsum("ntk,ntd->kd", gamma, z) / np.where(live, occ, 1.0)[:, None]
        means = np.where(live[:, None], mu, self.means_)
        # Second pass around the new means (not E[z^2]-mu^2, which cancels badly).
        var = np.zeros((K, z.shape[2]))
        for k in range(K):
            var[k] = np.einsum("nt,ntd->d", gamma[:, :, k], (z - means[k]) ** 2)
        var = var / np.where(live, occ, 1.0)[:, None]
        self.vars_ = np.where(live[:, None], np.maximum(var, self.var_floor), self.vars_)
        self.means_ = means

    def _sort_states(self) -> None:
        """Relabel states in lexicographic order of their means (first observation dimension first)."""
        perm = np.lexsort(self.means_.T[::-1])
        self.means_ = self.means_[perm]
        self.vars_ = self.vars_[perm]
        self.startprob_ = self.startprob_[perm]
        self.transmat_ = self.transmat_[np.ix_(perm, perm)]

    # ------------------------------------------------------------------------------------------------------
    # inference
    # ------------------------------------------------------------------------------------------------------

    def _require_fitted(self) -> None:
        if self.means_ is None:
            raise RuntimeError("GaussianHMM is not fitted")

    def _standardise(self, X: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._require_fitted()
        x, m = _check(X, mask, self.means_.shape[1])
        return np.where(m[:, :, None], (x - self.scale_mean_) / self.scale_std_, 0.0), m

    def filter(self, X: np.ndarray, mask: np.ndarray, return_all: bool = False) -> np.ndarray:
        """Forward-filtered posteriors P(state at the last valid step | observations up to that step): (N, K).

        Forward pass only (no backward smoothing), so the result for a customer depends only on that
        customer's observations up to their last valid month. Customers with no valid step get ``startprob_``.
        With ``return_all`` returns (N, T, K): the filtered posterior after each step (carried over masked
        steps; ``startprob_`` before the first valid one).
        """
        z, m = self._standardise(X, mask)
        N, T, _ = z.shape
        K = self.n_states
        out = np.empty((N, T, K) if return_all else (N, K))
        step = max(1, _CHUNK_ELEMENTS // (T * K))
        for lo in range(0, N, step):
            sl = slice(lo, lo + step)
            alpha = self._forward(self._log_emission(z[sl]), m[sl])[0]
            started = np.cumsum(m[sl], axis=1) > 0
            alpha = np.where(started[:, :, None], alpha, self.startprob_)
            out[sl] = alpha if return_all else alpha[:, -1]
        return out

    def score(self, X: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per-sequence log-likelihood (N,) under the model (0 for a sequence with no valid step)."""
        z, m = self._standardise(X, mask)
        return self._forward(self._log_emission(z), m)[3]

    def dwell_months(self) -> np.ndarray:
        """Expected stay in each state, 1 / (1 - A_ss), capped at ``MAX_DWELL_MONTHS``: (K,)."""
        self._require_fitted()
        leave = 1.0 - np.diag(self.transmat_)
        return np.minimum(1.0 / np.maximum(leave, 1.0 / MAX_DWELL_MONTHS), MAX_DWELL_MONTHS)

    def transition_entropy(self) -> np.ndarray:
        """Entropy (nats) of each state's transition row: (K,)."""
        self._require_fitted()
        return _row_entropy(self.transmat_)

    # ------------------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (contiguous, fixed dtypes) for safetensors/npz storage and content hashing."""
        self._require_fitted()
        arr = {
            "n_states": np.array([self.n_states], dtype=np.int64),
            "seed": np.array([self.seed], dtype=np.int64),
            "var_floor": np.array([self.var_floor], dtype=np.float64),
            "startprob": self.startprob_,
            "transmat": self.transmat_,
            "means": self.means_,
            "vars": self.vars_,
            "scale_mean": self.scale_mean_,
            "scale_std": self.scale_std_,
            "loglik_history": np.asarray(self.loglik_history_, dtype=np.float64),
            "n_iter": np.array([self.n_iter_], dtype=np.int64),
            "converged": np.array([int(self.converged_)], dtype=np.int64),
        }
        return {k: np.ascontiguousarray(v, dtype=v.dtype) for k, v in arr.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GaussianHMM:
        """Inverse of :meth:`to_arrays`."""
        model = cls(int(arrays["n_states"][0]), int(arrays["seed"][0]), float(arrays["var_floor"][0]))
        model.startprob_ = np.asarray(arrays["startprob"], dtype=np.float64).copy()
        model.transmat_ = np.asarray(arrays["transmat"], dtype=np.float64).copy()
        model.means_ = np.asarray(arrays["means"], dtype=np.float64).copy()
        model.vars_ = np.asarray(arrays["vars"], dtype=np.float64).copy()
        model.scale_mean_ = np.asarray(arrays["scale_mean"], dtype=np.float64).copy()
        model.scale_std_ = np.asarray(arrays["scale_std"], dtype=np.float64).copy()
        model.loglik_history_ = [float(v) for v in np.asarray(arrays["loglik_history"]).ravel()]
        model.n_iter_ = int(arrays["n_iter"][0])
        model.converged_ = bool(arrays["converged"][0])
        return model


# ----------------------------------------------------------------------------------------------------------
# feature group
# ----------------------------------------------------------------------------------------------------------


def fit_hmm_modes(
    inputs: dict[str, tuple[np.ndarray, np.ndarray]], n_iter: int = 30, tol: float = 1e-4, base_seed: int = 0
) -> dict[str, GaussianHMM]:
    """Fit the three mode HMMs (sizes from ``HMM_MODES``, seeds from :func:`mode_seed`) on training sequences."""
    return {
        mode: GaussianHMM(k, seed=mode_seed(mode, base_seed)).fit(*inputs[mode], n_iter=n_iter, tol=tol)
        for mode, k in HMM_MODES
    }


def hmm_group_features(
    models: dict[str, GaussianHMM], inputs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """The 25 ``hmm_states`` columns (``HMM_COLUMNS`` order) for N customers: (N, 25) float64.

    Per mode: filtered posteriors p0..p{K-1}; then per mode: ``state`` = argmax of the filtered posterior (the
    no-look-ahead state, not a Viterbi path), ``dwell`` = posterior-weighted expected dwell of the current
    state, sum_s p_s / (1 - A_ss) capped at ``MAX_DWELL_MONTHS``, and ``trans_entropy`` = posterior-weighted
    entropy of the transition row, sum_s p_s H(A_s.). ``inputs[mode]`` = (X (N, T, D_mode), mask (N, T)) with
    the same N customers, in the same order, for every mode.
    """
    posts, tails, n = [], [], None
    for mode, k in HMM_MODES:
        model = models[mode]
        if model.n_states != k:
            raise ValueError(f"mode {mode!r} needs {k} states, model has {model.n_states}")
        X, mask = inputs[mode]
        p = model.filter(X, mask)
        if n is not None and p.shape[0] != n:
            raise ValueError("every mode's inputs must cover the same customers")
        n = p.shape[0]
        posts.append(p)
        tails.append(
            np.stack(
                [
                    p.argmax(axis=1).astype(np.float64),
                    (p * model.dwell_months()).sum(axis=1),
                    (p * model.transition_entropy()).sum(axis=1),
                ],
                axis=1,
            )
        )
    out = np.concatenate(posts + tails, axis=1)
    assert out.shape[1] == len(HMM_COLUMNS)
    return out
