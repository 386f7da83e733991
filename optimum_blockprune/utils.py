"""Small shared helpers: atomic file writes and progress bars."""

from __future__ import annotations

import os
import tempfile


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and an atomic rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def progress_bar(iterable=None, *, total=None, desc=None, enabled=True, unit="it"):
    """A tqdm bar from huggingface_hub's wrapper, so `HF_HUB_DISABLE_PROGRESS_BARS=1` silences it too."""
    from huggingface_hub.utils import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled or None, unit=unit)
