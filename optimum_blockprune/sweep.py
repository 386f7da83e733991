"""How many blocks can I remove? A compression sweep: for each M, the configured method's pick, its held-out
quality, the parameters it removes and the measured speed of the pruned architecture, against the unpruned model
in the same run.

The pure parts live here (speed timing, the budget choice, the knee, the table and the picture); `Pruner.sweep`
runs the picks on the pruner's shared measurement cache, so the M's reuse one another's measurements.
"""

from __future__ import annotations

import inspect
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class SpeedMeasurement:
    """Tokens per second of one model: a prefill of `batch_size` x `prompt_length` tokens, and greedy decoding of
    `new_tokens` more (None for a model that does not generate). Medians of `repeats` timings after one warm-up."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float | None


@dataclass(frozen=True)
class SpeedSettings:
    batch_size: int = 1
    prompt_length: int = 128
    new_tokens: int = 32
    repeats: int = 5

    def __post_init__(self) -> None:
        from .errors import ConfigurationError

        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(
                    f"`{name}` of the speed measurement must be a positive integer, got {value!r}."
                )


def measure_speed(
    model: nn.Module, *, vocab_size: int, settings: SpeedSettings, generates: bool = True, seed: int = 0
) -> SpeedMeasurement:
    """Time `model` where it lives (its input device): a prefill, and for a generative model `new_tokens` greedy
    decode steps with the KV cache after an untimed prefill (timed apart, so decode speed is not a difference of
    two noisy timings)."""
    import torch

    from .estimation.forward import input_device

    device = input_device(model)
    generator = torch.Generator().manual_seed(seed)
    shape = (settings.batch_size, settings.prompt_length)
    ids = torch.randint(min(4, vocab_size - 1), vocab_size, shape, generator=generator).to(device)
    mask = torch.ones_like(ids)

    def seconds(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def median_seconds(run) -> float:
        run()  # warm-up: allocation, kernels, caches
        return statistics.median(run() for _ in range(settings.repeats))

    # transformers renamed `past_key_values` to `cache` (5.2x); take whichever this version's forward has
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def decode_seconds() -> float:
        output = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache, token, seen = output[cache_argument], output.logits[:, -1:].argmax(-1), mask

        def steps():
            nonlocal cache, token, seen
            for _ in range(settings.new_tokens):
                seen = torch.cat([seen, torch.ones_like(token)], dim=1)
                output = model(
                    input_ids=token, attention_mask=seen, use_cache=True, **{cache_argument: cache}
                )
                cache, token = output[cache_argument], output.logits[:, -1:].argmax(-1)

        return seconds(steps)

    with torch.no_grad():
        prefill = median_seconds(
            lambda: seconds(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False))
        )
        decode = None
        if generates:
            decode = settings.batch_size * settings.new_tokens / median_seconds(decode_seconds)
    return SpeedMeasurement(settings.batch_size * settings.prompt_length / prefill, decode)


@dataclass(frozen=True)
class SweepPoint:
    """One M of a sweep: the pick, its held-out quality and speed, and what choosing it cost."""

    num_blocks: int
    removed_blocks: tuple[int, ...]
    perplexity: float
    kl: float
    parameters_removed: float
    active_parameters_removed: float
    block_evaluations: int
    seconds: float
    speed: SpeedMeasurement | None = None


@dataclass
class SweepResult:
    """A sweep's points, the unpruned reference measured in the same run, and how it was measured."""

    method: str
    num_blocks_total: int
    unpruned_perplexity: float
    points: list[SweepPoint]
    held_out: dict[str, Any]
    device: str
    speed_settings: SpeedSettings | None = None
    unpruned_speed: SpeedMeasurement | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def block_evaluations(self) -> int:
        """What the whole sweep's choices cost (the measurements shared across M counted once)."""
        return sum(p.block_evaluations for p in self.points)

    def speedup(self, point: SweepPoint, kind: str) -> float | None:
        if point.speed is None or self.unpruned_speed is None:
            return None
        mine = getattr(point.speed, f"{kind}_tokens_per_s")
        base = getattr(self.unpruned_speed, f"{kind}_tokens_per_s")
        return mine / base if mine and base else None

    def to_records(self) -> list[dict[str, Any]]:
        """One flat record per M (`datasets.Dataset.from_list` takes them as they are)."""
        records = []
        for point in self.points:
            records.append(
                {
                    "num_blocks": point.num_blocks,
                    "removed_blocks": list(point.removed_blocks),
                    "perplexity": point.perplexity,
                    "perplexity_increase": point.perplexity / self.unpruned_perplexity - 1,
                    "kl": point.kl,
                    "parameters_removed": point.parameters_removed,
                    "active_parameters_removed": point.active_parameters_removed,
                    "prefill_tokens_per_s": point.speed.prefill_tokens_per_s if point.speed else None,
                    "decode_tokens_per_s": point.speed.decode_tokens_per_s if point.speed else None,
                    "prefill_speedup": self.speedup(point, "prefill"),
                    "decode_speedup": self.speedup(point, "decode"),
                    "block_evaluations": point.block_evaluations,
                    "seconds": point.seconds,
                }
            )
        return records

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "num_blocks_total": self.num_blocks_total,
            "unpruned_perplexity": self.unpruned_perplexity,
            "unpruned_speed": asdict(self.unpruned_speed) if self.unpruned_speed else None,
            "speed_settings": asdict(self.speed_settings) if self.speed_settings else None,
            "device": self.device,
            "held_out": self.held_out,
            "block_evaluations": self.block_evaluations,
            "seconds": self.seconds,
            "knee": self.knee(),
            "points": self.to_records(),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        """The inverse of `to_dict` (what `blockprune_config.json` holds), for re-rendering a card."""

        def speed_of(record):
            if record.get("prefill_tokens_per_s") is None:
                return None
            return SpeedMeasurement(record["prefill_tokens_per_s"], record.get("decode_tokens_per_s"))

        points = [
            SweepPoint(
                num_blocks=r["num_blocks"],
                removed_blocks=tuple(r["removed_blocks"]),
                perplexity=r["perplexity"],
                kl=r["kl"],
                parameters_removed=r["parameters_removed"],
                active_parameters_removed=r["active_parameters_removed"],
                block_evaluations=r["block_evaluations"],
                seconds=r["seconds"],
                speed=speed_of(r),
            )
            for r in data["points"]
        ]
        unpruned = data.get("unpruned_speed")
        settings = data.get("speed_settings")
        return cls(
            method=data["method"],
            num_blocks_total=data["num_blocks_total"],
            unpruned_perplexity=data["unpruned_perplexity"],
            points=points,
            held_out=data.get("held_out") or {},
            device=data.get("device", ""),
            speed_settings=SpeedSettings(**settings) if settings else None,
            unpruned_speed=SpeedMeasurement(**unpruned) if unpruned else None,
            seconds=data.get("seconds", 0.0),
        )

    def save(self, path: str, *, overwrite: bool = False) -> str:
        """Write `to_dict()` as JSON, atomically."""
        from .utils import atomic_write_text, check_output_file

        check_output_file(path, "path", overwrite=overwrite)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def knee(self) -> int | None:
        """The M after which quality falls fastest: `knee_of` on (M, log perplexity)."""
        return knee_of([p.num_blocks for p in self.points], [math.log(p.perplexity) for p in self.points])

    def choose(
        self, *, max_perplexity_increase: float | None = None, max_kl: float | None = None
    ) -> int | None:
        """The largest M within the budget (see `largest_within_budget`)."""
        return largest_within_budget(
            self.points,
            self.unpruned_perplexity,
            max_perplexity_increase=max_perplexity_increase,
            max_kl=max_kl,
        )

    def to_markdown(self) -> str:
        speed = self.unpruned_speed is not None
        header = "| M | removed blocks | held-out ppl | Δ ppl | KL | params removed |"
        rule = "|---|---|---|---|---|---|"
        if speed:
            header += " prefill tok/s | decode tok/s |"
            rule += "---|---|"
        lines = [header, rule]
        row = f"| 0 | – | {self.unpruned_perplexity:.2f} | – | 0 | 0 % |"
        if speed:
            decode = self.unpruned_speed.decode_tokens_per_s
            row += f" {self.unpruned_speed.prefill_tokens_per_s:,.0f} | {_number(decode)} |"
        lines.append(row)
        knee = self.knee()
        for record, point in zip(self.to_records(), self.points):
            mark = " (knee)" if point.num_blocks == knee else ""
            row = (
                f"| {point.num_blocks}{mark} | {', '.join(map(str, point.removed_blocks))} | {point.perplexity:.2f} | "
                f"{100 * record['perplexity_increase']:+.1f} % | {point.kl:.4f} | "
                f"{100 * point.parameters_removed:.1f} % |"
            )
            if speed:
                row += (
                    f" {_number(record['prefill_tokens_per_s'])} ({_ratio(record['prefill_speedup'])}) |"
                    f" {_number(record['decode_tokens_per_s'])} ({_ratio(record['decode_speedup'])}) |"
                )
            lines.append(row)
        return "\n".join(lines)

    def plot(self, path: str) -> str | None:
        """Quality and speed against M (and parameters removed on a second axis label), the knee marked; None
        without matplotlib."""
        from .figures import save_sweep_figure

        return save_sweep_figure(self, path)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def block_counts(num_blocks: Any, total: int | None = None) -> list[int]:
    """A sweep's counts: a non-empty list or range of distinct integers in 1..total - 1 (at least 1 while the
    model's block count is not known yet), in increasing order.

    Raises:
        ConfigurationError: naming the value and the valid range.
    """
    from .errors import ConfigurationError

    valid = f"distinct integers in 1..{total - 1}" if total is not None else "distinct integers of at least 1"
    items = list(num_blocks) if isinstance(num_blocks, (list, tuple, range)) else None
    if (
        not items
        or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in items)
        or (total is not None and max(items) >= total)
        or len(set(items)) != len(items)
    ):
        example = f"range(2, {total}, 2)" if total is not None else "range(2, 16, 2)"
        raise ConfigurationError(
            f"`num_blocks`={num_blocks!r} must be a non-empty list or range of {valid} (how many blocks to remove "
            f"at each point), e.g. `{example}`."
        )
    return sorted(items)


