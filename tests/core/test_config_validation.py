"""Impossible configs fail at once with a message naming the field; what only the data can tell (batch larger
than the data) fails at the start of training with the field and the data size. (n_levels=0 of UniSIDConfig
and RQKMeansConfig is tested in test_unisid.py / test_rq.py.)"""
import numpy as np
import pytest
import torch

from unisid_pipeline.embeddings import TextEncoderConfig
from unisid_pipeline.llm import SummarizerConfig
from unisid_pipeline.models.rq import RQKMeansConfig, RQVAEConfig, fit_rq_kmeans, train_rq_vae
from unisid_pipeline.recommender import RecommenderConfig, train_recommender
from unisid_pipeline.unisid import UniSIDConfig, train_unisid

SMALL_VAE = dict(n_levels=2, codebook_size=4, latent_dim=4, hidden_dims=(8,), epochs=1, kmeans_init_size=16)


@pytest.mark.parametrize("cls,kwargs,message", [
    (UniSIDConfig, {"codebook_size": 1}, "codebook_size must be >= 2"),
    (RQKMeansConfig, {"codebook_size": 1}, "codebook_size must be an int >= 2, got 1"),
    (RQVAEConfig, {"n_levels": 0}, "n_levels must be an int >= 1, got 0"),
    (RQVAEConfig, {"codebook_size": 1}, "codebook_size must be an int >= 2, got 1"),
    (RQVAEConfig, {"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
    (RecommenderConfig, {"device": "tpu"}, "RecommenderConfig.device: unknown device 'tpu': use 'cpu', 'cuda'"),
    (SummarizerConfig, {"device": "gpu0"}, "SummarizerConfig.device: unknown device 'gpu0'"),
    (TextEncoderConfig, {"device": "cuda;0"}, "TextEncoderConfig.device: unknown device 'cuda;0'"),
])
def test_impossible_core_configs_fail_naming_the_field(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def _x(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)


@pytest.mark.parametrize("device", ["tpu", "gpu0", "cuda:7"])
def test_unknown_or_missing_device_fails_before_training(device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=f"device '{device}'"):
        fit_rq_kmeans(RQKMeansConfig(n_levels=2, codebook_size=4, n_iter=2), _x(), seed=0, device=device)
    with pytest.raises(ValueError, match=f"device '{device}'"):
        train_rq_vae(RQVAEConfig(**SMALL_VAE, batch_size=8), _x(), seed=0, device=device)


def test_rq_vae_batch_larger_than_the_data_names_field_and_size():
    with pytest.raises(ValueError, match=r"RQVAEConfig.batch_size=64 is larger than the data \(32 items\): "
                                         r"set batch_size to at most 32"):
        train_rq_vae(RQVAEConfig(**SMALL_VAE, batch_size=64), _x(32), seed=0, device="cpu")


def test_unisid_batch_larger_than_the_data_and_unknown_device_fail_before_training():
    from test_unisid import labels_of, make_ads, train_cfg

    ads = make_ads(per_leaf=2)  # 8 ads
    with pytest.raises(ValueError, match=r"UniSIDTrainConfig.batch_size=16 is larger than the data \(8 ads\): "
                                         r"set batch_size to at most 8"):
        train_unisid(train_cfg(batch_size=16), ads, None, labels_of(ads), seed=0, device="cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        train_unisid(train_cfg(batch_size=8), ads, None, labels_of(ads), seed=0, device="tpu")


def test_recommender_batch_larger_than_the_data_names_field_and_size():
    from test_recommender import TINY, chain_sequences, sparse_catalog

    ad_ids, codes = sparse_catalog(12, (3, 5), seed=7)
    seqs = chain_sequences(ad_ids, n_users=4, length=5, seed=0)  # 4 users x 2 training prefixes
    cfg = RecommenderConfig(**{**TINY, "max_history": 3, "n_user_buckets": 8, "batch_size": 64, "epochs": 1})
    with pytest.raises(ValueError, match=r"RecommenderConfig.batch_size=64 is larger than the data \(\d+ training "
                                         r"examples\): set batch_size to at most \d+"):
        train_recommender(cfg, (ad_ids, codes), seqs, seed=0, device="cpu")
