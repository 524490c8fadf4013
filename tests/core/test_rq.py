"""Residual quantization: distances, k-means, the residual skeleton and both tokenizers."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from unisid_pipeline.models.codebook import (
    CodebookLevel,
    assign_nearest,
    assign_nearest_reference,
    balanced_assign,
    balanced_assign_reference,
    cluster_capacity,
    kmeans,
    kmeans_plus_plus_init,
    squared_distances,
    squared_distances_reference,
    usage_and_perplexity,
)
from unisid_pipeline.models.rq import (
    RQKMeansConfig,
    RQKMeansTokenizer,
    RQVAEConfig,
    RQVAETokenizer,
    ResidualQuantizer,
    fit_rq_kmeans,
    train_rq_vae,
)


def clustered(n: int = 600, d: int = 16, n_clusters: int = 8, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    labels = rng.integers(n_clusters, size=n)
    return (centres[labels] + noise * rng.normal(size=(n, d))).astype(np.float32)


KM = RQKMeansConfig(n_levels=3, codebook_size=8, n_iter=20, init_sample_size=0)
VAE = RQVAEConfig(
    n_levels=2, codebook_size=8, latent_dim=8, hidden_dims=(32,), epochs=15, batch_size=128,
    lr=3e-3, kmeans_init_size=256, kmeans_init_iters=10,
)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered()


@pytest.fixture(scope="module")
def vae(data: np.ndarray) -> tuple[RQVAETokenizer, dict]:
    return train_rq_vae(VAE, data, seed=3, device="cpu")


# ------------------------------------------------------------------ distances and assignment


def test_fast_distances_match_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(40, 12, generator=g), torch.randn(9, 12, generator=g) * 2
    assert torch.allclose(squared_distances(x, c), squared_distances_reference(x, c), rtol=1e-4, atol=1e-4)


def test_batched_assignment_matches_reference() -> None:
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(300, 8, generator=g), torch.randn(16, 8, generator=g)
    codes, dists = assign_nearest(x, c, batch_size=7)
    assert torch.equal(codes, assign_nearest_reference(x, c))
    assert torch.allclose(dists, squared_distances_reference(x, c).min(1).values, atol=1e-4)


def test_balanced_assignment_matches_sequential_reference_and_respects_cap() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 6, generator=g)
    x[:120] += 4.0  # most rows crowd near a few codewords, so capacity binds
    c = torch.randn(10, 6, generator=g)
    codes, held = balanced_assign(x, c, capacity=22, batch_size=17)
    assert torch.equal(codes, balanced_assign_reference(x, c, capacity=22))
    assert int(torch.bincount(codes, minlength=10).max()) <= 22
    assert torch.allclose(held, squared_distances(x, c)[torch.arange(200), codes])
    # stability: a row sits away from a closer codeword only if that codeword is full of closer rows
    dist = squared_distances(x, c)
    counts = torch.bincount(codes, minlength=10)
    for i in range(200):
        for k in (dist[i] < dist[i, codes[i]]).nonzero().flatten().tolist():
            members = (codes == k).nonzero().flatten()
            assert counts[k] == 22 and bool((dist[members, k] < dist[i, k]).all())


def test_balanced_with_loose_cap_is_nearest_assignment() -> None:
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(100, 5, generator=g), torch.randn(7, 5, generator=g)
    assert torch.equal(balanced_assign(x, c, capacity=100)[0], assign_nearest(x, c)[0])


# ------------------------------------------------------------------ k-means


def test_kmeans_plus_plus_is_seeded_and_picks_data_rows() -> None:
    x = torch.from_numpy(clustered(200, 8))
    a = kmeans_plus_plus_init(x, 8, torch.Generator().manual_seed(5))
    b = kmeans_plus_plus_init(x, 8, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert all(bool((x == row).all(1).any()) for row in a)


def test_kmeans_recovers_well_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    x = torch.from_numpy((rng.normal(size=(4, 6)) * 10)[labels] + rng.normal(size=(200, 6)) * 0.1).float()
    res = kmeans(x, 4, 20, torch.Generator().manual_seed(0))
    # each true cluster maps to exactly one code and vice versa
    pairs = {(int(a), int(b)) for a, b in zip(labels, res.codes)}
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    assert res.inertia_curve[-1] <= res.inertia_curve[0]


def test_balanced_kmeans_never_exceeds_its_cap() -> None:
    x = torch.from_numpy(clustered(500, 8, n_clusters=3))  # 3 natural clusters, 10 codes
    cap = cluster_capacity(500, 10, 1.2)
    res = kmeans(x, 10, 15, torch.Generator().manual_seed(0), capacity=cap)
    assert cap == 60 and int(torch.bincount(res.codes, minlength=10).max()) <= cap
    tok, _ = fit_rq_kmeans(
        RQKMeansConfig(n_levels=2, codebook_size=10, n_iter=10, balanced=True, max_cluster_size_factor=1.2),
        x.numpy(), seed=0, device="cpu",
    )
    codes = tok.encode(x.numpy())
    for l in range(2):
        assert np.bincount(codes[:, l], minlength=10).max() <= cap


def test_usage_and_perplexity_hand_computed() -> None:
    usage, ppl = usage_and_perplexity(torch.tensor([2, 2, 0, 0]))
    assert usage == 0.5 and ppl == pytest.approx(2.0)


# ------------------------------------------------------------------ residual skeleton


def test_more_levels_reconstruct_better(data: np.ndarray) -> None:
    errors = []
    for n_levels in (1, 2, 3):
        tok, _ = fit_rq_kmeans(RQKMeansConfig(n_levels=n_levels, codebook_size=8, n_iter=20), data, seed=0, device="cpu")
        recon = tok.decode_embedding(tok.encode(data))
        errors.append(float(((recon - data) ** 2).sum(1).mean()))
    assert errors[0] > errors[1] > errors[2]


def test_encode_decode_exact_on_separated_codebook() -> None:
    d, K, L = 16, 8, 3
    g = torch.Generator().manual_seed(0)
    rq = ResidualQuantizer(L, K, d)
    for l, level in enumerate(rq.levels):  # orthonormal codewords, each level 10x finer than the last
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        level.set_codewords(q[:K] * 10.0 ** (-l))
    codes = torch.randint(K, (500, L), generator=g)
    assert torch.equal(rq.encode(rq.decode(codes)), codes)


def test_dead_code_reinit_revives_unused_codes() -> None:
    g = torch.Generator().manual_seed(0)
    level = CodebookLevel(8, 4)
    level.set_codewords(torch.cat([torch.randn(4, 4, generator=g) * 0.1, torch.full((4, 4), 100.0)]))
    residuals = torch.randn(64, 4, generator=g)
    counts = torch.bincount(level.assign(residuals), minlength=8)
    assert counts[4:].sum() == 0
    revived = level.reinit_dead(residuals, counts == 0, g)
    assert revived.tolist() == [4, 5, 6, 7]
    assert (torch.bincount(level.assign(residuals), minlength=8) > 0).all()


# ------------------------------------------------------------------ RQ-KMeans tokenizer


def test_rq_kmeans_same_seed_same_codes(data: np.ndarray) -> None:
    a, hist = fit_rq_kmeans(KM, data, seed=7, device="cpu")
    b, _ = fit_rq_kmeans(KM, data, seed=7, device="cpu")
    codes = a.encode(data)
    assert codes.dtype == np.int64 and codes.shape == (600, 3) and codes.min() >= 0 and codes.max() < 8
    assert np.array_equal(codes, b.encode(data))
    assert hist["level"] == [0, 1, 2]
    assert hist["relative_residual_norm"][0] > hist["relative_residual_norm"][2]


def test_rq_kmeans_last_level_distances_agree_with_codes(data: np.ndarray) -> None:
    tok, _ = fit_rq_kmeans(KM, data, seed=0, device="cpu")
    codes = tok.encode(data)
    dist = tok.last_level_distances(data)
    assert dist.shape == (600, 8)
    assert np.array_equal(dist.argmin(1), codes[:, -1])
    recon = tok.decode_embedding(codes)
    assert np.allclose(dist[np.arange(600), codes[:, -1]], ((data - recon) ** 2).sum(1), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["checkpoint", "pickle"])
def test_rq_kmeans_round_trips(data: np.ndarray, kind: str) -> None:
    tok, _ = fit_rq_kmeans(KM, data, seed=0, device="cpu")
    if kind == "checkpoint":
        again = RQKMeansTokenizer.from_checkpoint(pickle.loads(pickle.dumps(tok.to_checkpoint())))
    else:
        again = pickle.loads(pickle.dumps(tok))
    assert again.config == tok.config
    assert np.array_equal(again.encode(data), tok.encode(data))


def test_configs_reject_bad_fields() -> None:
    with pytest.raises(ValueError, match="n_levels"):
        RQKMeansConfig(n_levels=0)
    with pytest.raises(ValueError, match="max_cluster_size_factor"):
        RQKMeansConfig(max_cluster_size_factor=0.5)
    with pytest.raises(ValueError, match="optimizer"):
        RQVAEConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="codebook_size"):
        fit_rq_kmeans(RQKMeansConfig(codebook_size=64), clustered(20), seed=0, device="cpu")


# ------------------------------------------------------------------ RQ-VAE tokenizer


def test_rq_vae_same_seed_same_codes(data: np.ndarray, vae: tuple[RQVAETokenizer, dict]) -> None:
    small = dataclasses.replace(VAE, epochs=2)
    a, _ = train_rq_vae(small, data, seed=3, device="cpu")
    b, _ = train_rq_vae(small, data, seed=3, device="cpu")
    assert np.array_equal(a.encode(data), b.encode(data))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_rq_vae_uses_codes_and_beats_the_mean(data: np.ndarray, vae: tuple[RQVAETokenizer, dict]) -> None:
    model, history = vae
    codes = model.encode(data)
    assert all(len(np.unique(codes[:, l])) > 1 for l in range(VAE.n_levels))
    recon = model.decode_embedding(codes)
    err = float(((recon - data) ** 2).sum(1).mean())
    baseline = float(((data - data.mean(0)) ** 2).sum(1).mean())
    assert err < 0.5 * baseline
    assert history["epoch"] == list(range(VAE.epochs))
    assert history["recon_loss"][-1] < history["recon_loss"][0]
    assert set(history) >= {"loss", "seconds", "usage_level_0", "perplexity_level_1", "dead_codes_reinit_level_1"}


def test_rq_vae_last_level_distances_agree_with_codes(data: np.ndarray, vae: tuple[RQVAETokenizer, dict]) -> None:
    model, _ = vae
    assert np.array_equal(model.last_level_distances(data).argmin(1), model.encode(data)[:, -1])


@pytest.mark.parametrize("kind", ["checkpoint", "pickle"])
def test_rq_vae_round_trips(data: np.ndarray, vae: tuple[RQVAETokenizer, dict], kind: str) -> None:
    model, _ = vae
    if kind == "checkpoint":
        again = RQVAETokenizer.from_checkpoint(pickle.loads(pickle.dumps(model.to_checkpoint())))
    else:
        again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.encode(data), model.encode(data))
    assert np.array_equal(again.decode_embedding(model.encode(data)), model.decode_embedding(model.encode(data)))


def test_rq_vae_standardized_inputs_ignore_per_dimension_scale_and_offset(data: np.ndarray) -> None:
    """With standardize_inputs the encoder sees each dimension as z-scores, so rescaling and shifting dimensions
    (by powers of two: exact in float) gives the same codes, and a dimension 1,000x wider than the rest does not
    take over; reconstructions come back in input units and survive a checkpoint."""
    std_vae = dataclasses.replace(VAE, epochs=3, standardize_inputs=True)
    scale = np.where(np.arange(data.shape[1]) % 2 == 0, 4.0, 0.25).astype(np.float32)
    a, _ = train_rq_vae(std_vae, data, seed=1, device="cpu")
    b, _ = train_rq_vae(std_vae, data * scale + 2.0, seed=1, device="cpu")
    assert np.array_equal(a.encode(data), b.encode(data * scale + 2.0))
    wide = data.copy()
    wide[:, 0] *= 1024.0  # one dimension dominates the raw squared error
    plain, _ = train_rq_vae(dataclasses.replace(std_vae, standardize_inputs=False), wide, seed=1, device="cpu")
    stdz, _ = train_rq_vae(std_vae, wide, seed=1, device="cpu")
    rest = lambda m: float(((m.decode_embedding(m.encode(wide))[:, 1:] - wide[:, 1:]) ** 2).sum(1).mean())  # noqa: E731
    assert rest(stdz) < rest(plain)  # the other 15 dimensions are still reconstructed
    out = stdz(torch.from_numpy(wide))
    assert np.allclose(out.reconstruction.detach().numpy(), stdz.decode_embedding(out.codes), rtol=1e-4, atol=1e-2)
    again = RQVAETokenizer.from_checkpoint(stdz.to_checkpoint())
    assert np.array_equal(again.encode(wide), stdz.encode(wide))


def test_rq_vae_checkpoint_from_before_standardization_loads(vae: tuple[RQVAETokenizer, dict], data: np.ndarray) -> None:
    model, _ = vae
    old = model.to_checkpoint()
    del old["config"]["standardize_inputs"]  # checkpoints written before the field existed
    assert np.array_equal(RQVAETokenizer.from_checkpoint(old).encode(data), model.encode(data))


def test_rq_vae_reinit_revives_a_collapsed_codebook(data: np.ndarray) -> None:
    """Without k-means init the tiny uniform codebook collapses onto few codes; re-init spreads it."""
    base = dataclasses.replace(VAE, kmeans_init=False, epochs=4)
    _, without = train_rq_vae(dataclasses.replace(base, reinit_dead_codes=False), data, seed=0, device="cpu")
    _, with_reinit = train_rq_vae(base, data, seed=0, device="cpu")
    assert sum(with_reinit["dead_codes_reinit_level_0"]) > 0
    # usage in the epochs after the first re-init is higher on average
    assert np.mean(with_reinit["usage_level_0"][1:]) > np.mean(without["usage_level_0"][1:])


def test_read_only_embeddings_tokenize_without_a_torch_warning():
    """polars hands out read-only arrays; tokenizing one must not print torch's non-writable warning (a fresh
    process, since torch warns once per process) nor change the array."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from unisid_pipeline.models.rq import RQKMeansConfig, fit_rq_kmeans\n"
            "x = np.random.default_rng(0).normal(size=(300, 8)).astype('float32'); x.setflags(write=False)\n"
            "before = x.copy()\n"
            "tok, _ = fit_rq_kmeans(RQKMeansConfig(codebook_size=8), x, seed=0, device='cpu')\n"
            "tok.encode(x); assert (x == before).all()\n")
    res = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
