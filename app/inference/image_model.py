"""An image embedding model loaded from a model folder: the manifest's preprocessing + one session."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.core.errors import TesseraError
from app.core.manifest import Backend, ImageTower, Manifest, OnnxIO, Precision, VariantParity
from app.inference.images import ImageLimits, load_pixels
from app.inference.text_model import open_variant

PIXEL_INPUT = "pixel_values"


class ImageModel:
    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        variant: VariantParity | None = None,
        *,
        backend: Backend | None = None,
        precision: Precision | None = None,
        threads: int = 0,
        streams: int = 1,
    ) -> None:
        if manifest.image is None:
            raise ValueError(f"model {manifest.name!r} ({manifest.kind.value}) has no image tower")
        self.manifest = manifest
        self.tower: ImageTower = manifest.image
        self.graph: OnnxIO = self.tower.onnx
        self.session, self.backend, self.precision = open_variant(
            folder, variant, backend, precision, threads, streams, default_file=self.tower.onnx_file
        )

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def outputs(self) -> list[str]:
        return self.graph.outputs

    @property
    def pixels_per_image(self) -> int:
        """The batcher's cost of one image: every image is resized to the same input."""
        return self.tower.input_size * self.tower.input_size

    def pixels(self, data: bytes, limits: ImageLimits, index: int = 0) -> np.ndarray:
        """Encoded image bytes -> (3, S, S) model input."""
        return load_pixels(data, self.tower, limits, index)

    def forward(self, images: list[np.ndarray]) -> np.ndarray:
        """One forward pass over preprocessed images (each (3, S, S)) -> (batch, outputs, dim)."""
        feeds = {self.graph.inputs[0]: np.stack(images)}  # (batch, 3, S, S)
        return np.stack(self.session.run(feeds, self.outputs), axis=1)

    def encode(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Offline: (n, 3, S, S) preprocessed images -> (n, dim) served vectors."""
        out = np.empty((len(pixels), self.dim), dtype=np.float32)
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size]
            (out[start : start + len(chunk)],) = self.session.run({self.graph.inputs[0]: chunk}, [self.graph.output])
        return out


class ImageFileEncoder:
    """Offline embedding of image files (the batch builder, both engines): files are read and
    decoded on `workers` threads, a batch ahead of inference. A file that cannot be decoded gives a
    NaN row and its error in `problems`, so the caller decides whether to stop or skip it."""

    def __init__(self, model: ImageModel, limits: ImageLimits, workers: int = 2) -> None:
        self.model = model
        self.limits = limits
        self.workers = workers

    @property
    def dim(self) -> int:
        return self.model.dim

    def _load(self, path: str) -> np.ndarray | str:
        try:
            return self.model.pixels(Path(path).read_bytes(), self.limits)
        except (TesseraError, OSError) as exc:
            return getattr(exc, "message", str(exc)).replace("image 0", "image", 1)

    def encode(self, paths: list[str], batch_size: int = 32) -> tuple[np.ndarray, dict[int, str]]:
        """(n, dim) vectors (NaN rows for bad files) and {row: problem}."""
        out = np.full((len(paths), self.dim), np.nan, dtype=np.float32)
        problems: dict[int, str] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="image-read") as pool:
            # At most two batches decoded ahead: memory stays bounded whatever the window size.
            ahead: deque[Future[np.ndarray | str]] = deque()
            queued = iter(paths)
            for start in range(0, len(paths), batch_size):
                while len(ahead) < 2 * batch_size and (path := next(queued, None)) is not None:
                    ahead.append(pool.submit(self._load, path))
                rows, pixels = [], []
                for row in range(start, min(start + batch_size, len(paths))):
                    item = ahead.popleft().result()
                    if isinstance(item, str):
                        problems[row] = item
                    else:
                        rows.append(row)
                        pixels.append(item)
                if pixels:
                    out[rows] = self.model.encode(np.stack(pixels), batch_size=len(pixels))  # (b, 3, S, S)
        return out, problems
