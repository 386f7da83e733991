"""Saving a pruned model (checkpoint + tokenizer + provenance + card), atomically, and pushing it to the Hub."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
from importlib import resources
from typing import TYPE_CHECKING, Any

from .config import CONFIG_NAME
from .errors import HubUploadError, OutputExistsError, OutputPathError
from .version import __version__

if TYPE_CHECKING:
    import torch.nn as nn

logger = logging.getLogger(__name__)

CARD_TEMPLATE = "model_card.md.jinja"
DEFAULT_COMMIT_MESSAGE = "Upload block-pruned model (optimum-blockprune)"


def ensure_writable_directory(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a non-empty existing directory (or a file) unless `overwrite`; run this before expensive work.

    Raises:
        OutputExistsError: `path` is a file, or a non-empty directory and `overwrite` is False.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        raise OutputExistsError(f"The output path {path!r} is an existing file; choose a directory path.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise OutputExistsError(
            f"The output directory {path!r} is not empty. Choose another directory or pass `overwrite=True` "
            "(`--overwrite` on the command line) to replace the files a save writes there (checkpoint, "
            "tokenizer, `blockprune_config.json`, README.md and the card's pictures; other files are kept)."
        )


def pruning_provenance(
    *,
    model_id: str | None,
    adapter: Any,
    config: Any,
    result: Any,
    blocks: list[Any],
    fisher: Any = None,
    distillation: dict[str, Any] | None = None,
    evaluations: list[dict[str, Any]] | None = None,
    loaded_from: dict[str, Any] | None = None,
    base_card: dict[str, Any] | None = None,
    speed: list[dict[str, Any]] | None = None,
    sweep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything `blockprune_config.json` and the model card record about how a model was pruned: the model,
    the config, the method's and energy's names and one-line descriptions (from their registries), the result
    with its ranking, the blocks, the Fisher's settings (when one was used) and any retraining."""
    from .energies import get_energy
    from .methods import get_method

    method = get_method(config.method_name) if config is not None else None
    ranked = result.ranking is not None
    return {
        "base_model": model_id,
        "model_type": adapter.model_type,
        "pipeline_tag": adapter.task_info.pipeline_tag,
        "auto_class": adapter.task_info.auto_class,
        "config": config.to_dict() if config is not None else None,
        "method": {**method.info(config), "this_run": method.run_summary(config, result.ranking.stats)}
        if method is not None and ranked
        else None,
        # the values the run used where the config left them to a default (`None`: the method's own)
        "resolved": {"correction_rounds": config.rounds_of_correction} if config is not None else None,
        "energy": get_energy(config.energy).info()
        if method is not None and ranked and method.uses_energy
        else None,
        "result": result.to_dict(),
        "blocks": [b.to_dict() for b in blocks],
        "fisher": {k: v for k, v in fisher.metadata.items() if k != "blocks"}
        if fisher is not None and ranked
        else None,
        "distillation": distillation,
        "evaluations": list(evaluations or []),
        "loaded_from": loaded_from,
        "speed": list(speed or []),
        "sweep": sweep,
        "base_card": dict(base_card or {}),
    }


#: One short attempt at the base model's card: a save must not wait on retries to a Hub it cannot reach.
BASE_CARD_TIMEOUT_S = 3.0


def base_card_metadata(model_id: str | None, *, local_weights: bool = False) -> dict[str, Any]:
    """The licence, datasets and languages the base model's card declares, to carry into the pruned model's
    card: read from a local directory's README.md, the Hub cache, or one short request to the Hub (none when
    offline, or when the weights came from a local file such as a GGUF: `local_weights`). Read once per model id
    and process: every save and push renders a card."""
    return dict(_base_card_metadata(model_id, local_weights))


