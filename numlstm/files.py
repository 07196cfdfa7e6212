"""Writing files so that nothing is lost: one helper for checkpoints, ONNX files,
metrics and plots."""
import os


def write_atomically(path, write, previous=None):
    """Call write(f) on a temporary file beside path, flush and fsync it; then move
    an existing path to `previous` (when given), rename the temporary file to path
    and fsync the folder. On any error the temporary file is removed, and path (and
    previous) are as they were unless the renames had begun."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and os.path.exists(path):
            os.replace(path, previous)
        os.replace(tmp, path)
        fsync_folder(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def fsync_folder(folder):
    """Make a rename inside folder durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomically(path, text):
    """write_atomically for a text file (UTF-8)."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))