def check_eval_samples(num_eval_samples: Any) -> None:
    """A sweep's held-out slice: at least 2 samples (an integer).

    Raises:
        ConfigurationError: naming the value.
    """
    from .errors import ConfigurationError

    if isinstance(num_eval_samples, bool) or not isinstance(num_eval_samples, int) or num_eval_samples < 2:
        raise ConfigurationError(
            f"`num_eval_samples` must be an integer of at least 2 (the held-out samples of the sweep's quality), got "
            f"{num_eval_samples!r}."
        )


def check_budget(*, max_perplexity_increase: float | None = None, max_kl: float | None = None) -> None:
    """Each budget given is a non-negative finite number (none given is fine here).

    Raises:
        ConfigurationError: naming the budget and its value.
    """
    from .errors import ConfigurationError

    for name, value in (("max_perplexity_increase", max_perplexity_increase), ("max_kl", max_kl)):
        if value is not None and not (
            isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)
        ):
            raise ConfigurationError(f"`{name}` must be a non-negative number, got {value!r}.")


def largest_within_budget(
    points: Sequence[SweepPoint],
    unpruned_perplexity: float,
    *,
    max_perplexity_increase: float | None = None,
    max_kl: float | None = None,
) -> int | None:
    """The largest M whose pick stays within every budget given (relative perplexity increase, e.g. 0.1 for +10 %;
    per-token KL to the unpruned model), and every smaller M too (a budget is a curve's prefix: an M past a point
    that broke it is not chosen because a noisy later point dips back). None if even the smallest M breaks it.

    Raises:
        ConfigurationError: no budget, or a negative one.
    """
    from .errors import ConfigurationError

    if max_perplexity_increase is None and max_kl is None:
        raise ConfigurationError("Give a budget: `max_perplexity_increase` (e.g. 0.1 for +10 %) or `max_kl`.")
    check_budget(max_perplexity_increase=max_perplexity_increase, max_kl=max_kl)
    chosen = None
    for point in sorted(points, key=lambda p: p.num_blocks):
        within = (
            max_perplexity_increase is None
            or point.perplexity <= unpruned_perplexity * (1 + max_perplexity_increase)
        ) and (max_kl is None or point.kl <= max_kl)
        if not within:
            break
        chosen = point.num_blocks
    return chosen


def knee_of(x: Sequence[float], y: Sequence[float]) -> int | None:
    """The x of the point farthest below the chord from the first to the last point, both axes scaled to [0, 1]
    (the "kneedle" rule for an increasing convex curve); None for fewer than three points or a straight line."""
    if len(x) < 3:
        return None
    x0, x1, y0, y1 = min(x), max(x), min(y), max(y)
    if x1 == x0 or y1 == y0:
        return None
    scaled = [((a - x0) / (x1 - x0), (b - y0) / (y1 - y0)) for a, b in zip(x, y)]
    gaps = [sx - sy for sx, sy in scaled]  # distance below the diagonal
    best = max(range(len(gaps)), key=lambda i: gaps[i])
    return int(x[best]) if gaps[best] > 1e-9 else None
