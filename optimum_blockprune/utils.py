"""Small shared helpers: atomic file writes and progress bars."""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_file_mode() -> int:
    """0o666 less the process umask: what `open(path, "w")` would give (mkstemp gives 0o600)."""
    return 0o666 & ~current_umask()


def looks_like_local_path(name: str) -> bool:
    """A name no Hub repository can have: a leading ./ ../ / ~, a backslash, or more than one slash (Hub ids are
    'name' or 'owner/name'), so a missing one is a mistyped path, not something to look up online."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


@contextlib.contextmanager
def atomic_destination(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in `path`'s directory; on success it is renamed over `path` (with the usual file
    mode), on any failure (an interrupt included) removed, so `path` holds either the old or the whole new file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        with terminate_as_interrupt():
            yield tmp
            os.chmod(tmp, _default_file_mode())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises like Ctrl-C inside the block, so cleanup code runs either way (a plain SIGTERM ends the
    process without running any). Only in the main thread, where signal handlers can be set."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and an atomic rename."""
    with atomic_destination(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def check_output_file(path: str | os.PathLike, argument: str, *, overwrite: bool = False) -> str:
    """Fail before any work if `path` cannot be written as a new file: its directory is missing or not writable,
    it is a directory, or it exists and `overwrite` is False. Returns the path.

    Raises:
        OutputExistsError: `path` exists (and `overwrite` is False) or is a directory.
        OutputPathError: its directory does not exist or cannot be written.
    """
    from .errors import OutputExistsError, OutputPathError

    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputExistsError(f"`{argument}`={path!r} is a directory; give a file path.")
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(
            f"`{argument}`={path!r} already exists; choose another path or pass `overwrite=True` (`--overwrite`) "
            "to replace it."
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputPathError(
            f"`{argument}`={path!r}: the directory {directory!r} does not exist; create it first "
            f"(`mkdir -p {directory}`) or choose another path."
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputPathError(f"`{argument}`={path!r}: the directory {directory!r} is not writable.")
    return path


def check_output_directory(path: str | os.PathLike, argument: str) -> None:
    """Fail before any work if the directory `path` could not be created: an ancestor is a file, or the nearest
    existing ancestor is not writable.

    Raises:
        OutputPathError: naming the argument, the path and the blocking ancestor.
    """
    from .errors import OutputPathError

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(
            f"`{argument}`={path!r} is an existing file, not a directory; choose a directory path."
        )
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise OutputPathError(
            f"`{argument}`={path!r} cannot be created: {ancestor!r} is a file, not a directory. Choose another path."
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"`{argument}`={path!r} cannot be created: {ancestor!r} is not writable.")
    # permissions do not tell everything (/proc, read-only mounts, full disks, root): create and remove an entry
    # where a save will stage its files (inside the directory when it exists, else in its nearest ancestor)
    probe_in = path if os.path.isdir(path) else ancestor
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe_in, prefix=".blockprune-probe-"))
    except OSError as error:
        raise OutputPathError(
            f"`{argument}`={path!r} cannot be written: creating an entry in {probe_in!r} failed "
            f"({error.strerror or error}). Choose another path."
        ) from None


def progress_bar(iterable=None, *, total=None, desc=None, enabled=True, unit="it", initial=0, work=None):
    """A tqdm bar from huggingface_hub's wrapper (`HF_HUB_DISABLE_PROGRESS_BARS=1` silences it too) on a
    terminal; when stderr is not a terminal (a log file, CI), log lines instead (`LoggedProgress`). `initial`: work
    done before the bar started (shown, but not counted in the rate).

    Inside a `choice_display`, an enabled bar is a phase of that one display instead (named `desc`, counted in
    `unit`s); `work`: what the whole pass costs in block evaluations, which moves the display as the pass runs."""
    import sys

    display = _CHOICE_DISPLAY.get()
    if display is not None and enabled and iterable is None:
        return display.pass_of(desc or "Progress", total, unit, work)
    if enabled and total and iterable is None and not _is_terminal(sys.stderr):
        return LoggedProgress(total, desc=desc or "Progress", unit=unit, initial=initial)
    from huggingface_hub.utils import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled or None, unit=unit, initial=initial)


_CHOICE_DISPLAY: contextvars.ContextVar[ChoiceDisplay | None] = contextvars.ContextVar(
    "optimum_blockprune_choice_display", default=None
)


