"""Pseudo-queries written by a small instruction-tuned causal LM, one per document.

The query-generation step of docT2query / InPars / GPL (Wang et al., "GPL: Generative Pseudo
Labeling for Unsupervised Domain Adaptation of Dense Retrieval", 2022), with the packaged
SmolLM2-135M-Instruct as the writer: for up to `budget` documents (drawn by the run's seed) the
generator reads the title and the start of the abstract and writes one question it answers. The
question is that document's pseudo-query (training/data/pseudo.py); the teacher then labels it
like any other pseudo-query (mined negatives filtered by its scores, its in-batch scores distilled).

Generation is the slow part, so every question is kept in an append-only cache keyed by the
generator, the prompt version and the prompt (training/synthetic.GenerationCache): a rerun, another
query split or another config on the same corpus reuses what was written. Decoding is greedy with
3-gram blocking, so a question depends only on its prompt.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.synthetic import GenerationCache, TextGenerator

PROMPT_VERSION = 1  # part of the cache key: a new prompt or reply start must not reuse old questions
MAX_DOCUMENT_WORDS = 100  # what the generator reads of a document: the title and the abstract's start
# The reply is started for the model: asked for "the question", SmolLM2-135M mostly writes "What is
# the purpose of this study?" for any abstract; started at "How", it writes about the document.
RESPONSE_PREFIX, QUERY_START = "Question: How", "How"
# A question about the prompt's own situation (a researcher finding a paper), not the document: dropped.
_ABOUT_THE_PROMPT = re.compile(r"\b(researchers?|papers?|abstracts?|search engines?)\b", re.IGNORECASE)
MAX_QUERY_WORDS = 40  # a longer generation is a paragraph, not a query: dropped
QUERIES_PER_CALL = 8  # prompts per generate() call: similar lengths, so padding waste stays small
_PREFIX = re.compile(r"^(question|query|search question)\s*\d*\s*[:.-]\s*", re.IGNORECASE)


def query_prompt(title: str, body: str) -> str:
    words = " ".join(part for part in (title.strip(), body.strip()) if part).split()[:MAX_DOCUMENT_WORDS]
    return (
        "Here is an abstract of a research paper.\n\n" + " ".join(words) + "\n\nWrite the question a researcher "
        "would type into a search engine to find this paper. Reply with the question only."
    )


def clean_query(completion: str, min_words: int) -> str | None:
    """The question: QUERY_START and the completion's first line, without a label or quotes; None
    when it is too short or too long to be a query, or asks about the prompt instead of the document."""
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    if not lines:
        return None
    query = f"{QUERY_START} " + _PREFIX.sub("", lines[0]).strip().strip('"').strip()
    words = len(query.split())
    if _ABOUT_THE_PROMPT.search(query) or not min_words <= words <= MAX_QUERY_WORDS:
        return None
    return query


@dataclass
class QueryGenerationStats:
    documents: int  # documents chosen (the budget, or every usable document when fewer)
    kept: int  # questions kept as pseudo-queries
    dropped: int  # generations too short or too long to keep
    generated: int  # prompts sent to the generator this run (the rest came from the cache)
    seconds: float  # time in the generator

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps: the counts, and the generator's pace (questions a minute) when
        it ran (None when every question came from the cache)."""
        pace = round(60 * self.generated / self.seconds, 1) if self.generated and self.seconds else None
        return {**vars(self), "seconds": round(self.seconds, 1), "queries_per_minute": pace}


def generated_queries(
    documents: dict[str, tuple[str, str]],
    generate: TextGenerator,
    cache: GenerationCache,
    budget: int,
    seed: int,
    min_words: int,
) -> tuple[dict[str, str], QueryGenerationStats]:
    """One question per chosen document: `documents` maps an id to its (title, body); up to
    `budget` of them are drawn at random by `seed`. Returns the kept questions by document id."""
    chosen = sorted(documents)
    random.Random(seed).shuffle(chosen)
    chosen = chosen[:budget]
    prompts = {doc_id: query_prompt(*documents[doc_id]) for doc_id in chosen}
    # neighbours in a call pad to similar lengths
    generated, seconds = cache.fill(sorted(prompts.values(), key=len), generate, QUERIES_PER_CALL)
    kept: dict[str, str] = {}
    for doc_id, prompt in prompts.items():
        query = clean_query(cache.known()[cache.key(prompt)], min_words)
        if query is not None:
            kept[doc_id] = query
    stats = QueryGenerationStats(len(chosen), len(kept), len(chosen) - len(kept), generated, seconds)
    return kept, stats


def generation_cache(cache_dir: Path, generator_key: str) -> GenerationCache:
    """The questions' cache: a file of its own beside the synthetic lists' (another prompt version)."""
    return GenerationCache(cache_dir, generator_key, kind="queries", version=PROMPT_VERSION)
