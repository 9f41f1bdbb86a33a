"""Graded lists synthesised for training queries by a small instruction-tuned causal LM.

For each of up to `budget` training queries the generator writes one short document per relevance
level (LEVELS: one that answers the query, one that answers part of it, one on the subject that
does not answer it); each is judged for that query at its level's grade and added to the training
set beside the real judgements, so a graded listwise loss (listwise, wasserstein) sees several
relevance levels per list. The seed paper: Esfandiarpoor, Zerveas, Bach, "Beyond Contrastive
Learning: Synthetic Data Enables List-wise Training with Multiple Levels of Relevance" (2025).

Generation is the slow part (SmolLM2-135M-Instruct writes a few lists a minute on 2 cores), so every
document is kept in an append-only cache keyed by the generator, the prompt and the query text: the
next query split, or a rerun, reuses what was written. Decoding is greedy with n-gram blocking, so
a document depends only on its prompt. The held-out queries are never sent to the generator, and
the evaluation corpus never sees a synthetic document (the training set gets a corpus of its own).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.data.beir import RetrievalDataset

PROMPT_VERSION = 1  # part of the cache key: a new prompt or level text must not reuse old documents
# (grade, what the document must do); grades sit inside Cranfield's 1-4 so real and synthetic lists share a scale
LEVELS: tuple[tuple[int, str], ...] = (
    (3, "answers the question completely and directly"),
    (2, "is on the question's topic and answers only part of it"),
    (1, "is on the same general subject but does not answer the question"),
)
MIN_WORDS = 8  # a shorter generation (empty, a refusal, a cut-off line) is dropped, not judged
PROMPTS_PER_CALL = 6  # two queries' lists per generate() call: padding waste stays small

TextGenerator = Callable[[list[str]], list[str]]  # prompts -> one completion each (prompt not repeated)


def level_prompt(query: str, instruction: str) -> str:
    return (
        "Write a short technical abstract of 2 or 3 sentences that "
        f"{instruction}. Write only the abstract.\nQuestion: {query.strip()}"
    )


def clean_generation(text: str) -> str | None:
    """The generated document, or None when it is too short to judge."""
    text = re.sub(r"^(technical abstract|abstract)\s*:\s*", "", " ".join(text.split()), flags=re.IGNORECASE)
    text = text.strip().strip('"').strip()
    return text if len(text.split()) >= MIN_WORDS else None


class GenerationCache:
    """Generations by (generator, prompt) on disk, one JSON line each, appended as written: a run
    stopped midway keeps every call it finished. `kind` and `version` name the file, so each use
    (graded lists; pseudo-queries, training/query_generation.py) and prompt version has its own."""

    def __init__(
        self, cache_dir: Path, generator_key: str, kind: str = "synthetic", version: int = PROMPT_VERSION
    ) -> None:
        digest = hashlib.sha256(f"{generator_key}|v{version}".encode()).hexdigest()[:16]
        self.path = cache_dir / f"{kind}-{digest}.jsonl"
        self._known: dict[str, str] | None = None

    @staticmethod
    def key(prompt: str) -> str:
        return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()

    def known(self) -> dict[str, str]:
        if self._known is None:
            self._known = {}
            if self.path.is_file():
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        row = json.loads(line)
                        self._known[row["key"]] = row["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line cut short by a crash: that prompt is generated again
        return self._known

    def fill(self, prompts: list[str], generate: TextGenerator, per_call: int) -> tuple[int, float]:
        """Generate, `per_call` at a time in the order given, every distinct prompt the cache lacks;
        returns how many were generated and the seconds spent in `generate`."""
        missing = [p for p in dict.fromkeys(prompts) if self.key(p) not in self.known()]
        started = time.perf_counter()
        for start in range(0, len(missing), per_call):
            part = missing[start : start + per_call]
            self.add(part, generate(part))
        return len(missing), time.perf_counter() - started

    def add(self, prompts: list[str], texts: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"key": self.key(p), "text": t} for p, t in zip(prompts, texts, strict=True)]
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(json.dumps(r) + "\n" for r in rows))
        self.known().update((r["key"], r["text"]) for r in rows)


@dataclass
class SynthesisStats:
    queries: int  # queries given a list
    documents: int  # documents kept (judged)
    dropped: int  # generations too short to keep
    generated: int  # prompts sent to the generator this run (the rest came from the cache)
    seconds: float  # time in the generator

    def record(self) -> dict[str, int | float | None]:
        """What metrics.json keeps: the counts, and the generator's pace when it ran (None when
        every document came from the cache)."""
        pace = round(60 * self.generated / len(LEVELS) / self.seconds, 2) if self.generated else None
        return {**vars(self), "seconds": round(self.seconds, 1), "lists_per_minute": pace}


def synthesise_lists(
    dataset: RetrievalDataset,
    generate: TextGenerator,
    cache: GenerationCache,
    budget: int,
    seed: int,
) -> tuple[RetrievalDataset, SynthesisStats]:
    """`dataset` plus up to `budget` queries' synthetic graded documents (ids `syn-<query>-g<grade>`),
    the queries drawn at random (by `seed`) among the judged ones. The input dataset, and the corpus
    it may share with an evaluation set, are left unchanged."""
    judged = sorted(q for q in dataset.queries if dataset.qrels.get(q))
    random.Random(seed).shuffle(judged)
    chosen = judged[:budget]
    prompts = {(q, grade): level_prompt(dataset.queries[q], text) for q in chosen for grade, text in LEVELS}
    # one generation per distinct prompt: two queries with the same text share their documents
    generated, seconds = cache.fill(list(prompts.values()), generate, PROMPTS_PER_CALL)
    corpus = dict(dataset.corpus)
    qrels = {q: dict(r) for q, r in dataset.qrels.items()}
    kept = dropped = 0
    for (query_id, grade), prompt in prompts.items():
        text = clean_generation(cache.known()[cache.key(prompt)])
        if text is None:
            dropped += 1
            continue
        doc_id = f"syn-{query_id}-g{grade}"
        corpus[doc_id] = {"title": "", "text": text}
        qrels[query_id][doc_id] = grade
        kept += 1
    stats = SynthesisStats(len(chosen), kept, dropped, generated, seconds)
    return RetrievalDataset(corpus, dict(dataset.queries), qrels, dataset.name, dict(dataset.extra)), stats


class CausalLMGenerator:
    """Completions from a transformers causal LM folder: the chat template when the tokenizer has
    one, greedy decoding with repeated 3-grams blocked (a 135M model otherwise loops).
    `response_prefix` starts the model's reply (e.g. "Question: How"): the completion continues it
    and does not repeat it."""

    def __init__(self, folder: str, max_new_tokens: int, response_prefix: str = "") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.max_new_tokens = max_new_tokens
        self.response_prefix = response_prefix

    def _format(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            chat = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return chat + self.response_prefix
        return prompt + "\n" + self.response_prefix

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        encoded = self.tokenizer(
            [self._format(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            output = self.model.generate(
                input_ids=encoded["input_ids"],  # a BERT-style tokenizer adds token_type_ids a causal LM refuses
                attention_mask=encoded["attention_mask"],
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                no_repeat_ngram_size=3,
                pad_token_id=self.tokenizer.pad_token_id,
            )  # (n, prompt + new tokens)
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
