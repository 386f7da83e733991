"""Loading a model and its tokenizer for pruning: the architecture is checked before any weights are read."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .architectures import get_adapter, model_type_of, supported_model_types
from .architectures.base import TASKS
from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch.nn as nn

logger = logging.getLogger(__name__)

# `from_pretrained` kwargs that the config and tokenizer need as well as the model.
_SHARED_LOAD_KWARGS = (
    "revision",
    "token",
    "cache_dir",
    "trust_remote_code",
    "gguf_file",
    "subfolder",
    "local_files_only",
)


def _is_gguf_quantized(model: nn.Module) -> bool:
    quantization_config = getattr(getattr(model, "hf_quantizer", None), "quantization_config", None)
    method = getattr(quantization_config, "quant_method", None)
    return "gguf" in str(getattr(method, "value", method)).lower()


def _without_gguf_quantizer(model: nn.Module) -> nn.Module:
    """A GGUF-loaded model is already de-quantised in memory but refuses `save_pretrained`; rebuild it as a
    plain model from its config (minus `quantization_config`) with the same weights."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)  # the GGUF's own name for the model, not a config field
    config = type(model.config).from_dict(config_dict)
    plain = type(model)(config).to(dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.tie_weights()
    return plain.eval()


def _load_config(model_id: str, shared: dict[str, Any]):
    """The model's config, or one clear error: a missing local directory is named as such (transformers would
    call it an invalid repo id, after trying the Hub)."""
    from transformers import AutoConfig

    from .utils import looks_like_local_path

    if not os.path.isdir(model_id) and (looks_like_local_path(model_id) or os.path.exists(model_id)):
        what = "is a file, not a model directory" if os.path.exists(model_id) else "does not exist"
        raise ModelLoadError(
            f"`model`={model_id!r} {what} (looked in {os.getcwd()!r}); give a model directory (with config.json) "
            "or a Hub model id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'."
        )
    try:
        return AutoConfig.from_pretrained(model_id, **shared)
    except (OSError, ValueError) as error:  # not found, offline, gated, malformed config.json, invalid id
        raise ModelLoadError(f"Could not load the model config of {model_id!r}: {error}") from error


def load_pretrained(
    model_id: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    auto_class: Any | None = None,
    allow_generic: bool = False,
    **kwargs: Any,
) -> tuple[nn.Module, Any | None]:
    """The model (with the task's auto class unless `auto_class` is given) and its tokenizer (None if it has
    none; token-id calibration data needs none). An unregistered architecture fails before loading weights.
    `kwargs` go to `from_pretrained` (`dtype`, `device_map`, `revision`, `gguf_file`, ...)."""
    import transformers
    from transformers import AutoTokenizer

    model_id = os.fspath(model_id)
    shared = {k: kwargs[k] for k in _SHARED_LOAD_KWARGS if k in kwargs}
    model_config = _load_config(model_id, shared)
    task = "causal-lm"
    if not allow_generic or model_type_of(model_config) in supported_model_types():
        task = get_adapter(model_config).task  # fails before loading any weights
    if auto_class is None:
        auto_class = getattr(transformers, TASKS[task].auto_class)
    try:
        model = auto_class.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, TypeError) as error:  # no weights, a dtype it cannot take, a bad argument
        options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("token",))
        raise ModelLoadError(
            f"Could not load the model weights of {model_id!r}"
            + (f" with {options}" if options else "")
            + f": {error}"
        ) from error
    if _is_gguf_quantized(model):
        model = _without_gguf_quantizer(model)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id, **shared)
        except (OSError, ValueError) as error:
            logger.warning(
                "No tokenizer could be loaded from %s (%s); pass `tokenizer=` for text data, or give token ids.",
                model_id,
                error,
            )
    return model, tokenizer


def gguf_provenance(model_id: str, gguf_file: str) -> dict[str, Any]:
    """What the card says about weights read from a GGUF file: its name, quantisation, and the licence and
    languages it declares (read with the `gguf` package where the file is local and the package installed)."""
    info: dict[str, Any] = {"format": "gguf", "gguf_file": os.path.basename(gguf_file)}
    path = gguf_file if os.path.isabs(gguf_file) else os.path.join(model_id, gguf_file)
    try:
        import gguf
    except ImportError:
        return info
    if not os.path.isfile(path):
        return info
    fields = gguf.GGUFReader(path).fields

    def value(key):
        field = fields.get(key)
        return field.contents() if field is not None else None

    file_type = value("general.file_type")
    if file_type is not None:
        try:
            info["quantization"] = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            info["quantization"] = f"file type {file_type}"
    for key, name in (("general.license", "license"), ("general.languages", "languages")):
        if value(key) is not None:
            info[name] = value(key)
    return info
