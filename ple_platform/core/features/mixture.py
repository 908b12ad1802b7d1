"""Gaussian mixture clustering (feature group ``gmm_clustering``).

Fitted with scikit-learn's EM (full covariances, k-means++ init, several restarts) on standardised inputs
from training months; scoring is re-implemented in numpy from the stored parameters so no estimator is
pickled and any stored fit can be re-scored exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture


def fit_gmm(x: np.ndarray, n_components: int, seed: int, n_init: int = 3) -> dict[str, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    gm = GaussianMixture(n_components, covariance_type="full", n_init=n_init, max_iter=200, reg_covar=1e-4, random_state=seed)
    gm.fit((x - mean) / std)
    return {
        "scale_mean": mean,
        "scale_std": std,
        "weights": gm.weights_,
        "means": gm.means_,
        "precisions_cholesky": gm.precisions_cholesky_,
    }


def gmm_log_resp(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (x - arrays["scale_mean"]) / arrays["scale_std"]
    pc, mu = arrays["precisions_cholesky"], arrays["means"]
    d = z.shape[1]
    # log N(z | mu_k, Sigma_k) with Sigma_k^-1 = L_k L_k^T: -d/2 log 2pi + log|L_k| - |(z - mu_k) L_k|^2 / 2
    y = np.einsum("nd,kde->nke", z, pc) - np.einsum("kd,kde->ke", mu, pc)[None]
    log_det = np.log(np.abs(np.diagonal(pc, axis1=1, axis2=2))).sum(axis=1)
    log_prob = -0.5 * d * np.log(2 * np.pi) + log_det[None] - 0.5 * (y**2).sum(axis=2) + np.log(arrays["weights"])[None]
    return log_prob - logsumexp(log_prob, axis=1, keepdims=True)


def gmm_features(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """(N, K + 2): posteriors, most likely cluster id, posterior entropy."""
    log_resp = gmm_log_resp(arrays, x)
    resp = np.exp(log_resp)
    entropy = -(resp * log_resp).sum(axis=1)
    return np.concatenate([resp, resp.argmax(axis=1)[:, None], entropy[:, None]], axis=1)
