"""`app/` must run without torch and never import `training/`."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"training", "torch", "transformers", "sentence_transformers"}
# BlockRank's in-context reranker runs on torch (an optional extra, loaded only when a blockrank
# model is used); it still never imports training/.
OPTIONAL_TORCH = {"app/inference/blockrank.py", "app/inference/in_context.py"}


def test_no_forbidden_import_statement_in_app() -> None:
    offenders = []
    for path in (ROOT / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            forbidden = (
                FORBIDDEN - {"torch", "transformers"} if str(path.relative_to(ROOT)) in OPTIONAL_TORCH else FORBIDDEN
            )
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert offenders == []


def test_serving_a_model_loads_neither_torch_nor_training(default_models_dir: Path) -> None:
    code = f"""
import sys
from fastapi.testclient import TestClient
from app.core.config import Settings
from app.main import create_app
with TestClient(create_app(Settings(models_dir={str(default_models_dir)!r})), client=('127.0.0.1', 50000)) as c:
    assert c.post("/v1/embeddings", json={{"input": "hello"}}).status_code == 200
bad = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FORBIDDEN)!r})
print(bad)
assert not bad, bad
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
