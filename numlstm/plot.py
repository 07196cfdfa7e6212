"""PNG plots of a training run (matplotlib, drawn off-screen)."""
import numpy as np

from .files import write_atomically


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no screen needed; must precede the pyplot import
    import matplotlib.pyplot as plt
    return plt


def loss_curve(path, curves, xlabel, title, ylabel="loss"):
    """curves: {label: (x, y)}; y on a log scale when it is all positive, its ticks
    written as plain numbers (0.5, 2, 30), not as powers of ten."""
    plt = _pyplot()
    from matplotlib import ticker
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    positive, lo, hi = True, float("inf"), 0.0
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, marker="o" if len(x) < 40 else None, ms=3)
        positive &= all(v > 0 for v in y)
        lo, hi = min(lo, *y), max(hi, *y)
    if positive:
        ax.set_yscale("log")
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        # the minor ticks (2, 3, ... 9 times a power of ten) labelled too where the
        # curves span under two decades, so that a short axis still reads
        ax.yaxis.set_minor_formatter(plain if hi < 100 * lo else ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def forecast(path, t, truth, paths, title, ylabel, context=None, xlabel=None):
    """truth over t; paths: [(label, style, [(t_k, values_k), ...])] drawn over it,
    style a dict of matplotlib line options (color, ls);
    context: (t, values) drawn faintly before the evaluated span."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    if context is not None:
        ax.plot(*context, color="0.7", lw=1, label="history (training span)")
    ax.plot(t, truth, color="black", lw=1.2, label="truth")
    for label, style, segments in paths:
        for k, (tk, vk) in enumerate(segments):
            ax.plot(tk, vk, lw=1.3, label=label if k == 0 else None, **style)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def frames(path, rows, titles, suptitle=None):
    """A grid of grayscale frames: rows [(label, frames [T,H,W] in [0, 1])], one row
    each, labelled on the left; titles: the T column titles ("t+1", ...). A trailing
    channel of 1 ([T,H,W,1], as frames.moving_digits gives) is dropped."""
    T = len(titles)
    grids = []
    for r, (label, images) in enumerate(rows):
        images = np.asarray(images)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 or len(images) != T:
            raise ValueError(f"rows[{r}]: expected frames [T,H,W] with T = {T} (one per "
                             f"title), got shape {images.shape}")
        grids.append((label, images))
    plt = _pyplot()  # after the checks, so that a bad row leaves no figure open
    fig, axes = plt.subplots(len(rows), T, figsize=(1.1 * T + 0.6, 1.2 * len(rows) + 0.4),
                             dpi=110, squeeze=False)
    for r, (label, images) in enumerate(grids):
        for t, ax in enumerate(axes[r]):
            ax.imshow(images[t], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if r == 0:
                ax.set_title(titles[t], fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    _save(fig, path)


def attention(path, weights, source, output, title):
    """One attention map: weights [len(output), len(source)] in [0, 1], a row per
    output token, each cell labelled by its characters (source along the top)."""
    weights = np.asarray(weights)
    if weights.shape != (len(output), len(source)):
        raise ValueError(f"weights: expected shape ({len(output)}, {len(source)}) (outputs "
                         f"by sources), got {weights.shape}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(0.28 * len(source) + 1.6, 0.28 * len(output) + 1.4),
                           dpi=110)
    ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="equal")
    ax.set_xticks(range(len(source)), [repr(c)[1:-1] if c != " " else "\u2423"
                                       for c in source], fontsize=8)
    ax.set_yticks(range(len(output)), list(output), fontsize=8)
    ax.xaxis.tick_top()
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png"))
    import matplotlib.pyplot as plt
    plt.close(fig)
