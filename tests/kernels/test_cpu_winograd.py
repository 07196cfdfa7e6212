"""Winograd's F(2x2, 3x3) form of the ConvLSTM's step (kernels/cpu/winograd.py), piece
by piece against NumPy: the transforms' identity (a tile of a 3x3 correlation), the
input transform of every tile of a frame (patches past the edges, channels in
vectors and one at a time), the output transform, and the packed weights. The
whole form against the reference is in test_cpu_convlstm.py."""
import numpy as np
import pytest

from numlstm.kernels.conv import convlstm_convs
from numlstm.kernels.cpu import winograd
from numlstm.kernels.cpu.microkernel import CB, LANES
from numlstm.kernels.cpu.winograd import AT, BT, G, TILES


def _correlate(d, g):
    """The 2x2 'valid' correlation of a 4x4 patch with a 3x3 kernel."""
    return np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(2)] for i in range(2)])


def test_the_transforms_give_a_tile_of_the_correlation(rng):
    for _ in range(5):
        d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
        tile = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
        np.testing.assert_allclose(tile, _correlate(d, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("ch", [1, LANES, LANES + 3])
def test_input_transform_of_every_tile(rng, padding, ch):
    """U[j, 4a + b, col0 + c] = (B^T d B)[a, b] for tile (ty, tx0 + j), d the patch
    of channel c with zeros past the frame (7 x 9 frames: tiles past both edges)."""
    B, R, C, b = 2, 7, 9, 1
    src = rng.standard_normal((B * R * C, ch)).astype(np.float32)
    geo = convlstm_convs((3, 3), (3, 3), 1, (1, B, R, C, ch), (1, 1), padding, (1, 1))[0]
    pt, pl, Ro, Co = geo[6], geo[7], geo[10], geo[11]
    frame = np.zeros((R + 8, C + 8, ch))
    frame[4:4 + R, 4:4 + C] = src.reshape(B, R, C, ch)[b]
    col0, tx0 = 2, 1
    ntiles = (Co + 1) // 2 - tx0
    U = np.full((TILES, 16, col0 + ch + 1), np.nan, np.float32)
    D = np.empty((2, 16, ch), np.float32)
    for ty in range((Ro + 1) // 2):
        winograd.tile_inputs(src, geo, b, ty, tx0, ntiles, U, col0, D)
        for j in range(ntiles):
            y0, x0 = 2 * ty - pt + 4, 2 * (tx0 + j) - pl + 4
            for c in range(ch):
                want = BT @ frame[y0:y0 + 4, x0:x0 + 4, c] @ BT.T
                np.testing.assert_allclose(U[j, :, col0 + c].reshape(4, 4), want, rtol=1e-6,
                                           atol=1e-6)
        assert np.isnan(U[:, :, :col0]).all() and np.isnan(U[:, :, col0 + ch:]).all()
        assert np.isnan(U[ntiles:]).all()


def test_output_transform_and_bias(rng):
    ntiles, nblk, blk = 5, 2, 1
    M = rng.standard_normal((TILES, 16, CB)).astype(np.float32)
    bias = rng.standard_normal((1, nblk * CB)).astype(np.float32)
    z = np.full((4 * TILES, nblk * CB), np.nan, np.float32)
    winograd.tile_outputs(M, bias, blk, ntiles, CB, z)
    cols = slice(blk * CB, (blk + 1) * CB)
    for j in range(ntiles):
        for col in range(CB):
            want = AT @ M[j, :, col].astype(np.float64).reshape(4, 4) @ AT.T + bias[0, cols][col]
            got = [[z[dy * 2 * TILES + 2 * j + dx, cols][col] for dx in range(2)]
                   for dy in range(2)]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.isnan(z[:, :blk * CB]).all()
    assert np.isnan(z[2 * ntiles:2 * TILES]).all() and np.isnan(z[2 * TILES + 2 * ntiles:]).all()


def test_packed_weights_are_the_transformed_kernels(rng):
    """V[4a + b, blk, c, col] = (G g G^T)[a, b] for the 3x3 kernel g of channel c (x's
    channels, then h's) and gate column blk * CB + col."""
    I, F, Gp = 2, 3, CB
    stacked = rng.standard_normal((9 * I + 9 * F, Gp)).astype(np.float32)
    V = winograd.winograd_weights(stacked, I, F)
    assert V.shape == (16, 1, I + F, CB) and V.dtype == np.float32
    kernels = np.concatenate([stacked[:9 * I].reshape(3, 3, I, Gp),
                              stacked[9 * I:].reshape(3, 3, F, Gp)], axis=2)
    for c in range(I + F):
        for col in (0, 17, CB - 1):
            want = G @ kernels[:, :, c, col].astype(np.float64) @ G.T
            np.testing.assert_allclose(V[:, 0, c, col].reshape(4, 4), want, rtol=1e-6)


def test_applies_only_where_the_form_holds():
    assert winograd.applies((3, 3), (3, 3), (1, 1), (1, 1), np.float32)
    assert not winograd.applies((3, 3), (3, 3), (1, 1), (1, 1), np.float64)
    assert not winograd.applies((3, 3), (3, 3), (2, 1), (1, 1), np.float32)
    assert not winograd.applies((3, 3), (3, 3), (1, 1), (1, 2), np.float32)
    assert not winograd.applies((5, 5), (3, 3), (1, 1), (1, 1), np.float32)
    assert not winograd.applies((3, 3), (1, 1), (1, 1), (1, 1), np.float32)


def test_the_gradient_transforms_give_the_kernels_gradient(rng):
    """d<dy, tile(d, g)>/dg = G^T [(B^T d B) . (A dy A^T)] G, A = AT^T: what
    gradient_weights computes from the summed products of tile_gradients' dM."""
    for _ in range(5):
        d, dy = rng.standard_normal((4, 4)), rng.standard_normal((2, 2))
        want = np.array([[(d[i:i + 2, j:j + 2] * dy).sum() for j in range(3)]
                         for i in range(3)])  # d/dg of sum(dy * _correlate(d, g))
        got = G.T @ ((BT @ d @ BT.T) * (AT.T @ dy @ AT)) @ G
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    I, F = 1, 2
    dV = rng.standard_normal((16, I + F, 2 * CB)).astype(np.float32)
    dW = winograd.gradient_weights(dV, I, F)
    assert dW.shape == (9 * (I + F), 2 * CB)
    for c, col in ((0, 5), (2, CB + 1)):
        want = G.T @ dV[:, c, col].astype(np.float64).reshape(4, 4) @ G
        # the gather's rows: (ky, kx, i) for x's channels, then (ky, kx, f) for h's
        rows = [k * I + c if c < I else 9 * I + k * F + c - I for k in range(9)]
        np.testing.assert_allclose(dW[rows, col].reshape(3, 3), want, rtol=1e-5, atol=1e-5)


def test_gradient_transform_of_every_tile(rng):
    """dM[j, 4a + b] = (A dZ A^T)[a, b] of each tile's 2x2 rows of dz, zeros past the
    frame (5 x 7 frames: tiles past both edges)."""
    B, Ro, Co, Gp, b = 2, 5, 7, 2 * CB, 1
    dz = rng.standard_normal((B * Ro * Co, Gp)).astype(np.float32)
    geo = convlstm_convs((3, 3), (3, 3), 1, (1, B, Ro, Co, 1), (1, 1), "same", (1, 1))[0]
    frame = np.zeros((Ro + 1, Co + 1, Gp))
    frame[:Ro, :Co] = dz.reshape(B, Ro, Co, Gp)[b]
    for ty in range((Ro + 1) // 2):
        dM = np.full((TILES, 16, 2, CB), np.nan, np.float32)
        winograd.tile_gradients(dz, geo, b, ty, 0, Co, np.zeros(Gp, np.float32), dM)
        for j in range((Co + 1) // 2):
            for col in (0, 7, CB + 3, Gp - 1):
                dZ = frame[2 * ty:2 * ty + 2, 2 * j:2 * j + 2, col]
                np.testing.assert_allclose(dM[j, :, col // CB, col % CB].reshape(4, 4),
                                           AT.T @ dZ @ AT, rtol=1e-6, atol=1e-6)
        assert np.isnan(dM[(Co + 1) // 2:]).all()
