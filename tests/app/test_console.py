"""The web console at /ui, in a real headless Chromium (Debian's, driven by Playwright) against a
live server: keys, search with a filter and reranking, an image query with thumbnails, the
embeddings heat map, models, collections, upload; any browser console error fails the test."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from app.api.routes.console import STATIC_DIR
from app.main import create_app
from tests.conftest import COCO_PHOTOS, ROOT, SHARED_DATA, LocalClient, live_server, settings_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN = "console-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
# As the machine notes say: no background networking (the closed network refuses it), no sandbox as root.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def test_console_assets_are_small_local_and_open_without_a_key(default_models_dir: Path, tmp_path: Path) -> None:
    total = sum(p.stat().st_size for p in STATIC_DIR.iterdir())
    assert total < 300_000, total
    for page in STATIC_DIR.glob("*.html"):
        assert not re.search(r"""(src|href)="(https?:)?//""", page.read_text())  # nothing from another host
    settings = settings_for(default_models_dir, data_dir=tmp_path, api_keys=f"admin={ADMIN}")
    with LocalClient(create_app(settings)) as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        page = client.get("/ui")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/ui/assets/console.js").status_code == 200
        assert client.get("/ui/assets/missing.js").status_code == 404
        assert client.get("/ui/assets/../../api/deps.py").status_code in (401, 404)  # no way out of the folder
        assert client.get("/v1/models").status_code == 401  # the API itself still needs the key


@pytest.fixture(scope="module")
def console_models(tmp_path_factory: pytest.TempPathFactory, rerank_models_dir: Path, clip_models_dir: Path) -> Path:
    models = tmp_path_factory.mktemp("console-models")
    for folder in (rerank_models_dir / "minilm-l6", rerank_models_dir / "tiny-ce", clip_models_dir / "clip-conse"):
        (models / folder.name).symlink_to(folder.resolve())
    return models


