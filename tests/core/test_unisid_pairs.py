"""UniSID with co-interaction positives and SIDs quantized from its own embedding (sid_source='embedding_rq')."""
from __future__ import annotations

import os
import pickle

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from unisid_pipeline.data.sequences import build_user_sequences
from unisid_pipeline.retrieval import heldout_pairs
from unisid_pipeline.unisid import UniSIDConfig, UniSIDTrainConfig, train_unisid
from unisid_pipeline.unisid.losses import embedding_infonce_loss, pair_infonce_loss, pair_labels, two_view_labels
from unisid_pipeline.unisid.pairs import co_interaction_partners, sample_partners, transition_pairs
from tests.core.test_unisid import _one_thread, labels_of, make_ads  # noqa: F401 (autouse fixture: one thread)

MODEL = UniSIDConfig(backbone="tiny", codebook_size=4, emb_dim=16, max_length=64, sid_source="embedding_rq")


def seqs_of(rows: dict[int, list[int]]) -> pl.DataFrame:
    inter = pl.DataFrame([{"user_id": u, "ad_id": a, "timestamp": t} for u, items in rows.items()
                          for t, a in enumerate(items)], schema={"user_id": pl.Int64, "ad_id": pl.Int64, "timestamp": pl.Int64})
    return build_user_sequences(inter)[0]


def test_partners_come_from_training_clicks_only():
    # user 1: 10 11 12 | valid 13 | test 14; user 2: 12 10 | valid 11 | test 13
    seqs = seqs_of({1: [10, 11, 12, 13, 14], 2: [12, 10, 11, 13]})
    ad_ids = np.array([10, 11, 12, 13, 14, 15])
    assert sorted(map(tuple, transition_pairs(ad_ids, seqs).tolist())) == [(0, 1), (1, 2), (2, 0)]
    p = co_interaction_partners(ad_ids, seqs)
    lists = [sorted(p.values[p.offsets[i]:p.offsets[i + 1]].tolist()) for i in range(len(ad_ids))]
    assert lists == [[1, 2], [0, 2], [0, 1], [], [], []]  # 13 and 14 are only ever evaluation targets
    # the held-out pairs are exactly what training never saw
    assert heldout_pairs(seqs, "test").tolist() == [[13, 14], [11, 13]]
    assert heldout_pairs(seqs, "valid").tolist() == [[12, 13], [10, 11]]


def test_sample_partners_is_seeded_and_falls_back_to_the_ad_itself():
    seqs = seqs_of({1: [10, 11, 12, 13, 14], 2: [12, 10, 11, 13]})
    p = co_interaction_partners(np.array([10, 11, 12, 13, 14, 15]), seqs)
    rows = np.array([0, 1, 2, 3, 5, 0, 0, 0])
    a = sample_partners(p, rows, np.random.default_rng(3))
    assert np.array_equal(a, sample_partners(p, rows, np.random.default_rng(3)))
    assert a[3] == 3 and a[4] == 5  # no partner: its own second view
    assert all(a[i] in (1, 2) for i in (0, 5, 6, 7)) and a[1] in (0, 2) and a[2] in (0, 1)


def test_pair_labels_generalise_two_view_labels():
    lab = torch.tensor([3, -1, 5, -1])
    assert torch.equal(pair_labels(lab, lab, torch.ones(4, dtype=torch.bool)), two_view_labels(lab))
    got = pair_labels(lab, torch.tensor([3, -1, 7, -1]), torch.tensor([False, False, False, True]))
    # an unknown partner label is its own id unless the partner is the ad itself
    assert got.tolist() == [3, -2, 5, -4, 3, -6, 7, -4]


def test_pair_infonce_equals_nt_xent_for_two_views_and_never_uses_an_ad_as_its_own_negative():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(8, 5), dim=-1)
    keys = torch.arange(4).repeat(2)
    assert torch.allclose(pair_infonce_loss(z, keys, 0.1), embedding_infonce_loss(z, 0.1), atol=1e-6)
    # ad 0 drawn twice: its duplicate row leaves the denominator, so moving the duplicate changes nothing
    keys = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    z2 = z.clone()
    z2[7] = F.normalize(torch.randn(5), dim=-1)
    a = pair_infonce_loss(z, keys, 0.1)
    b = pair_infonce_loss(z2, keys, 0.1)
    sim = z @ z.T / 0.1
    assert not torch.isclose(a, b)  # row 7 is row 3's positive, so it matters there ...
    row0 = -(sim[0, 4] - torch.logsumexp(sim[0, [1, 2, 3, 4, 5, 6]], 0))  # ... but is no negative of row 0
    full = torch.stack([-(sim[i, (i + 4) % 8] - torch.logsumexp(sim[i][[j for j in range(8) if j != i and (keys[j] != keys[i] or j == (i + 4) % 8)]], 0)) for i in range(8)])
    assert torch.isclose(full[0], row0) and torch.isclose(a, full.mean(), atol=1e-6)


def _data():
    ads = make_ads(per_leaf=4, image_dim=0)  # 16 ads, 4 leaves
    ids = ads["ad_id"].to_list()
    rng = np.random.default_rng(0)
    seqs = seqs_of({u: [ids[j] for j in rng.choice(len(ids), 6, replace=False)] for u in range(20)})
    return ads, seqs


def cfg(**kw) -> UniSIDTrainConfig:
    base = dict(model=MODEL, max_steps=4, batch_size=8, use_rec=False, checkpoint_every=0, lr_heads=3e-3,
                code_stats_sample=8, emb_positives="co_interaction")
    base.update(kw)
    return UniSIDTrainConfig(**base)


def test_co_interaction_training_needs_sequences():
    ads, _ = _data()
    with pytest.raises(ValueError, match="co_interaction_partners"):
        train_unisid(cfg(), ads, None, labels_of(ads), seed=0, device="cpu")


def test_embedding_rq_sids_are_deterministic_and_survive_a_checkpoint():
    ads, seqs = _data()
    partners = co_interaction_partners(ads["ad_id"].to_numpy(), seqs)
    m1, h1 = train_unisid(cfg(), ads, None, labels_of(ads), seed=5, device="cpu", partners=partners)
    m2, _ = train_unisid(cfg(), ads, None, labels_of(ads), seed=5, device="cpu", partners=partners)
    codes, emb, score = m1.encode(ads)
    assert np.array_equal(codes, m2.encode(ads)[0])
    # the SID is the quantizer's code of the embedding; the score's argmax is the last code
    assert np.array_equal(codes, m1.sid_quantizer.encode(emb)) and np.array_equal(score.argmax(1), codes[:, -1])
    assert [r["level"] for r in h1["quantizer"]] == [1, 2, 3] and all(0 < r["usage"] <= 1 for r in h1["quantizer"])
    again = pickle.loads(pickle.dumps(m1))
    assert np.array_equal(again.encode(ads)[0], codes)
    assert m1.encode_heads(ads)[0].shape == codes.shape


def test_unfitted_embedding_rq_model_says_what_to_do():
    from unisid_pipeline.unisid import UniSIDModel

    ads, _ = _data()
    with pytest.raises(ValueError, match="fit_sid_quantizer"):
        UniSIDModel(MODEL).encode(ads)
