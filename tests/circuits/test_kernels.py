"""The fused Pallas sum-layer kernel (interpret mode on CPU) against the einsum reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from circuits.kernels import default_backend, fused_log_matmul_exp
from circuits.layers import log_matmul_exp


@pytest.mark.parametrize("shape", [(2, 37, 5, 3), (1, 8, 16, 16)])
def test_fused_kernel_matches_reference_values_and_gradients(shape):
    folds, batch, width, outputs = shape
    key_h, key_w, key_g = jax.random.split(jax.random.key(0), 3)
    h = 4.0 * jax.random.normal(key_h, (folds, batch, width)) - 30.0  # far from 0: needs shifts
    log_w = jax.random.normal(key_w, (folds, outputs, width))
    h = h.at[0, 1].set(-jnp.inf)  # an impossible input row
    h = h.at[0, 2, 0].set(-jnp.inf)
    fused = np.asarray(fused_log_matmul_exp(h, log_w))
    naive = special.logsumexp(np.asarray(h, np.float64)[:, :, None, :]
                              + np.asarray(log_w, np.float64)[:, None, :, :], axis=-1)
    assert np.array_equal(np.isneginf(fused), np.isneginf(naive))
    finite = np.isfinite(naive)
    np.testing.assert_allclose(fused[finite], naive[finite], rtol=1e-6, atol=1e-5)
    cotangent = jax.random.normal(key_g, fused.shape)
    h_ok = h.at[0, 1].set(0.0)  # gradients of finite inputs

    def pull(fn):
        _, vjp = jax.vjp(fn, h_ok, log_w)
        return vjp(cotangent)

    for a, b in zip(pull(fused_log_matmul_exp), pull(log_matmul_exp), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_default_backend_is_einsum_on_cpu():
    if jax.default_backend() == "cpu":
        assert default_backend() == "einsum"