@pytest.fixture(scope="module")
def console_server(console_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server with keys, a Cranfield collection (the first 300 documents, built by `tessera
    index build` as `make serve` builds its demo) and an empty clip collection with thumbnails."""
    data = tmp_path_factory.mktemp("console-data")
    corpus = data / "corpus.jsonl"
    lines = (SHARED_DATA / "cranfield" / "cran.all.1400").read_text().split(".I ")[1:301]
    with corpus.open("w") as out:
        for block in lines:
            number, _, rest = block.partition("\n")
            text = rest.split(".W", 1)[-1].strip()
            title = rest.split(".T", 1)[-1].split(".A", 1)[0].strip()
            metadata = {"title": title, "n": int(number)}
            out.write(json.dumps({"id": number.strip(), "text": text, "metadata": metadata}) + "\n")
    env = dict(os.environ, TESSERA_MODELS_DIR=str(console_models), TESSERA_DATA_DIR=str(data / "indexes"))
    tessera = str(Path(sys.executable).parent / "tessera")
    build = [tessera, "index", "build", "--input", str(corpus), "--index", "cranfield"]
    subprocess.run(build, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    settings = settings_for(console_models, data_dir=data / "indexes", api_keys=f"admin={ADMIN}")
    with live_server(settings) as base:
        created = httpx.post(
            f"{base}/indexes", json={"name": "photos", "model": "clip-conse", "thumbnails": True}, headers=HEADERS
        )
        assert created.status_code == 201, created.text
        photos = sorted(COCO_PHOTOS.glob("*.jpg"))[:12]
        documents = [
            {"id": p.stem, "image": base64.b64encode(p.read_bytes()).decode(), "metadata": {"file": p.name}}
            for p in photos
        ]
        body = {"documents": documents}
        stored = httpx.put(f"{base}/indexes/photos/documents", json=body, headers=HEADERS, timeout=120)
        assert stored.status_code == 200, stored.text
        yield base


@pytest.fixture()
def page(console_server: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.errors = []  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: page.errors.append(f"page error: {exc}"))  # type: ignore[attr-defined]
        page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))  # type: ignore[attr-defined]
        yield page
        context.close()
        browser.close()


def _expected_failures(page, *statuses: int) -> None:  # type: ignore[no-untyped-def]
    """Chromium logs every 4xx fetch as a console error; drop those the test provoked on purpose."""
    pattern = re.compile(rf"status of ({'|'.join(map(str, statuses))})")
    page.errors[:] = [e for e in page.errors if not (e.startswith("Failed to load resource") and pattern.search(e))]


def _sign_in(page, base: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/")
    page.wait_for_selector("#message:not([hidden])")
    assert "401" in page.inner_text("#message") and "API key" in page.inner_text("#message")
    page.fill("#key-input", "wrong-key-0000000000")
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("not valid")
    page.fill("#key-input", ADMIN)
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("Key accepted")
    _expected_failures(page, 401)  # only now: every refused request has logged by the time one succeeded
    assert page.evaluate("sessionStorage.getItem('tessera-api-key')") == ADMIN
    assert page.evaluate("localStorage.length") == 0  # the key never outlives the tab


def test_search_filter_rerank_and_the_curl_command(page, console_server: str) -> None:  # type: ignore[no-untyped-def]
    _sign_in(page, console_server)
    page.select_option("#search-collection", "cranfield")
    page.fill("#search-query", "boundary layer")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    texts = page.locator("#search-results .text").all_inner_texts()
    assert texts and any(re.search(r"boundary|layer", t, re.I) for t in texts)
    assert page.locator("#search-results mark").count() > 0  # query words highlighted
    assert re.search(r"\d+ hits .* ms", page.inner_text("#search-status"))
    curl = page.text_content("#search-curl") or ""
    assert "/indexes/cranfield/search" in curl and '"query":"boundary layer"' in curl and ADMIN not in curl

    page.click("#filter-add")
    row = page.locator(".filter-row").last
    row.locator("input").first.fill("n")
    row.locator("select").select_option("$lte")
    row.locator("input").nth(1).fill("50")
    assert json.loads(page.input_value("#filter-json")) == {"n": {"$lte": 50}}
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-status")).to_contain_text("hits")
    page.wait_for_timeout(200)
    ids = [int(t) for t in page.locator("#search-results li strong").all_inner_texts()]
    assert ids and all(i <= 50 for i in ids)

    page.check("#search-rerank")
    assert page.input_value("#search-reranker") == "tiny-ce"
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-status")).to_contain_text("reranked by tiny-ce")
    assert "first stage" in page.locator("#search-results .scores").first.inner_text()

    page.fill("#filter-json", "{not json")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#message")).to_contain_text("not valid JSON")
    page.fill("#filter-json", '{"n": {"$regex": "x"}}')  # the server's 4xx, shown readably
    page.click("#search-form button[type=submit]")
    expect(page.locator("#message")).to_have_text(re.compile(r"^4\d\d: "))
    assert "$regex" in page.inner_text("#message")
    _expected_failures(page, 400, 422)
    assert page.errors == []


def test_an_image_query_shows_thumbnails(page, console_server: str) -> None:  # type: ignore[no-untyped-def]
    _sign_in(page, console_server)
    page.select_option("#search-collection", "photos")
    assert page.is_visible("#search-image-zone")
    photo = sorted(COCO_PHOTOS.glob("*.jpg"))[3]
    page.set_input_files("#search-image", str(photo))
    page.wait_for_selector("#search-image-preview:not([hidden])")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li img")
    assert page.locator("#search-results li").first.locator("strong").inner_text() == photo.stem  # itself first
    assert page.locator("#search-results img").first.get_attribute("src").startswith("data:image/jpeg")

    page.click("nav a[data-page=classify]")
    page.set_input_files("#cls-image", str(COCO_PHOTOS / "000000030752.jpg"))
    page.fill("#cls-labels", "a bus, a giraffe, a pizza")
    page.click("#cls-form button[type=submit]")
    page.wait_for_selector("#cls-bars .bar")
    assert page.locator("#cls-bars .bar").count() == 3
    assert page.errors == []


def test_embeddings_models_and_collections_pages(page, console_server: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _sign_in(page, console_server)
    page.click("nav a[data-page=embeddings]")
    page.select_option("#emb-model", "minilm-l6")
    texts = ["the wing stalls at high angle of attack", "lift falls when the wing stalls", "a recipe for bread"]
    page.fill("#emb-texts", "\n".join(texts))
    page.click("#emb-form button[type=submit]")
    page.wait_for_selector("#emb-matrix td")
    cells = [float(t) for t in page.locator("#emb-matrix td").all_inner_texts()]
    assert len(cells) == 9 and all(abs(cells[i * 4] - 1) < 1e-3 for i in range(3))  # the diagonal
    assert cells[1] > cells[2]  # the two wing sentences are closer than wing and bread
    assert "384 dimensions" in page.inner_text("#emb-status")
    page.fill("#emb-dims", "64")
    page.click("#emb-form button[type=submit]")
    expect(page.locator("#emb-status")).to_contain_text("64 dimensions")

    page.click("nav a[data-page=models]")
    expect(page.locator("#models-table")).to_contain_text("minilm-l6")  # the hash change renders it
    models = page.inner_text("#models-table")
    assert "minilm-l6 (default)" in models and "tiny-ce" in models and "clip" in models
    assert page.is_visible("nav a[data-page=classify]")

    page.click("nav a[data-page=collections]")
    expect(page.locator("#col-table")).to_contain_text("cranfield")
    assert "photos" in page.inner_text("#col-table")
    upload = tmp_path / "notes.csv"
    upload.write_text('id,text,topic\na1,"Shock waves, on a wedge",flow\na2,Heat transfer at the nose,heat\n')
    # into an existing collection, the picker shows (disabled) the model that collection embeds with
    page.select_option("#upload-collection", "photos")
    photos_model = httpx.get(f"{console_server}/indexes/photos", headers=HEADERS).json()["model"]
    assert photos_model != "minilm-l6" and page.input_value("#upload-model") == photos_model
    assert page.is_disabled("#upload-model")
    page.fill("#upload-new", "notes")
    assert page.is_enabled("#upload-model")
    assert page.input_value("#upload-model") == "minilm-l6"  # the default model, unless chosen
    page.select_option("#upload-model", "clip-conse")
    page.set_input_files("#upload-file", str(upload))
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-status")).to_contain_text("uploaded 2 documents")
    assert page.evaluate("document.querySelector('#upload-progress').value") == 2
    assert "notes" in page.inner_text("#col-table")
    stored = httpx.get(f"{console_server}/indexes/notes/documents/a1", headers=HEADERS).json()
    assert stored["text"] == "Shock waves, on a wedge" and stored["metadata"] == {"topic": "flow"}
    assert httpx.get(f"{console_server}/indexes/notes", headers=HEADERS).json()["model"] == "clip-conse"

    page.locator("#col-table button[aria-label='optimize notes']").click()
    expect(page.locator("#message")).to_contain_text("Optimized notes", timeout=60_000)

    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.locator("#col-table button[aria-label='delete notes']").click()
    expect(page.locator("#col-table")).to_contain_text("notes")  # declined: nothing sent
    assert asked == ["Delete collection notes and its 2 documents? This cannot be undone."]
    assert httpx.get(f"{console_server}/indexes/notes", headers=HEADERS).status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#col-table button[aria-label='delete notes']").click()
    expect(page.locator("#message")).to_contain_text("Deleted notes.")
    assert "notes" not in page.inner_text("#col-table") and "cranfield" in page.inner_text("#col-table")
    assert httpx.get(f"{console_server}/indexes/notes", headers=HEADERS).status_code == 404
    assert page.errors == []
    if os.environ.get("TESSERA_CONSOLE_SCREENSHOT"):  # the README's picture: the search page
        page.click("nav a[data-page=search]")
        page.select_option("#search-collection", "cranfield")
        page.fill("#search-query", "boundary layer transition")
        page.check("#search-rerank")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#search-results li")
        page.screenshot(path=os.environ["TESSERA_CONSOLE_SCREENSHOT"])


def test_the_console_is_usable_at_360_px_and_by_keyboard(page, console_server: str) -> None:  # type: ignore[no-untyped-def]
    page.set_viewport_size({"width": 360, "height": 800})
    _sign_in(page, console_server)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 362, width  # nothing wider than the screen
    unlabeled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')].filter(e =>
            !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)"""
    )
    assert unlabeled == []
    page.focus("#search-query")
    page.keyboard.type("wing")
    page.keyboard.press("Enter")  # submits the form
    page.wait_for_selector("#search-results li")
    assert page.errors == []