@functools.lru_cache(maxsize=32)
def _base_card_metadata(model_id: str | None, local_weights: bool) -> dict[str, Any]:
    if not model_id:
        return {}
    from huggingface_hub import ModelCard, constants, try_to_load_from_cache

    readme = os.path.join(model_id, "README.md")
    try:
        if os.path.isdir(model_id):
            if not os.path.isfile(readme):
                return {}
            card = ModelCard.load(readme)
        elif model_id.count("/") == 1:
            cached = try_to_load_from_cache(model_id, "README.md")
            if isinstance(cached, str):
                card = ModelCard.load(cached)
            elif local_weights or constants.HF_HUB_OFFLINE:
                return {}
            else:
                card = ModelCard(_fetch_card_once(model_id))
        else:
            return {}
    except Exception as error:  # unreachable, gated, no card: the card then says nothing about these fields
        logger.warning(
            "Could not read the model card of %s (%s): the pruned model's card names no licence, datasets or "
            "languages from it; add them by hand before sharing.",
            model_id,
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        return {}
    data = card.data.to_dict()
    return {key: data[key] for key in ("license", "datasets", "language") if data.get(key)}


def _fetch_card_once(model_id: str) -> str:
    """The Hub README of `model_id` in one request with a short timeout (no retries)."""
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    response = get_session().get(
        hf_hub_url(model_id, "README.md"),
        headers=build_hf_headers(),
        timeout=BASE_CARD_TIMEOUT_S,
        follow_redirects=True,
    )
    response.raise_for_status()
    return response.text


def render_model_card(provenance: dict[str, Any], repo_id: str | None = None) -> str:
    """Render the package's model-card template (YAML metadata + energy-ranking table) from provenance."""
    from huggingface_hub import ModelCard, ModelCardData

    from .result import Ranking

    base_model = provenance.get("base_model") or "unknown"
    is_hub_id = base_model.count("/") == 1 and not os.path.exists(base_model)
    result = provenance["result"]
    ranking = Ranking.from_dict(result["ranking"]) if result.get("ranking") else None
    loaded_from = provenance.get("loaded_from") or {}
    carried = {**(provenance.get("base_card") or {})}
    if loaded_from.get("license") and "license" not in carried:
        carried["license"] = loaded_from["license"]
    if loaded_from.get("languages") and "language" not in carried:
        carried["language"] = loaded_from["languages"]
    evaluations = provenance.get("evaluations") or []
    name = repo_id or os.path.basename(os.path.normpath(base_model)) + "-blockpruned"
    card_data = ModelCardData(
        base_model=base_model if is_hub_id else None,
        library_name="transformers",
        # no `gguf` tag even when the weights came from one: the Hub's tag means the repo holds GGUF files
        tags=["optimum-blockprune", "block-pruning", "pruned"],
        pipeline_tag=provenance.get("pipeline_tag"),
        model_name=name if evaluations else None,
        eval_results=_eval_results(evaluations, provenance.get("pipeline_tag")) or None,
        **carried,
    )
    template = (
        resources.files("optimum_blockprune.templates").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8")
    )
    before, after = result["num_parameters_before"], result["num_parameters_after"]
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=name,
        quality=_quality_rows(evaluations),
        retrained=bool(provenance.get("distillation")),
        figures=provenance.get("figures") or {},
        saved=provenance.get("saved"),
        loaded_from=loaded_from,
        calibration=_calibration(provenance, ranking),
        repo_id=repo_id or "path/to/this/model",
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if is_hub_id else "#",
        num_blocks_before=len(result["removed_blocks"]) + len(result["kept_blocks"]),
        num_blocks_after=len(result["kept_blocks"]),
        removed_blocks=result["removed_blocks"],
        kept_blocks=result["kept_blocks"],
        selected_rank=result.get("selected_rank"),
        applied_label=_applied_label(ranking, result.get("selected_rank")),
        num_parameters_before=before,
        num_parameters_after=after,
        parameter_reduction=1 - after / before,
        ranking=ranking,
        ranking_table=ranking.to_markdown(selected_rank=result.get("selected_rank")) if ranking else "",
        fisher=provenance.get("fisher"),
        method=provenance.get("method"),
        energy=provenance.get("energy"),
        choice_cost=choice_cost(ranking.stats) if ranking else None,
        speed=_speed_rows(provenance.get("speed") or []),
        sweep=provenance.get("sweep"),
        sweep_table=_sweep_table(provenance.get("sweep")),
        distillation=provenance.get("distillation"),
        library_version=__version__,
        auto_class=provenance.get("auto_class") or "AutoModelForCausalLM",
    )
    return tidy_markdown(str(card))