class ChoiceDisplay:
    """One progress display for a whole choice of blocks: the passes inside it (measured removals, a Fisher pass,
    a solve) report into it instead of opening bars of their own, each named as its phase with its count ("Pair
    removals (66 removals) 16/64 samples"). It counts forward-equivalents (one forward of the model over every
    calibration sample): `spent` sets the position from the ranking's cost record after each pass, a pass moves it
    in between by its share of `work`; the total is the method's estimate, so the ETA is the whole choice's (an
    estimate: `set_total` corrects it as the work turns out). `start`: what the cost record held when it opened."""

    def __init__(
        self, desc: str, *, total: float, enabled: bool, full_pass: float, start: float = 0.0
    ) -> None:
        self.desc = desc
        self.full_pass = full_pass  # block evaluations per forward-equivalent
        self.start = start
        self.position = 0.0
        self._phase: str | None = None
        self._shown = 0
        self.bar = progress_bar(total=max(1, math.ceil(total)), desc=desc, enabled=enabled, unit="fe")

    def phase(self, name: str, *, new: bool = True) -> None:
        """Name what runs now (`new`: a phase starting, which a log file hears at once; else a count moving)."""
        if name == self._phase:
            return
        self._phase = name
        label = f"{self.desc}, {name}"
        if isinstance(self.bar, LoggedProgress):
            self.bar.set_description(label, report=new)
        else:
            self.bar.set_description(label)

    def spent(self, forward_equivalents: float) -> None:
        """The cost record's total now (exact, where a pass's `work` was an estimate)."""
        self.position = forward_equivalents - self.start
        self._show()

    def set_total(self, total: float) -> None:
        set_total(self.bar, max(1, math.ceil(total), self._shown))

    def finish(self) -> None:
        """The choice is done: the total becomes what it cost (the estimate was a budget or a guess)."""
        total = max(1, math.ceil(self.position))
        set_total(self.bar, total)
        self.bar.update(total - self._shown)
        self._shown = total

    def pass_of(self, desc: str, total: int | None, unit: str, work: float | None) -> _PassOfDisplay:
        return _PassOfDisplay(self, desc, total, unit, work)

    def _show(self) -> None:
        now = min(int(self.position), self.bar.total)
        if now > self._shown:
            self.bar.update(now - self._shown)
            self._shown = now

    def close(self) -> None:
        self.bar.close()


class _PassOfDisplay:
    """A pass inside a `ChoiceDisplay`: the bar interface GatedForward and the solvers use."""

    def __init__(self, display: ChoiceDisplay, desc: str, total: int | None, unit: str, work: float | None):
        self.display, self.desc, self.total, self.unit = display, desc, total, unit
        self.done = 0
        self._step = work / display.full_pass / total if work and total else 0.0
        display.phase(self._label())

    def _label(self) -> str:
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        return f"{self.desc} {count} {self.unit}s"

    def update(self, n: int = 1) -> None:
        self.done += n
        self.display.position += n * self._step
        self.display.phase(self._label(), new=False)
        self.display._show()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        pass

    def __enter__(self) -> _PassOfDisplay:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@contextlib.contextmanager
def choice_display(
    desc: str, *, total: float, enabled: bool, full_pass: float, start: float = 0.0
) -> Iterator[ChoiceDisplay]:
    """Open one `ChoiceDisplay` for the passes run inside the block (and close it, even on an error); a display
    opened inside another is the current one until it closes."""
    display = ChoiceDisplay(desc, total=total, enabled=enabled, full_pass=full_pass, start=start)
    token = _CHOICE_DISPLAY.set(display)
    try:
        yield display
    finally:
        _CHOICE_DISPLAY.reset(token)
        display.close()


def current_display() -> ChoiceDisplay | None:
    """The `ChoiceDisplay` open around this code, if any."""
    return _CHOICE_DISPLAY.get()


