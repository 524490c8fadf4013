"""Generative recommender: vocab round trips, trie, constrained beam search vs references, training."""
from __future__ import annotations

import io
import itertools
import numpy as np
import polars as pl
import pytest
import torch

from unisid_pipeline.recommender import (
    GenerativeRecommender,
    RecommenderConfig,
    SIDTrie,
    SIDVocab,
    brute_force_topk,
    build_train_examples,
    constrained_beam_search,
    evaluate_recommender,
    train_recommender,
)
from unisid_pipeline.seeding import seed_everything

TINY = dict(n_encoder_layers=2, n_decoder_layers=2, d_model=32, n_heads=2, d_kv=16, d_ff=64, eval_batch_size=64,
            # the plain TIGER loop these tests were written for: user token, no EMA, validation every epoch
            use_user_token=True, lr_schedule="inverse_sqrt", ema_decay=0.0, eval_every=1, valid_max_users=None)


def sparse_catalog(n_items: int, sizes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n_items distinct random SIDs drawn from the product of ``sizes`` codes (uneven trie)."""
    rng = np.random.default_rng(seed)
    space = np.array(list(itertools.product(*[range(s) for s in sizes])))
    codes = space[rng.choice(len(space), n_items, replace=False)]
    codes[0] = [s - 1 for s in sizes]  # make the inferred level sizes equal ``sizes``
    codes = np.unique(codes, axis=0)
    return np.arange(1000, 1000 + len(codes), dtype=np.int64), codes


def chain_sequences(ad_ids: np.ndarray, n_users: int, length: int, seed: int) -> pl.DataFrame:
    """Users walking the catalog in order: item i is always followed by item (i + 1) mod n."""
    rng = np.random.default_rng(seed)
    n = len(ad_ids)
    rows = []
    for u in range(n_users):
        s = int(rng.integers(n))
        items = [int(ad_ids[(s + j) % n]) for j in range(length)]
        rows.append(
            {
                "user_id": 10 * u + 7,
                "items": items,
                "train_items": items[:-2],
                "valid_history": items[:-2][-20:],
                "valid_target": items[-2],
                "test_history": items[:-1][-20:],
                "test_target": items[-1],
            }
        )
    return pl.DataFrame(rows)


def random_inputs(model: GenerativeRecommender, n_users: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    hist = np.full((n_users, model.config.max_history), -1, dtype=np.int64)
    for i in range(n_users):
        ln = int(rng.integers(1, model.config.max_history + 1))
        hist[i, :ln] = rng.integers(0, model.vocab.n_items, ln)
    users = rng.integers(0, 10**9, n_users)
    return model.make_inputs(torch.from_numpy(hist), users if model.config.use_user_token else None)


def random_model(ad_ids: np.ndarray, codes: np.ndarray, seed: int, **kw) -> GenerativeRecommender:
    seed_everything(seed)
    cfg = RecommenderConfig(**{**TINY, "max_history": 5, "n_user_buckets": 16, **kw})
    return GenerativeRecommender.from_sids(cfg, (ad_ids, codes)).eval()


# ---------------------------------------------------------------------------------------------- vocab
def test_vocab_round_trip_and_layout() -> None:
    ad_ids, codes = sparse_catalog(40, (3, 5, 4), seed=0)
    vocab = SIDVocab(ad_ids, codes, n_user_buckets=7)
    assert vocab.level_sizes == (3, 5, 4)
    assert vocab.offsets == (2, 5, 10)
    assert vocab.user_offset == 14 and vocab.vocab_size == 21
    for a, c in zip(ad_ids.tolist(), codes.tolist()):
        toks = vocab.encode_item(a)
        assert list(toks) == [o + x for o, x in zip(vocab.offsets, c)]
        assert vocab.decode(toks) == a
        assert vocab.decode([*toks, vocab.eos_id, vocab.pad_id]) == a
    hist = [int(ad_ids[3]), int(ad_ids[0])]
    assert vocab.encode_history(hist) == [*vocab.encode_item(hist[0]), *vocab.encode_item(hist[1])]
    users = vocab.user_token([5, 123456789, 5])
    assert users[0] == users[2] and ((users >= 14) & (users < 21)).all()
    table = pl.DataFrame({"ad_id": ad_ids, "codes": codes.tolist()})
    assert SIDVocab.from_sids(table).item_tokens.tolist() == SIDVocab(ad_ids, codes).item_tokens.tolist()
    assert SIDVocab.from_dict(vocab.to_dict()).item_tokens.tolist() == vocab.item_tokens.tolist()


def test_vocab_rejects_collisions_unknown_items_and_invalid_sids() -> None:
    with pytest.raises(ValueError, match="collisions"):
        SIDVocab(np.array([1, 2, 3]), np.array([[0, 1], [0, 1], [1, 0]]))
    vocab = SIDVocab(np.array([1, 2, 3]), np.array([[0, 1], [1, 1], [1, 0]]))
    with pytest.raises(KeyError, match="no SID"):
        vocab.encode_history([1, 99])
    with pytest.raises(ValueError, match="not the SID of any item"):
        vocab.decode([vocab.offsets[0] + 0, vocab.offsets[1] + 0])
    with pytest.raises(ValueError, match="2 tokens"):
        vocab.decode([vocab.offsets[0]])


# ----------------------------------------------------------------------------------------------- trie
def test_trie_lookup_matches_the_set_of_valid_sids() -> None:
    ad_ids, codes = sparse_catalog(30, (3, 4, 5), seed=1)
    trie = SIDTrie(codes, (3, 4, 5))
    assert trie.lookup(codes).tolist() == list(range(len(codes)))
    space = np.array(list(itertools.product(range(3), range(4), range(5))))
    index = {tuple(c): i for i, c in enumerate(codes.tolist())}
    expected = [index.get(tuple(c), -1) for c in space.tolist()]
    assert trie.lookup(space).tolist() == expected
    # allowed[0] at the root = first codes that begin some SID
    assert trie.allowed[0][0].nonzero().flatten().tolist() == sorted(set(codes[:, 0].tolist()))


# ------------------------------------------------------------------------------------- config checks
@pytest.mark.parametrize(
    "field, value",
    [("d_model", 0), ("dropout", 1.0), ("beam_size", 0), ("lr_schedule", "linear"), ("n_user_buckets", 0),
     ("lr", 0.0), ("valid_max_users", 0), ("device", ""), ("max_train_seconds", 0.0),
     ("length_pool_batches", 0), ("compile_length_step", 21), ("ema_decay", 1.0), ("ema_decay", -0.1)],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RecommenderConfig(**{"use_user_token": True, field: value})


# ---------------------------------------------------------------------------------- beam search
def test_beam_search_only_emits_valid_distinct_items_with_their_true_scores() -> None:
    ad_ids, codes = sparse_catalog(45, (4, 6, 5), seed=2)
    model = random_model(ad_ids, codes, seed=0)
    input_ids, mask = random_inputs(model, 48, seed=1)
    items, scores = model.beam_search(input_ids, mask, beam_size=12)
    assert (items >= 0).all() and (items < len(ad_ids)).all()
    assert all(len(set(row)) == 12 for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # each returned item's score is the teacher-forced log-prob of exactly that item's SID
    ref_items, ref = brute_force_topk(model.t5, model.item_tokens, input_ids[:6], mask[:6], k=len(ad_ids))
    full = torch.full((6, len(ad_ids)), float("nan"))
    full.scatter_(1, ref_items, ref)
    torch.testing.assert_close(scores[:6], full.gather(1, items[:6]), rtol=1e-5, atol=1e-5)


def test_beam_larger_than_catalog_pads_with_minus_one() -> None:
    ad_ids, codes = sparse_catalog(7, (3, 4), seed=3)
    model = random_model(ad_ids, codes, seed=1, use_user_token=False)
    input_ids, mask = random_inputs(model, 5, seed=2)
    items, scores = model.beam_search(input_ids, mask, beam_size=10)
    assert (np.sort(items[:, :7].numpy(), axis=1) == np.arange(7)).all()
    assert (items[:, 7:] == -1).all() and torch.isinf(scores[:, 7:]).all()


def test_cached_decoding_equals_uncached() -> None:
    ad_ids, codes = sparse_catalog(60, (5, 6, 4), seed=4)
    model = random_model(ad_ids, codes, seed=2)
    input_ids, mask = random_inputs(model, 32, seed=3)
    trie = model.trie
    fast = constrained_beam_search(model.t5, trie, model.vocab.offsets, input_ids, mask, 10, use_cache=True)
    slow = constrained_beam_search(model.t5, trie, model.vocab.offsets, input_ids, mask, 10, use_cache=False)
    assert torch.equal(fast[0], slow[0])
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-5)


def test_beam_search_equals_brute_force_when_beam_covers_catalog() -> None:
    ad_ids, codes = sparse_catalog(14, (3, 4, 3), seed=5)
    model = random_model(ad_ids, codes, seed=3)
    input_ids, mask = random_inputs(model, 8, seed=4)
    items, scores = model.beam_search(input_ids, mask, beam_size=len(ad_ids))
    ref_items, ref_scores = brute_force_topk(model.t5, model.item_tokens, input_ids, mask, k=len(ad_ids))
    assert torch.equal(items, ref_items)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_gives_same_recommendations() -> None:
    ad_ids, codes = sparse_catalog(20, (4, 5), seed=6)
    model = random_model(ad_ids, codes, seed=4)
    buf = io.BytesIO()
    torch.save(model.to_checkpoint(), buf)
    buf.seek(0)
    loaded = GenerativeRecommender.from_checkpoint(torch.load(buf, weights_only=False))
    assert loaded.config == model.config
    hist = [[int(ad_ids[1]), int(ad_ids[4])], [int(ad_ids[7])]]
    a_ids, a_sc = model.recommend(hist, user_ids=[3, 4], k=5)
    b_ids, b_sc = loaded.recommend(hist, user_ids=[3, 4], k=5)
    assert np.array_equal(a_ids, b_ids) and np.allclose(a_sc, b_sc)
    assert set(a_ids.flatten().tolist()) <= set(ad_ids.tolist())


# ----------------------------------------------------------------------------------------- training
def test_train_examples_are_every_prefix_with_truncated_history() -> None:
    vocab = SIDVocab(np.array([10, 11, 12, 13]), np.array([[0, 0], [0, 1], [1, 0], [1, 1]]))
    seqs = pl.DataFrame({"user_id": [5, 6], "train_items": [[10, 11, 12, 13], [13]]})
    ex = build_train_examples(seqs, vocab, max_history=2)
    assert ex.history_idx.tolist() == [[0, -1], [0, 1], [1, 2]]
    assert ex.target_idx.tolist() == [1, 2, 3]
    assert ex.user_ids.tolist() == [5, 5, 5]


def test_training_is_deterministic_for_a_seed() -> None:
    ad_ids, codes = sparse_catalog(12, (3, 5), seed=7)
    seqs = chain_sequences(ad_ids, n_users=12, length=6, seed=0)
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "n_user_buckets": 8, "batch_size": 16, "epochs": 2,
                               "warmup_steps": 2, "beam_size": 5})
    runs = [train_recommender(cfg, (ad_ids, codes), seqs, seed=s, device="cpu") for s in (1, 1, 2)]
    (m1, h1), (m2, h2), (_, h3) = runs
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]
    assert all(torch.equal(a, b) for a, b in zip(m1.t5.state_dict().values(), m2.t5.state_dict().values()))
    assert [r["train_loss"] for r in h1] != [r["train_loss"] for r in h3]


def test_time_budget_stops_after_the_epoch_that_crosses_it_and_validates_it() -> None:
    ad_ids, codes = sparse_catalog(12, (3, 5), seed=7)
    seqs = chain_sequences(ad_ids, n_users=12, length=6, seed=0)
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "n_user_buckets": 8, "batch_size": 16, "epochs": 50,
                               "warmup_steps": 2, "beam_size": 5, "max_train_seconds": 1e-6})
    _, history = train_recommender(cfg, (ad_ids, codes), seqs, seed=0, device="cpu", eval_every=10)
    assert len(history) == 1 and history[0]["evaluated"] and history[0]["valid_recall@10"] is not None


def test_learns_a_predictable_sequence_and_restores_best_weights() -> None:
    ad_ids, codes = sparse_catalog(30, (8, 8), seed=8)  # ~30 items, 2 levels of 8 codes
    seqs = chain_sequences(ad_ids, n_users=60, length=10, seed=1)
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "use_user_token": False, "dropout": 0.0, "lr": 3e-3,
                               "lr_schedule": "constant", "warmup_steps": 10, "batch_size": 32, "epochs": 8,
                               "patience": 3, "beam_size": 20})
    seed_everything(0)
    untrained = GenerativeRecommender.from_sids(cfg, (ad_ids, codes))
    before = evaluate_recommender(untrained, seqs, split="test")
    seen: list[dict] = []
    model, history = train_recommender(cfg, (ad_ids, codes), seqs, seed=0, device="cpu", on_epoch=seen.append)
    after = evaluate_recommender(model, seqs, split="test")
    assert before["recall@1"] < 0.2
    assert after["recall@1"] > 0.8, after
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert seen == history and [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    best = max((r["valid_recall@10"], r["valid_ndcg@10"]) for r in history)
    valid = evaluate_recommender(model, seqs, split="valid")
    assert (valid["recall@10"], valid["ndcg@10"]) == best


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_with_the_uninterrupted_weights(tmp_path) -> None:
    ad_ids, codes = sparse_catalog(12, (3, 5), seed=7)
    seqs = chain_sequences(ad_ids, n_users=12, length=6, seed=0)
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "n_user_buckets": 8, "batch_size": 16, "epochs": 6,
                               "warmup_steps": 2, "beam_size": 5, "ema_decay": 0.9, "eval_every": 2})
    ref, ref_hist = train_recommender(cfg, (ad_ids, codes), seqs, seed=3, device="cpu")

    def killed_after_epoch_4(row: dict) -> None:
        if row["epoch"] == 4:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        train_recommender(cfg, (ad_ids, codes), seqs, seed=3, device="cpu", checkpoint_dir=tmp_path,
                          on_epoch=killed_after_epoch_4)
    [ckpt] = tmp_path.glob("seed3-*.pt")
    seen: list[dict] = []
    model, hist = train_recommender(cfg, (ad_ids, codes), seqs, seed=3, device="cpu", checkpoint_dir=tmp_path,
                                    on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [5, 6]  # epochs 1-4 were not trained again
    assert [r["train_loss"] for r in hist] == [r["train_loss"] for r in ref_hist]
    assert all(torch.equal(a, b) for a, b in zip(model.t5.state_dict().values(), ref.t5.state_dict().values()))
    # a finished run: the same call returns the result without training
    again, _ = train_recommender(cfg, (ad_ids, codes), seqs, seed=3, device="cpu", checkpoint_dir=tmp_path,
                                 on_epoch=lambda r: pytest.fail("trained again"))
    assert all(torch.equal(a, b) for a, b in zip(again.t5.state_dict().values(), ref.t5.state_dict().values()))
    # other settings start afresh and replace the seed's old checkpoint; other seeds keep theirs
    train_recommender(cfg, (ad_ids, codes), seqs, seed=4, device="cpu", checkpoint_dir=tmp_path)
    other = RecommenderConfig.from_dict({**cfg.to_dict(), "epochs": 2})
    _, short = train_recommender(other, (ad_ids, codes), seqs, seed=3, device="cpu", checkpoint_dir=tmp_path)
    assert len(short) == 2 and not ckpt.exists() and len(list(tmp_path.glob("seed3-*.pt"))) == 1
    assert len(list(tmp_path.glob("seed4-*.pt"))) == 1


# ---------------------------------------------------------------------------------------------- weight EMA
def test_parameter_ema_follows_the_warmed_up_average_and_restores_the_training_weights() -> None:
    from unisid_pipeline.recommender.ema import ParameterEMA

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
    ema = ParameterEMA(lin, decay=0.5)
    expected = torch.tensor([[1.0, -1.0]])
    for value in (3.0, 5.0, 7.0):
        with torch.no_grad():
            lin.weight.fill_(value)
        d = min(0.5, (1 + ema.updates) / (10 + ema.updates))  # 0.1, then 0.1818..., then 0.25
        ema.update()
        expected = d * expected + (1 - d) * value
    assert torch.allclose(ema.shadow[0], expected)
    ptr = lin.weight.data_ptr()
    with pytest.raises(RuntimeError, match="inside"):
        with ema.applied():
            assert torch.allclose(lin.weight, expected) and lin.weight.data_ptr() == ptr  # same storage
            raise RuntimeError("inside")
    assert torch.equal(lin.weight, torch.full((1, 2), 7.0))  # put back, also after an error
    with pytest.raises(ValueError, match="decay"):
        ParameterEMA(lin, decay=1.0)


def test_ema_training_validates_and_returns_the_averaged_weights() -> None:
    ad_ids, codes = sparse_catalog(30, (8, 8), seed=8)
    seqs = chain_sequences(ad_ids, n_users=60, length=10, seed=1)
    base = {**TINY, "max_history": 3, "use_user_token": False, "dropout": 0.0, "lr": 3e-3, "lr_schedule": "constant",
            "warmup_steps": 10, "batch_size": 32, "epochs": 8, "patience": 3, "beam_size": 20}
    raw, raw_hist = train_recommender(RecommenderConfig(**base), (ad_ids, codes), seqs, seed=0, device="cpu")
    model, history = train_recommender(RecommenderConfig(**{**base, "ema_decay": 0.9}), (ad_ids, codes), seqs,
                                       seed=0, device="cpu")
    # the EMA does not change training (same losses while both run; early stopping may end them apart),
    # only which weights are validated and kept
    both = min(len(history), len(raw_hist))
    assert [r["train_loss"] for r in history[:both]] == [r["train_loss"] for r in raw_hist[:both]]
    assert not all(torch.equal(a, b) for a, b in zip(model.t5.state_dict().values(), raw.t5.state_dict().values()))
    best = max((r["valid_recall@10"], r["valid_ndcg@10"]) for r in history)
    valid = evaluate_recommender(model, seqs, split="valid")
    assert (valid["recall@10"], valid["ndcg@10"]) == best  # the returned weights are the validated (averaged) ones
    assert evaluate_recommender(model, seqs, split="test")["recall@1"] > 0.8


# ---------------------------------------------------------------------------------------------- batching
def test_length_grouped_epoch_visits_every_row_once_in_shorter_padded_batches() -> None:
    from unisid_pipeline.recommender.batching import epoch_batches

    rng = np.random.default_rng(0)
    lengths = torch.from_numpy(np.minimum(rng.geometric(0.15, 5000), 20))
    plain = epoch_batches(lengths, 64, torch.Generator().manual_seed(3))
    grouped = epoch_batches(lengths, 64, torch.Generator().manual_seed(3), pool_batches=16)
    for plan in (plain, grouped):
        assert sorted(torch.cat(plan).tolist()) == list(range(5000))
    pad = lambda plan: sum(len(b) * int(lengths[b].max()) for b in plan)  # noqa: E731  padded history slots
    assert pad(grouped) < 0.7 * pad(plain)
    # the same generator state gives the same plan (every DDP rank draws it alike); drop_last keeps full batches
    again = epoch_batches(lengths, 64, torch.Generator().manual_seed(3), pool_batches=16)
    assert all(torch.equal(a, b) for a, b in zip(grouped, again))
    dropped = epoch_batches(lengths, 64, torch.Generator().manual_seed(3), pool_batches=16, drop_last=True)
    assert {len(b) for b in dropped} == {64} and len(torch.cat(dropped)) == 5000 - 5000 % 64


def test_plain_batches_are_the_epoch_permutation_cut_in_order() -> None:
    from unisid_pipeline.recommender.batching import epoch_batches, padded_length

    lengths = torch.ones(10, dtype=torch.int64)
    plan = epoch_batches(lengths, 4, torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(plan), torch.randperm(10, generator=torch.Generator().manual_seed(1)))
    assert [len(b) for b in plan] == [4, 4, 2]
    assert [padded_length(n, 20, 4) for n in (0, 1, 4, 5, 19, 20)] == [4, 4, 4, 8, 20, 20]
    assert padded_length(7, 20, 20) == 20 and padded_length(7, 20, 1) == 7


def test_plain_random_batches_still_learn_a_predictable_sequence() -> None:
    """length_pool_batches=1 (the pre-grouping behaviour); the default (grouped) is tested above."""
    ad_ids, codes = sparse_catalog(30, (8, 8), seed=8)
    seqs = chain_sequences(ad_ids, n_users=60, length=10, seed=1)
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "use_user_token": False, "dropout": 0.0, "lr": 3e-3,
                               "lr_schedule": "constant", "warmup_steps": 10, "batch_size": 32, "epochs": 8,
                               "patience": 3, "beam_size": 20, "length_pool_batches": 1})
    model, _ = train_recommender(cfg, (ad_ids, codes), seqs, seed=0, device="cpu")
    assert evaluate_recommender(model, seqs, split="test")["recall@1"] > 0.8


def test_bf16_on_a_cpu_without_bf16_instructions_runs_in_fp32_with_a_warning(caplog) -> None:
    """bf16 autocast is emulated on such CPUs (~11x slower than fp32 for UniSID), so the request is ignored there."""
    import unisid_pipeline.recommender.model as model_mod
    import unisid_pipeline.seeding as seeding

    cpu = torch.device("cpu")
    seeding._bf16_warned.discard("RecommenderConfig.bf16")
    with caplog.at_level("WARNING", logger="unisid_pipeline.seeding"):
        with model_mod.autocast_ctx(cpu, True, native_bf16=False):
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        with model_mod.autocast_ctx(cpu, True, native_bf16=False):
            pass
    assert sum("bf16=True ignored" in r.getMessage() for r in caplog.records) == 1  # once per process, not per step
    with model_mod.autocast_ctx(cpu, True, native_bf16=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with model_mod.autocast_ctx(cpu, False, native_bf16=True):
        assert not torch.is_autocast_enabled("cpu")