def tidy_markdown(text: str) -> str:
    """No trailing spaces (a table row's last cell ends in `|`), no runs of blank lines, one final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip("\n") + "\n"


_STAGES = ("unpruned", "pruned", "pruned + distilled")


def _quality_rows(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per held-out dataset (by fingerprint), the latest value of each stage measured on it."""
    rows: dict[str, dict[str, Any]] = {}
    for entry in evaluations:
        row = rows.setdefault(
            entry["fingerprint"],
            {"dataset": entry["dataset"], "metric": entry["metric"], "num_tokens": entry["num_tokens"]},
        )
        row[entry["stage"]] = entry["value"]
    return [{**row, "stages": [row.get(stage) for stage in _STAGES]} for row in rows.values()]


def _eval_results(evaluations: list[dict[str, Any]], pipeline_tag: str | None) -> list[Any]:
    """model-index entries: per held-out dataset, this model's latest-stage perplexity and the unpruned one beside
    it (so the number reads against its base). The dataset `type` is a Hub id when the data came from one, else
    `custom` (a free-text name is not a dataset id)."""
    from huggingface_hub import EvalResult

    latest: dict[str, dict[str, Any]] = {}
    unpruned: dict[str, dict[str, Any]] = {}
    for entry in evaluations:
        (unpruned if entry["stage"] == "unpruned" else latest)[entry["fingerprint"]] = entry
    results = []
    for fingerprint, entry in latest.items():
        for shown in (entry, unpruned.get(fingerprint)):
            if shown is None:
                continue
            results.append(
                EvalResult(
                    task_type=pipeline_tag or "text-generation",
                    dataset_type=_dataset_type(shown["dataset"]),
                    dataset_name=shown["dataset"],
                    metric_type="perplexity",
                    metric_value=round(float(shown["value"]), 4),
                    metric_name=f"held-out perplexity ({shown['stage']})",
                )
            )
    return results


