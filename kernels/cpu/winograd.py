"""The ConvLSTM's convolutions in Winograd's F(2x2, 3x3) form (float32, 3x3 kernels,
stride 1, no dilation): the step's two in the forward, and in the backward dh (the
recurrent one's transpose) and the weight gradients (kernels/cpu/convlstm.py).

A 2x2 tile of output pixels reads a 4x4 patch d of each source (x_t and h). With
the transforms B^T, G and A^T of Lavin and Gray (2015), the tile of a 3x3
correlation with weights g is A^T [(G g G^T) . (B^T d B)] A: 16 products a tile
and channel, where the direct form takes 36 (2.25x fewer multiply-adds). Summed
over channels, each of the 16 positions xi = (a, b) of the transformed tile is a
matrix product: M[xi] [tiles, Gp] = U[xi] [tiles, I+F] @ V[xi] [I+F, Gp], with
U = B^T d B per tile and channel (tile_inputs) and V = G g G^T per channel and
gate column (winograd_weights, at packing). tile_outputs then takes each tile's
16 values of M back to its 2x2 pixels (A^T M A) and adds the bias.

The backward takes the same forms. dh of the step before is a "same" correlation
of dz with the recurrent kernel flipped (transposed_weights, tile_rows_transposed):
each task then writes only its own pixels. The weight gradients are, by the
transposition principle, dg = G^T [sum over tiles of U . (A dZ A^T)] G: 16
products U[xi]^T @ dM[xi] summed over the steps' tiles (tile_gradients makes dM
from dz), then one transform at the end (gradient_weights).

The transforms add and subtract (G halves), so a value differs from the direct
form's sum by a few roundings of the tile's partial sums: the kernels' tests hold
it to the reference as they hold the direct form.

A task is two rows of output pixels, of up to 2 * TILES columns: its U, M (one
column block of CB at a time) and rows of pre-activations stay in a thread's L2.
Dimensions as convlstm.py's; Kc = I + F channels (x's first, then h's).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .jit import FAST
from .microkernel import CB, LANES, address, tile_cols

TILES = 32  # tiles of a task (2 x 64 output pixels)
KW = 64     # rows of V a product's chunk (16 KiB of a column block)

# Lavin and Gray's F(2, 3): y = A^T [(G g) * (B^T d)]; a 2-D tile applies each on both axes.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def _vectors(builder):
    """(load(address, offset), store(value, address, offset)) of LANES float32 at
    byte address + 4 * offset (offsets in elements, i64 values)."""
    vec = ir.VectorType(ir.FloatType(), LANES)

    def at(base, offset):
        byte = builder.add(base, builder.mul(offset, ir.Constant(ir.IntType(64), 4)))
        return builder.inttoptr(byte, vec.as_pointer())

    def load(base, offset):
        return builder.load(at(base, offset), align=4)

    def store(value, base, offset):
        builder.store(value, at(base, offset), align=4)
    return load, store


def _offsets(builder, first, second, n1, n2):
    """first * i + second * j for i < n1, j < n2, row-major (i64 values)."""
    i64 = ir.IntType(64)
    return [builder.add(builder.mul(first, ir.Constant(i64, i)),
                        builder.mul(second, ir.Constant(i64, j)))
            for i in range(n1) for j in range(n2)]


@intrinsic
def _input_vector(typingctx, src, row, px, u, u_xi):
    """LANES channels of one tile: U[4a + b] = (B^T d B)[a, b], d[i, j] the vector at
    src + 4 * (i * row + j * px), U[xi] stored at u + 4 * xi * u_xi (addresses in
    bytes, strides in elements). Vectors, not a Numba loop over channels: there
    LLVM did not vectorise (the 16 loads and 16 stores would need more checks
    that they do not overlap than it makes)."""
    def codegen(context, builder, signature, args):
        src, row, px, u, u_xi = args
        load, store = _vectors(builder)
        d = [load(src, o) for o in _offsets(builder, row, px, 4, 4)]
        e = [None] * 16
        for j in range(4):  # B^T d
            d0, d1, d2, d3 = d[j], d[4 + j], d[8 + j], d[12 + j]
            e[j], e[4 + j] = builder.fsub(d0, d2), builder.fadd(d1, d2)
            e[8 + j], e[12 + j] = builder.fsub(d2, d1), builder.fsub(d1, d3)
        out = _offsets(builder, u_xi, u_xi, 1, 16)
        for a in range(4):  # (B^T d) B
            t0, t1, t2, t3 = e[4 * a:4 * a + 4]
            for b, v in enumerate((builder.fsub(t0, t2), builder.fadd(t1, t2),
                                   builder.fsub(t2, t1), builder.fsub(t1, t3))):
                store(v, u, out[4 * a + b])
        return context.get_dummy_value()
    return types.void(*([types.int64] * 5)), codegen


@intrinsic
def _output_vector(typingctx, m, m_xi, z, z_row, z_dy, bias):
    """LANES gate columns of one tile: out[dy, dx] = (A^T M A)[dy, dx] + bias, M[xi] the
    vector at m + 4 * xi * m_xi, bias the one at bias; out[dy, dx] stored at z + 4 *
    (dy * z_dy + dx * z_row) (addresses in bytes, strides in elements). (As
    _input_vector: 16 loads and 4 stores that LLVM left scalar as a loop.)"""
    def codegen(context, builder, signature, args):
        m, m_xi, z, z_row, z_dy, bias = args
        load, store = _vectors(builder)
        M = [load(m, o) for o in _offsets(builder, m_xi, m_xi, 1, 16)]
        add, sub = builder.fadd, builder.fsub
        s = [add(add(M[4 * a], M[4 * a + 1]), M[4 * a + 2]) for a in range(4)]
        r = [sub(sub(M[4 * a + 1], M[4 * a + 2]), M[4 * a + 3]) for a in range(4)]
        b = load(bias, ir.Constant(ir.IntType(64), 0))
        out = _offsets(builder, z_dy, z_row, 2, 2)
        store(add(add(add(s[0], s[1]), s[2]), b), z, out[0])
        store(add(add(add(r[0], r[1]), r[2]), b), z, out[1])
        store(add(sub(sub(s[1], s[2]), s[3]), b), z, out[2])
        store(add(sub(sub(r[1], r[2]), r[3]), b), z, out[3])
        return context.get_dummy_value()
    return types.void(*([types.int64] * 6)), codegen


@intrinsic
def _gradient_vector(typingctx, d00, d01, d10, d11, out, out_xi):
    """LANES gate columns of one tile's gradient: dM[4a + b] = (A dZ A^T)[a, b] (A =
    AT^T, 4 x 2) of the 2x2 tile dZ whose vectors are at d00 .. d11, stored at out +
    4 * xi * out_xi (addresses in bytes, strides in elements)."""
    def codegen(context, builder, signature, args):
        d00, d01, d10, d11, out, out_xi = args
        load, store = _vectors(builder)
        zero = ir.Constant(ir.IntType(64), 0)
        d = [load(a, zero) for a in (d00, d01, d10, d11)]
        add, sub, neg = builder.fadd, builder.fsub, builder.fneg

        def expand(u, v):  # A (u, v): (u, u + v, u - v, -v)
            return [u, add(u, v), sub(u, v), neg(v)]
        cols = [expand(d[0], d[1]), expand(d[2], d[3])]  # along each row dy
        offsets = _offsets(builder, out_xi, out_xi, 1, 16)
        for b in range(4):  # then along the rows
            for a, v in enumerate(expand(cols[0][b], cols[1][b])):
                store(v, out, offsets[4 * a + b])
        return context.get_dummy_value()
    return types.void(*([types.int64] * 6)), codegen


def applies(kernel, rec_kernel, strides, dilation, dtype):
    """Whether a ConvLSTM's step runs in this form: float32, both kernels 3x3, the
    input convolution of stride 1 and no dilation (the recurrent one always is)."""
    return (np.dtype(dtype) == np.float32 and tuple(kernel) == (3, 3)
            and tuple(rec_kernel) == (3, 3) and tuple(strides) == (1, 1)
            and tuple(dilation) == (1, 1))


def winograd_weights(stacked, I, F):
    """stacked [9*I + 9*F, Gp] (both convolutions' weights in gate columns, rows in
    the gather's order: (ky, kx, i), then (ky, kx, f)) -> V [16, Gp/CB, I+F, CB]:
    G g G^T for each channel and gate column, in column blocks, float32 (made in
    float64)."""
    Gp = stacked.shape[1]
    return transformed(np.concatenate([stacked[:9 * I].reshape(3, 3, I, Gp),
                                       stacked[9 * I:].reshape(3, 3, F, Gp)], axis=2))


def transposed_weights(stacked, I, F):
    """The recurrent convolution's transpose, which takes dz [N, Gp] to dh [N, F]: a
    "same" 3x3 correlation of dz with the kernel flipped, g'[ky, kx, col, f] =
    g[2 - ky, 2 - kx, f, col] -> V [16, ceil(F/CB), Gp, CB] (transformed)."""
    Gp = stacked.shape[1]
    g = stacked[9 * I:].reshape(3, 3, F, Gp)[::-1, ::-1].transpose(0, 1, 3, 2)
    return transformed(g)


def transformed(g):
    """g [3, 3, K, N] (a kernel from K channels to N columns) -> G g G^T for each
    channel and column, [16, ceil(N/CB), K, CB] in column blocks (zeros past N),
    float32 (made in float64)."""
    K, N = g.shape[2:]
    nblk = -(-N // CB)
    V = np.zeros((4, 4, K, nblk * CB))
    # (two tensordots, not one einsum, which NumPy ran as plain loops: the packing at
    # 64 filters, done every training step, took 9 ms with it, 5 with these)
    V[:, :, :, :N] = np.tensordot(G, np.tensordot(G, g.astype(np.float64), (1, 0)),
                                  (1, 1)).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(V.reshape(16, K, nblk, CB).transpose(0, 2, 1, 3), np.float32)


@njit(inline="always", **FAST)
def task_count(B, Ro, Co):
    """A step's tasks in this form: each frame's pairs of output rows, in runs of up
    to 2 * TILES columns."""
    return B * (-(-Ro // 2)) * (-(-Co // (2 * TILES)))


@njit(inline="always", **FAST)
def task_rows(task, Ro, Co):
    """Task `task`'s frame b, pair of output rows (2ty, 2ty + 1) and columns [x0, x1)."""
    chunks = -(-Co // (2 * TILES))
    b, rest = divmod(np.int64(task), (-(-Ro // 2)) * chunks)  # (prange's index: unsigned)
    ty, k = divmod(rest, chunks)
    return b, ty, k * 2 * TILES, min((k + 1) * 2 * TILES, Co)


@njit(**FAST)
def tile_inputs(src, geo, b, ty, tx0, ntiles, U, col0, D):
    """U[j, 4a+b', col0 + c] = (B^T d B)[a, b'] for the 4x4 patch d of src's channel c
    under output tile (ty, tx0 + j) of frame b, j < ntiles. src [B*R*C, ch]
    (C-contiguous); geo the convolution (kernels/conv.py; the patch starts at (2ty -
    pt, 2tx - pl), zeros outside the frame); D [2, 16, >= ch] scratch: a patch
    that reaches past the frame is copied there first, with its zeros."""
    R, C, ch, pt, pl = geo[8], geo[9], geo[12], geo[6], geo[7]
    flat, pad = src.reshape(-1), D[0].reshape(-1)
    u_tile, u_xi = U.strides[0] // 4, U.strides[1] // 4
    vec = ch - ch % LANES  # channels the vectors take; the rest go one at a time
    y0 = 2 * ty - pt
    for j in range(ntiles):
        x0 = 2 * (tx0 + j) - pl
        if y0 >= 0 and y0 + 4 <= R and x0 >= 0 and x0 + 4 <= C:
            arr, at, row, px = flat, max(((b * R + y0) * C + x0) * ch, 0), C * ch, ch
        else:
            for i in range(16):
                yy, xx = y0 + i // 4, x0 + i % 4
                if 0 <= yy < R and 0 <= xx < C:
                    s = max(((b * R + yy) * C + xx) * ch, 0)  # (no wrap-around check)
                    for c in range(ch):
                        D[0, i, c] = flat[s + c]
                else:
                    for c in range(ch):
                        D[0, i, c] = 0
            arr, at, row, px = pad, 0, 4 * D.shape[2], D.shape[2]
        u = address(U) + 4 * (j * u_tile + col0)
        for c in range(0, vec, LANES):
            _input_vector(address(arr) + 4 * (at + c), row, px, u + 4 * c, u_xi)
        for c in range(vec, ch):  # the same sums, one channel at a time
            e = D[1]
            for jj in range(4):  # B^T d
                d0, d1 = arr[at + jj * px + c], arr[at + row + jj * px + c]
                d2, d3 = arr[at + 2 * row + jj * px + c], arr[at + 3 * row + jj * px + c]
                e[jj, 0], e[4 + jj, 0] = d0 - d2, d1 + d2
                e[8 + jj, 0], e[12 + jj, 0] = d2 - d1, d1 - d3
            for a in range(4):  # (B^T d) B
                t0, t1, t2, t3 = e[4 * a, 0], e[4 * a + 1, 0], e[4 * a + 2, 0], e[4 * a + 3, 0]
                U[j, 4 * a, col0 + c], U[j, 4 * a + 1, col0 + c] = t0 - t2, t1 + t2
                U[j, 4 * a + 2, col0 + c], U[j, 4 * a + 3, col0 + c] = t2 - t1, t1 - t3


@njit(**FAST)
def tile_outputs(M, bias, blk, ntiles, cols, z):
    """z[dy * 2*TILES + 2j + dx, blk*CB + col] = (A^T M A)[dy, dx] + bias for tile j's
    column col < cols (rounded up to a vector) of block blk. M [>= ntiles, 16, CB].
    All four pixels of every tile are written, those past the frame's edge too (z
    has the rows; nothing reads them)."""
    m_tile, m_xi, z_row = M.strides[0] // 4, M.strides[1] // 4, z.strides[0] // 4
    m, zz, bb = address(M), address(z) + 4 * blk * CB, address(bias) + 4 * blk * CB
    for j in range(ntiles):
        for col in range(0, cols, LANES):
            _output_vector(m + 4 * (j * m_tile + col), m_xi, zz + 4 * (2 * j * z_row + col), z_row,
                           2 * TILES * z_row, bb + 4 * col)


@njit(**FAST)
def _products_and_outputs(U, V, bias, zero, ntiles, cols, M, z):
    """z's rows of the tiles (tile_outputs) from U [TILES, 16, K] and V [16, nblk, K,
    CB]: the 16 products of each column block, then its output transform; columns
    up to cols. The products walk K in chunks of about KW rows, so that a chunk of
    V[xi]'s block stays in L1 across the row tiles (the backward's dh has K = Gp:
    a 64 KiB block at 64 filters, streamed from L2 by each of a task's 6 row tiles)."""
    K = U.shape[2]
    chunks = -(-K // KW)
    for blk in range(V.shape[1]):
        n = -(-min(cols - blk * CB, CB) // LANES) * LANES
        for xi in range(16):
            A, W, out = U[:, xi], V[xi, blk:blk + 1], M[:, xi]
            for q in range(chunks):
                k0, k1 = q * K // chunks, (q + 1) * K // chunks
                if q == 0:
                    tile_cols(A, W, out, 0, 0, ntiles, zero, False, k0, k1, n)
                else:  # later chunks add to what the earlier left in out
                    tile_cols(A, W, out, 0, 0, ntiles, out, True, k0, k1, n)
        tile_outputs(M, bias, blk, ntiles, n, z)


@njit(**FAST)
def tile_rows(x_t, h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U, M, D, z):
    """The pre-activations of output rows 2ty and 2ty + 1, columns [x0, x1) (x0
    even), of frame b: z[dy * 2*TILES + x - x0] = bias + both convolutions there
    (and values past the frame's edge in the rows after, unread). x_t [B*R*C, I],
    h_in [N, F]; gx, gh the convolutions; V [16, nblk, I+F, CB]; zero [1, CB] zeros;
    U [TILES, 16, I+F], M [TILES, 16, CB], D [2, 16, max(I, F)] scratch."""
    ntiles = (x1 - x0 + 1) // 2
    tile_inputs(x_t, gx, b, ty, x0 // 2, ntiles, U, 0, D)
    tile_inputs(h_in, gh, b, ty, x0 // 2, ntiles, U, gx[12], D)
    _products_and_outputs(U, V, bias, zero, ntiles, V.shape[1] * CB, M, z)


@njit(**FAST)
def tile_rows_transposed(dz, gz, Vt, zero, cols, b, ty, x0, x1, U, M, D, z):
    """tile_rows for the recurrent convolution's transpose: z[dy * 2*TILES + x - x0,
    :cols] = dh of those pixels from dz [N, Gp] (gz: the recurrent convolution with
    Gp channels; Vt: transposed_weights; zero [1, >= Vt's columns] zeros, also the
    bias; D [2, 16, >= Gp])."""
    ntiles = (x1 - x0 + 1) // 2
    tile_inputs(dz, gz, b, ty, x0 // 2, ntiles, U, 0, D)
    _products_and_outputs(U, Vt, zero, zero, ntiles, cols, M, z)


@njit(inline="always", **FAST)
def _pixel_row(base, row, zero, b, y, x, Ro, Co):
    """The address of pixel (y, x)'s row of frame b, or of the zeros past the frame."""
    return base + row * ((b * Ro + y) * Co + x) if y < Ro and x < Co else zero


@njit(**FAST)
def tile_gradients(dz, geo, b, ty, x0, x1, zeros, dM):
    """dM[j, 4a + b', :] = (A dZ A^T)[a, b'] for each tile j of output rows 2ty, 2ty + 1
    and columns [x0, x1) of frame b, dZ its 2x2 pixels' rows of dz [N, Gp] (zeros,
    a row of Gp zeros, for pixels past the frame's edge); dM [TILES, 16, Gp/CB, CB]."""
    Ro, Co = geo[10], geo[11]
    base, zero, row = address(dz), address(zeros), dz.strides[0]
    m_tile, m_xi = dM.strides[0] // 4, dM.strides[1] // 4
    y = 2 * ty
    for j in range((x1 - x0 + 1) // 2):
        x = x0 + 2 * j
        a00 = _pixel_row(base, row, zero, b, y, x, Ro, Co)
        a01 = _pixel_row(base, row, zero, b, y, x + 1, Ro, Co)
        a10 = _pixel_row(base, row, zero, b, y + 1, x, Ro, Co)
        a11 = _pixel_row(base, row, zero, b, y + 1, x + 1, Ro, Co)
        out = address(dM) + 4 * j * m_tile
        for col in range(0, dz.shape[1], LANES):
            c = 4 * col
            _gradient_vector(a00 + c, a01 + c, a10 + c, a11 + c, out + c, m_xi)


def gradient_weights(dV, I, F):
    """The summed dV [16, I+F, Gp] of the Winograd-form weight gradients -> dW [9*I +
    9*F, Gp] in the gather's row order (what the direct form's weight gradients
    give): G^T dV G for each channel and gate column."""
    Gp = dV.shape[2]
    g = np.tensordot(G, np.tensordot(G, dV.reshape(4, 4, I + F, Gp).astype(np.float64),
                                     (0, 0)), (0, 1)).transpose(1, 0, 2, 3)
    return np.concatenate([g[:, :, :I].reshape(9 * I, Gp), g[:, :, I:].reshape(9 * F, Gp)])
