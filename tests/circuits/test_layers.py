"""Folded layer kernels against naive log-sum-exp / max formulas (float64 numpy)."""

import jax
import numpy as np
from scipy import special

from circuits.layers import (
    cp_layer,
    log_matmul_exp,
    log_matmul_exp_vjp,
    max_plus_matmul,
    mixing_layer,
    tucker_layer,
)


def _random(key, shape, scale=3.0, offset=-50.0):
    return scale * jax.random.normal(jax.random.key(key), shape) + offset


def test_log_matmul_exp_and_max_plus():
    h, w = _random(0, (3, 5, 4)), _random(1, (3, 2, 4), offset=0.0)
    terms = np.asarray(h, np.float64)[:, :, None, :] + np.asarray(w, np.float64)[:, None]
    np.testing.assert_allclose(np.asarray(log_matmul_exp(h, w)), special.logsumexp(terms, -1),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(max_plus_matmul(h, w)), terms.max(-1), rtol=1e-6)


def test_log_matmul_exp_vjp_from_the_output():
    # The softmax derivative in float64 numpy, with a batch row of no mass (all -inf: no
    # cotangent) and a weight of -inf (zero gradient), against the helper and JAX's VJP.
    h = np.array(_random(2, (3, 5, 4)))
    h[1, 2] = -np.inf
    w = np.array(_random(3, (3, 2, 4), offset=0.0))
    w[0, 1, 3] = -np.inf
    cotangent = np.asarray(jax.random.normal(jax.random.key(4), (3, 5, 2)), np.float64)
    h64, w64 = h.astype(np.float64), w.astype(np.float64)
    terms = h64[:, :, None, :] + w64[:, None]  # (F, B, O, J)
    out = special.logsumexp(terms, -1)
    with np.errstate(invalid="ignore"):
        weights = np.where(np.isfinite(out)[..., None], np.exp(terms - out[..., None]), 0.0)
    expected_h = np.einsum("fbo,fboj->fbj", cotangent, weights)
    expected_w = np.einsum("fbo,fboj->foj", cotangent, weights)
    ct_h, ct_w = log_matmul_exp_vjp(h, w, log_matmul_exp(h, w), cotangent.astype(np.float32))
    np.testing.assert_allclose(np.asarray(ct_h), expected_h, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(ct_w), expected_w, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(ct_h)[1, 2] == 0.0) and np.asarray(ct_w)[0, 1, 3] == 0.0
    _, vjp = jax.vjp(log_matmul_exp, h, w)
    for ours, jax_own in zip((ct_h, ct_w), vjp(cotangent.astype(np.float32)), strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(jax_own), rtol=1e-5, atol=1e-7)


def test_cp_tucker_and_mixing_layers():
    a, b, c = (_random(i, (2, 3, 4)) for i in range(3))
    w_cp = _random(5, (2, 3, 4), offset=0.0)
    product = np.asarray(a + b + c, np.float64)
    expected = special.logsumexp(product[:, :, None, :] + np.asarray(w_cp)[:, None], -1)
    np.testing.assert_allclose(np.asarray(cp_layer([a, b, c], w_cp)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cp_layer([a, b, c], w_cp, "max")),
                               (product[:, :, None, :] + np.asarray(w_cp)[:, None]).max(-1),
                               rtol=1e-6)
    w_t = _random(6, (2, 3, 16), offset=0.0)
    kron = (np.asarray(a, np.float64)[..., :, None] + np.asarray(b, np.float64)[..., None, :])
    kron = kron.reshape(2, 3, 16)
    terms = kron[:, :, None, :] + np.asarray(w_t, np.float64)[:, None]
    np.testing.assert_allclose(np.asarray(tucker_layer(a, b, w_t)), special.logsumexp(terms, -1),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tucker_layer(a, b, w_t, "max")), terms.max(-1),
                               rtol=1e-6)
    w_mix = _random(7, (2, 4, 3), offset=0.0)  # (M, K, P)
    stacked = np.stack([np.asarray(x, np.float64) for x in (a, b, c)], -1)  # (M, B, K, P)
    terms = stacked + np.asarray(w_mix, np.float64)[:, None]
    np.testing.assert_allclose(np.asarray(mixing_layer([a, b, c], w_mix)),
                               special.logsumexp(terms, -1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mixing_layer([a, b, c], w_mix, "max")), terms.max(-1),
                               rtol=1e-6)
