"""The moving-digits data (numlstm.frames) and its plot: shapes, determinism, glyphs
wholly inside and moving, bouncing, the next-frame alignment, the errors, the PNG."""
import numpy as np
import pytest

from numlstm import frames as fr
from numlstm import plot


def _placement(frame, glyph):
    """(row, col) of the top-left corner where frame [S,S] is exactly glyph pasted on
    black, or None."""
    gh, gw = glyph.shape
    for r in range(frame.shape[0] - gh + 1):
        for c in range(frame.shape[1] - gw + 1):
            pasted = np.zeros_like(frame)
            pasted[r:r + gh, c:c + gw] = glyph
            if np.array_equal(frame, pasted):
                return r, c
    return None


def _track(seq, scale):
    """(digit, positions [T,2]) of a one-digit sequence [T,S,S,1], asserting that
    every frame is that digit's whole glyph placed inside."""
    first = seq[0, :, :, 0]
    digit = next((d for d in range(10)
                  if _placement(first, fr.digit_bitmap(d, scale)) is not None), None)
    assert digit is not None, "the first frame is no whole glyph"
    glyph = fr.digit_bitmap(digit, scale)
    positions = [_placement(frame, glyph) for frame in seq[..., 0]]
    assert None not in positions, f"digit {digit} is not whole in every frame"
    return digit, np.array(positions)


def test_font_glyphs_are_distinct_and_scale_by_blocks():
    glyphs = [fr.digit_bitmap(d) for d in range(10)]
    assert all(g.shape == (7, 5) and g.dtype == np.float32 for g in glyphs)
    assert len({g.tobytes() for g in glyphs}) == 10
    for d in range(10):
        big = fr.digit_bitmap(d, scale=3)
        assert big.shape == (21, 15) and set(np.unique(big)) <= {0.0, 1.0}
        assert np.array_equal(big[::3, ::3], glyphs[d])  # each block one font pixel
        assert big.sum() == 9 * glyphs[d].sum()


@pytest.mark.parametrize("n, T, size, digits, scale", [(3, 4, 9, 1, 1), (5, 6, 16, 2, 1),
                                                       (2, 3, 17, 3, 2)])
def test_shape_dtype_and_range(rng, n, T, size, digits, scale):
    f = fr.moving_digits(rng, n, T, size=size, digits=digits, scale=scale)
    assert f.shape == (n, T, size, size, 1) and f.dtype == np.float32
    assert f.min() >= 0 and f.max() <= 1
    assert (f.reshape(n, T, -1).max(axis=2) == 1).all()  # every frame shows something