def set_total(bar, total: int) -> None:
    """Change a display's total as the work turns out shorter (a search that stops early): a tqdm bar or a
    `LoggedProgress`."""
    bar.total = total
    if hasattr(bar, "refresh"):
        bar.refresh()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LoggedProgress:
    """Progress as log lines, every `step` of the total (5 %) and at least every `every_s` seconds (30) until it
    ends, with the rate and the time left: what a log file can show of a bar that redraws itself. On the real clock
    a heartbeat thread repeats the line when no update came for `every_s` (one pass can take longer than that), so a
    log file never goes quiet for longer; it stops when the display is closed, finished or dropped."""

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str = "it",
        step: float = 0.05,
        every_s: float = 30.0,
        clock=None,
        initial: int = 0,
    ):
        import logging
        import threading
        import time

        self.total, self.desc, self.unit = total, desc, unit
        self.clock = clock or time.perf_counter
        self.start = self.clock()
        self.done = self.initial = initial
        self.next_report = step * total
        while self.next_report <= self.done:
            self.next_report += step * total
        self.step = step
        self.every_s = every_s
        self.last_report = self.start
        self.logger = logging.getLogger("optimum_blockprune.progress")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        if clock is None:  # a test's clock is driven by the test alone
            threading.Thread(
                target=_heartbeat, args=(weakref.ref(self), self._closed, every_s), daemon=True
            ).start()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        finished = self.done >= self.total > self.done - n  # reported once, when it gets there
        if self.done >= self.next_report or finished or now - self.last_report >= self.every_s:
            self._report(now)
            while self.next_report <= self.done:
                self.next_report += self.step * self.total

    def _report(self, now: float) -> None:
        with self._lock:
            self._log(now)

    def _log(self, now: float) -> None:
        self.last_report = now
        elapsed = max(now - self.start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        left = f"{(self.total - self.done) / rate:.0f} s" if rate > 0 else "unknown"  # nothing done yet
        self.logger.info(
            "%s: %d%% (%d/%d %ss), %.3g %ss/s, %.0f s elapsed, ETA %s",
            self.desc,
            100 * self.done // self.total,
            self.done,
            self.total,
            self.unit,
            rate,
            self.unit,
            elapsed,
            left,
        )

    def set_description(self, desc: str, report: bool = True) -> None:
        """A new phase (tqdm's name for it): reported at once (`report`), so a log file names every phase as it
        starts."""
        if desc != self.desc:
            self.desc = desc
            if report:
                self._report(self.clock())

    def close(self) -> None:
        self._closed.set()

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _heartbeat(display: weakref.ref, closed, every_s: float) -> None:
    """Repeat a `LoggedProgress` line while it gets no updates; ends with the display (closed, finished, or
    garbage-collected after an error left it open)."""
    tick = min(every_s / 4, 1.0)
    while not closed.wait(tick):
        progress = display()
        if progress is None or progress.done >= progress.total:
            return
        now = progress.clock()
        # a tick early, so lines are never more than every_s apart
        if now - progress.last_report >= progress.every_s - tick:
            progress._report(now)
        del progress  # hold no reference while waiting


def block_indices(
    value: Any, argument: str, *, num_blocks: int | None = None, non_empty: bool = False
) -> tuple[int, ...]:
    """The one check every list of block indices gets (`apply`, `protected_blocks`, `forced_blocks`, their CLI
    forms): a list, tuple, range or 1-D integer array of distinct integers (no bools, no floats) in
    0..num_blocks - 1 (only non-negative when `num_blocks` is not known yet), non-empty when `non_empty`.
    Returns them sorted.

    Raises:
        ConfigurationError: naming `argument`, the value, what is wrong and the valid range.
    """
    import numpy as np

    from .errors import ConfigurationError

    valid = f"integers in 0..{num_blocks - 1}" if num_blocks is not None else "non-negative integers"

    def refuse(problem: str) -> ConfigurationError:
        return ConfigurationError(
            f"`{argument}`={value!r} {problem}; it must be a list of distinct 0-based block indices ({valid}), "
            f"e.g. `{argument}=[0, 3]`."
        )

    if isinstance(value, np.ndarray):
        if value.ndim != 1 or not (np.issubdtype(value.dtype, np.integer) or value.size == 0):
            raise refuse("is not a 1-D integer array")
        items = [int(i) for i in value]
    elif isinstance(value, (list, tuple, range)):
        bad = [i for i in value if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))]
        if bad:
            raise refuse(f"holds {bad[0]!r}, which is not an integer index")
        items = [int(i) for i in value]
    else:
        raise refuse(f"is of type {type(value).__name__}, not a list")
    repeated = sorted({i for i in items if items.count(i) > 1})
    if repeated:
        raise refuse(f"repeats {repeated[0]}")
    outside = [i for i in items if i < 0 or (num_blocks is not None and i >= num_blocks)]
    if outside:
        raise refuse(f"holds {outside[0]}, which is not a block index")
    if non_empty and not items:
        raise refuse("is empty")
    return tuple(sorted(items))


def distinct_names(value: Any, argument: str, example: str) -> tuple[str, ...]:
    """A list of distinct non-empty names (`candidate_kinds`, `auto_candidates`), in the order given.

    Raises:
        ConfigurationError: naming `argument`, the value and what is wrong.
    """
    from .errors import ConfigurationError

    def refuse(problem: str) -> ConfigurationError:
        return ConfigurationError(
            f"`{argument}`={value!r} {problem}; it must be a list of distinct names, e.g. `{argument}={example}`."
        )

    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise refuse(f"is of type {type(value).__name__}, not a list")
    bad = [name for name in value if not isinstance(name, str) or not name]
    if bad:
        raise refuse(f"holds {bad[0]!r}, which is not a name")
    repeated = [name for name in value if value.count(name) > 1]
    if repeated:
        raise refuse(f"repeats {repeated[0]!r}")
    return tuple(value)
