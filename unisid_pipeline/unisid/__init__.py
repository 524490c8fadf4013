"""UniSID: end-to-end Semantic ID + embedding generation for ads (DESIGN §2).

Public API: `UniSIDConfig`, `UniSIDTrainConfig`, `UniSIDModel` (encode / encode_codes /
to_checkpoint / from_checkpoint, picklable), `train_unisid`, `code_stats`; the losses live in
`unisid_pipeline.unisid.losses`, the input layout in `unisid_pipeline.unisid.inputs`.

Choices where the paper is silent (ours; all in the configs):
- K=256 codes per level (paper 2048), L=3, embedding 256-d from an MLP head, L2-normalised.
- Temperatures: L_sid 0.1 (SupCon range), L_emb 0.05 (SimCSE). 0.05 for L_sid was worse in a
  512-item Beauty run (V-measure 0.24/0.31/0.47 vs 0.24/0.38/0.60).
- AdamW, lr 4e-5 for a pretrained backbone (paper), 1e-3 for new parameters, 5% warm-up,
  cosine decay to 10%, weight decay 0.01 (none on biases/norms), clip 1.0.
- Two views per ad: backbone dropout + 10% text-token dropout + shuffled attribute order.
- L_rec reads the first view only; the tiny decoder predicts over the targets' token ids only.
- The category path is in the input by default (paper; same information as the RQ baselines).
- Codes: with the paper's cosine losses we saw no collapse but the opposite: the cosine is
  rotation-invariant, so one category's logit vectors align (mean cosine 0.86) while their argmax
  still varies (top-1 vs top-2 normalised logit gap 0.012), giving ~10 codes per level-1
  category after 2 epochs; longer training helps (V-measure L1 0.24 -> 0.44 from 2 to 6 epochs).
  Off-by-default extras, measured on the same run: `balance_weight` (IIC-style balance) changed
  nothing at 0.1-1.0; `consistency_weight` (CE to the category's argmax code) collapsed every ad
  onto one code until its target was centred on the batch mean, then gave V L1 0.34 / L2 0.32 /
  L3 0.57 vs 0.24 / 0.38 / 0.60; `sid_space="probs"` was worse (0.28 / 0.34 / 0.36).
"""
from unisid_pipeline.unisid.config import INSTRUCTION, UniSIDConfig, UniSIDTrainConfig
from unisid_pipeline.unisid.model import UniSIDModel, UniSIDOutput
from unisid_pipeline.unisid.train import code_stats, train_unisid

__all__ = [
    "INSTRUCTION", "UniSIDConfig", "UniSIDModel", "UniSIDOutput", "UniSIDTrainConfig", "code_stats", "train_unisid",
]