def test_same_seed_same_frames_other_seed_other_frames():
    a = fr.moving_digits(np.random.default_rng(7), 4, 5, size=12, digits=2)
    b = fr.moving_digits(np.random.default_rng(7), 4, 5, size=12, digits=2)
    c = fr.moving_digits(np.random.default_rng(8), 4, 5, size=12, digits=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("T, size, scale", [(8, 13, 1), (60, 9, 1), (60, 15, 2)])
def test_one_digit_stays_whole_inside_and_moves(rng, T, size, scale):
    """Every frame is the digit's whole glyph, so its sum is the bitmap's; a long
    sequence in a small frame bounces many times and keeps it so."""
    f = fr.moving_digits(rng, 6, T, size=size, scale=scale)
    for i, seq in enumerate(f):
        digit, pos = _track(seq, scale)
        assert (seq.sum(axis=(1, 2, 3)) == fr.digit_bitmap(digit, scale).sum()).all()
        steps = np.abs(np.diff(pos, axis=0))
        assert (steps.max(axis=1) > 0).all(), f"sequence {i} stops: {pos.tolist()}"
        assert steps.max() <= fr.MAX_SPEED


@pytest.mark.parametrize("size", [8, 9, 12])
def test_bounce_reverses_direction_only_at_the_edges(rng, size):
    """With 1, 2 or 5 rows and 3, 4 or 7 columns of room, every digit moving along an
    axis turns within 12 steps, and only where the next step would leave the frame."""
    for seq in fr.moving_digits(rng, 20, 12, size=size):
        _, pos = _track(seq, 1)
        for axis, room in ((0, size - fr.GLYPH_H), (1, size - fr.GLYPH_W)):
            p = pos[:, axis]
            assert p.min() >= 0 and p.max() <= room
            d = np.diff(p)
            if (d != 0).any():
                assert (d > 0).any() and (d < 0).any(), p
            turns = np.nonzero(d[:-1] * d[1:] < 0)[0] + 1
            near_edge = np.minimum(p[turns], room - p[turns]) < fr.MAX_SPEED
            assert near_edge.all(), (p, turns)


def test_digits_combine_with_maximum(rng):
    f = fr.moving_digits(rng, 30, 4, size=10, digits=3)
    assert set(np.unique(f)) <= {0.0, 1.0}
    single = fr.digit_bitmap(8).sum()
    sums = f.sum(axis=(2, 3, 4))
    assert (sums <= 3 * single).all()
    assert (sums < 3 * single).any()  # three glyphs in a 10x10 frame must overlap


def test_next_frame_pairs_alignment(rng):
    f = fr.moving_digits(rng, 3, 7, size=11)
    x, y = fr.next_frame_pairs(f)
    assert x.shape == y.shape == (3, 6, 11, 11, 1)
    assert x.dtype == y.dtype == np.float32
    assert x.flags.c_contiguous and y.flags.c_contiguous
    for t in range(5):
        assert np.array_equal(y[:, t], x[:, t + 1])
    assert np.array_equal(x, f[:, :-1]) and np.array_equal(y[:, -1], f[:, -1])
    x64, _ = fr.next_frame_pairs(f.astype(np.float64))
    assert x64.dtype == np.float32


def test_copy_last_mse_and_mse(rng):
    x, y = fr.next_frame_pairs(fr.moving_digits(rng, 4, 6, size=12, digits=2))
    expected = np.mean((x.astype(np.float64) - y) ** 2)
    got = fr.copy_last_mse(x, y)
    assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-12)
    assert got > 0
    pred = rng.random(y.shape).astype(np.float32)
    assert fr.mse(pred, y) == pytest.approx(np.mean((pred.astype(np.float64) - y) ** 2),
                                            rel=1e-12)
    assert fr.mse(y, y) == 0.0
    assert fr.mse(np.ones(4), np.zeros(4)) == 1.0  # a mean over pixels, not a sum


@pytest.mark.parametrize("kwargs, error", [
    (dict(rng=0), TypeError),
    (dict(n=2.0), TypeError),
    (dict(T="5"), TypeError),
    (dict(size=True), TypeError),
    (dict(digits=1.5), TypeError),
    (dict(n=0), ValueError),
    (dict(T=1), ValueError),
    (dict(size=6), ValueError),
    (dict(size=13, scale=2), ValueError),
    (dict(digits=0), ValueError),
    (dict(scale=0), ValueError),
])
def test_moving_digits_errors(kwargs, error):
    args = dict(rng=np.random.default_rng(0), n=2, T=3, size=16, digits=1, scale=1)
    args.update(kwargs)
    with pytest.raises(error) as info:
        fr.moving_digits(**args)
    name = next(iter(kwargs))
    assert str(info.value).startswith(f"{name}: expected"), info.value
    assert repr(kwargs[name]) in str(info.value)


def test_other_errors():
    with pytest.raises(ValueError, match="d: expected an integer in 0..9, got 10"):
        fr.digit_bitmap(10)
    with pytest.raises(TypeError):
        fr.digit_bitmap("3")
    with pytest.raises(ValueError, match="scale"):
        fr.digit_bitmap(3, scale=0)
    with pytest.raises(ValueError, match="T >= 2"):
        fr.next_frame_pairs(np.zeros((2, 1, 4, 4, 1)))
    with pytest.raises(ValueError, match="shape"):
        fr.mse(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="non-empty"):
        fr.copy_last_mse(np.zeros((0, 3)), np.zeros((0, 3)))


def test_plot_frames_writes_a_png(rng, tmp_path):
    f = fr.moving_digits(rng, 2, 4, size=12)
    x, y = fr.next_frame_pairs(f)
    path = tmp_path / "frames.png"
    plot.frames(str(path), [("truth", y[0, ..., 0]), ("copy last", x[0])],
                [f"t+{t + 1}" for t in range(3)], suptitle="moving digits")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="rows\\[0\\]"):
        plot.frames(str(tmp_path / "bad.png"), [("truth", y[0])], ["t+1"])
    assert not (tmp_path / "bad.png").exists()