def _speed_rows(measurements: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The card's speed table: the latest prefill and decode tokens/s of each stage, the speed-up of the last
    stage over the unpruned one, and where and how they were timed (None unless both stages were measured)."""
    latest = {entry["stage"]: entry for entry in measurements}
    if "unpruned" not in latest or len(latest) < 2:
        return None
    base = latest["unpruned"]
    last = measurements[-1] if measurements[-1]["stage"] != "unpruned" else list(latest.values())[-1]
    rows = []
    for kind in ("prefill", "decode"):
        before, after = base[f"{kind}_tokens_per_s"], last[f"{kind}_tokens_per_s"]
        if before and after:
            rows.append({"kind": kind, "before": before, "after": after, "speedup": after / before})
    settings = base["settings"]
    return {"rows": rows, "stage": last["stage"], "device": base["device"], "settings": settings}


def _sweep_table(sweep: dict[str, Any] | None) -> str:
    if not sweep:
        return ""
    from .sweep import SweepResult

    return SweepResult.from_dict(sweep).to_markdown()


def _dataset_type(name: str) -> str:
    """A Hub dataset id (`owner/name`) as it is; anything else (a file, a list, a sentence, a bare name that may
    be free text) is `custom`."""
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else "custom"


def _calibration(provenance: dict[str, Any], ranking: Any) -> dict[str, Any] | None:
    """The calibration data the choice read: the Fisher's record, else what the ranking recorded."""
    fisher = provenance.get("fisher")
    if fisher:
        return {
            "source": fisher.get("calibration_source"),
            "num_samples": fisher.get("num_samples"),
            "num_tokens": fisher.get("num_tokens"),
            "fingerprint": fisher.get("calibration_hash"),
        }
    return (ranking.stats.get("calibration") if ranking is not None else None) or None


def choice_cost(stats: dict[str, Any]) -> str | None:
    """What choosing the blocks cost, in words, from a ranking's stats (None when nothing was recorded)."""
    parts, seconds = [], 0.0
    if stats.get("fisher_samples"):
        parts.append(f"Fisher pass over {stats['fisher_samples']} samples (one forward + one backward each)")
    if stats.get("statistics_samples"):
        parts.append(f"{stats['statistics_samples']} sample forwards for residual-stream statistics")
    if stats.get("measured_removals"):
        reused = f", {stats['reused_removals']} more reused" if stats.get("reused_removals") else ""
        parts.append(f"{stats['measured_removals']} removals measured through the gates{reused}")
    for kind in ("fisher", "statistics", "measure"):
        seconds += float(stats.get(f"{kind}_seconds", 0.0))
    if not parts:
        return None
    return "; ".join(parts) + f" ({seconds:.1f} s)"


def _applied_label(ranking: Any, rank: int | None) -> str | None:
    if rank is None:
        return None
    if ranking is None:
        return f"CBO:{rank}"
    return ranking.state_label(ranking[rank])


def save_pruned_model(
    save_directory: str | os.PathLike,
    model: nn.Module,
    tokenizer: Any | None,
    provenance: dict[str, Any],
    *,
    overwrite: bool = False,
    repo_id: str | None = None,
    **save_kwargs: Any,
) -> str:
    """Write checkpoint, tokenizer, `blockprune_config.json` and `README.md` into `save_directory`.

    Everything is written to a temporary sibling directory first and moved into place at the end, so an
    interrupted save never leaves a half-written model, and an existing one is replaced only when complete.
    """
    from .utils import check_output_directory, current_umask, terminate_as_interrupt

    save_directory = os.path.abspath(os.fspath(save_directory))
    check_output_directory(save_directory, "save_directory")
    ensure_writable_directory(save_directory, overwrite)
    parent = os.path.dirname(save_directory)
    os.makedirs(parent, exist_ok=True)
    # staged inside an existing directory (its parent may not be ours to write), else beside it
    stage_in = save_directory if os.path.isdir(save_directory) else parent
    staging = tempfile.mkdtemp(dir=stage_in, prefix=f".{os.path.basename(save_directory)}.tmp-")
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700 would become the saved directory's mode
    with terminate_as_interrupt():
        _write_into(staging, save_directory, model, tokenizer, provenance, repo_id, save_kwargs)
    logger.info("Saved the pruned model to %s.", save_directory)
    return save_directory


def _saved_weights(model: nn.Module, directory: str) -> dict[str, Any]:
    """The dtype and on-disk size of the weights just written (the card says what a download costs)."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    size = sum(
        os.path.getsize(os.path.join(directory, name))
        for name in os.listdir(directory)
        if name.endswith((".safetensors", ".bin"))
    )
    shown = f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    return {"dtype": dtype, "size_bytes": size, "size": shown}


def _write_into(staging, save_directory, model, tokenizer, provenance, repo_id, save_kwargs) -> None:
    try:
        model.save_pretrained(staging, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        provenance = {**provenance, "saved": _saved_weights(model, staging)}
        ranking = provenance["result"].get("ranking")
        if ranking:
            from .figures import save_card_figures
            from .result import Ranking

            provenance["figures"] = save_card_figures(
                Ranking.from_dict(ranking), staging, provenance["result"].get("selected_rank")
            )
        if provenance.get("sweep"):
            from .figures import SWEEP_FILE
            from .sweep import SweepResult

            sweep = SweepResult.from_dict(provenance["sweep"])
            if sweep.plot(os.path.join(staging, SWEEP_FILE)):
                provenance["figures"] = {**(provenance.get("figures") or {}), "sweep": SWEEP_FILE}
        # every file this save writes, so a later `overwrite=True` replaces exactly these and nothing of the user's
        files = sorted({*os.listdir(staging), CONFIG_NAME, "README.md"})
        provenance["saved"] = {**provenance["saved"], "files": files}
        payload = {"library_version": __version__, **provenance}
        with open(os.path.join(staging, CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(render_model_card(provenance, repo_id=repo_id))
        _move_into_place(staging, save_directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


#: What a save writes besides the files it lists in `blockprune_config.json`: a checkpoint (single or sharded, from
#: this package or a plain `save_pretrained`), its configs and a tokenizer. `overwrite=True` replaces these and the
#: previous save's listed files, and never touches anything else in the directory.
SAVE_OUTPUT_PATTERNS = (
    r"(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?\.(safetensors|bin|h5|msgpack)(\.index\.json)?",
    r"(config|generation_config|preprocessor_config|processor_config|adapter_config)\.json",
    r"(tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab)\.json",
    r"(vocab\.txt|merges\.txt|tokenizer\.model|spiece\.model|sentencepiece\.bpe\.model|chat_template\.(jinja|json))",
    re.escape(CONFIG_NAME),
    r"README\.md",
    r"blockprune_[a-z_]+\.png",
)


def save_outputs_in(directory: str) -> list[str]:
    """The entries of `directory` that a save writes (and so may replace): the files the last save there listed,
    and any name a checkpoint, tokenizer or card save produces. Everything else belongs to the user."""
    names = set(os.listdir(directory))
    listed: set[str] = set()
    try:
        with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as handle:
            listed = set(json.load(handle).get("saved", {}).get("files", []))
    except (OSError, ValueError, AttributeError):
        pass
    pattern = re.compile("|".join(f"(?:{p})" for p in SAVE_OUTPUT_PATTERNS))
    return sorted(n for n in names if n in listed or pattern.fullmatch(n))


def _move_into_place(staging: str, target: str) -> None:
    """Move the staged save into `target`. Into an existing directory, only the entries a save writes are
    replaced (the previous save's and this one's names), the rest is left as it is; on any failure every entry
    moved so far goes back, so the directory holds the old save or the new one, never a mix."""
    if not os.path.exists(target):
        os.replace(staging, target)
        return
    new = sorted(os.listdir(staging))
    stale = sorted({*save_outputs_in(target), *(n for n in new if os.path.lexists(os.path.join(target, n)))})
    backup = tempfile.mkdtemp(dir=target, prefix=f".{os.path.basename(target)}.old-")
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for name in stale:
            os.replace(os.path.join(target, name), os.path.join(backup, name))
            moved_out.append(name)
        for name in new:
            os.replace(os.path.join(staging, name), os.path.join(target, name))
            moved_in.append(name)
    except BaseException:
        for name in reversed(moved_in):
            os.replace(os.path.join(target, name), os.path.join(staging, name))
        for name in reversed(moved_out):
            os.replace(os.path.join(backup, name), os.path.join(target, name))
        shutil.rmtree(backup, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    os.rmdir(staging)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    create_pr: bool = False,
    require_saved_model: bool = False,
    retry_hint: str | None = None,
):
    """Create the repo if needed and upload `folder` in one commit. The local folder is never modified.

    A retry after a failure re-sends only what the Hub lacks (large files already uploaded are recognised by their
    hash), so calling it again resumes an interrupted upload.

    Raises:
        OutputPathError: `folder` is not a directory (or, with `require_saved_model`, holds no saved pruned model).
        HubUploadError: the upload failed (no network, no permission, ...); the local files are untouched.
    """
    from huggingface_hub import HfApi

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise OutputPathError(f"`folder`={folder!r} is not a directory; save the model there first.")
    if require_saved_model and not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise OutputPathError(
            f"{folder!r} has no {CONFIG_NAME}: it is not a model saved by optimum-blockprune (`prune --output-dir` "
            "or `Pruner.save_pretrained`)."
        )
    retry = retry_hint or f"`optimum-blockprune push {folder} {repo_id}`"
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
    except Exception as error:  # httpx, requests and Hub HTTP errors alike: the local save is what matters
        raise HubUploadError(
            f"Uploading {folder!r} to {repo_id!r} failed ({type(error).__name__}: {error}). The local files are "
            f"intact; retry with {retry} (only what the Hub lacks is sent again)."
        ) from error
    logger.info("Pushed %s to https://huggingface.co/%s.", folder, repo_id)
    return info
