"""Probe (issue 16): a base-size XLM-R's packed encoder with the short and the long attention tile.

`PackedEncoder` serves `kernels.ATTENTION_CONFIG`; `kernels.LONG_ATTENTION_CONFIG` is faster on
long texts (probes/long_attention.py).  This times one 32,768-token buffer of the encoder (12 ×
768, random weights, fp16, 8,194 positions) with each tile, for texts of 8,192, 512 and 53
tokens, and checks that both tiles give the same vectors (cosine) and match Hugging Face's model
on one text.

    python3 benchmarks/probes/long_tile.py
"""

from __future__ import annotations

import torch
from cuda_timing import cuda_ms  # this folder's
from transformers import XLMRobertaConfig, XLMRobertaModel

from vecq.engines import kernels
from vecq.engines.packed_encoder import PackedEncoder

T = 32768


def _buffer(length: int):  # type: ignore[no-untyped-def]
    n_texts = T // length
    cu = torch.arange(n_texts + 2, dtype=torch.int32).clamp(max=n_texts) * length
    ids = torch.randint(5, 30000, (T,), device="cuda")
    return ids, cu.cuda(), torch.tensor([n_texts * length], dtype=torch.int32, device="cuda"), n_texts


def _ms(encoder: PackedEncoder, args, reps: int = 10) -> float:  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return cuda_ms(lambda: encoder(*args), reps, warm=2)


def main() -> None:
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=30000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=8194, pad_token_id=1,
    )  # fmt: skip
    model = XLMRobertaModel(config, add_pooling_layer=False).half().cuda().eval()
    encoder = PackedEncoder(model, pooling="mean", normalize=True)
    for length in (8192, 512, 53):
        ids, cu, n_real, n_texts = _buffer(length)
        args = (ids, cu, n_real)
        times, vectors = {}, {}
        for name, tile in (("short", kernels.ATTENTION_CONFIG), ("long", kernels.LONG_ATTENTION_CONFIG)):
            encoder.attention_config = tile
            times[name] = _ms(encoder, args)
            with torch.inference_mode():
                vectors[name] = encoder(*args)[:n_texts].float()
        cos = torch.nn.functional.cosine_similarity(vectors["short"], vectors["long"]).min().item()
        print(
            f"{length:>5}-token texts ({n_texts} per buffer): short tile {times['short']:.2f} ms, long "
            f"{times['long']:.2f} ms ({times['short'] / times['long']:.2f}x); min cosine {cos:.6f}"
        )
    ids = torch.randint(5, 30000, (1, 8192), device="cuda")
    with torch.inference_mode():
        hf = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.float().mean(1)
        cu = torch.tensor([0, 8192], dtype=torch.int32, device="cuda")
        buf = torch.zeros(T, dtype=torch.long, device="cuda")
        buf[:8192] = ids[0]
        encoder.attention_config = kernels.LONG_ATTENTION_CONFIG
        packed = encoder(buf, cu, torch.tensor([8192], dtype=torch.int32, device="cuda"))[:1]
    cos = torch.nn.functional.cosine_similarity(torch.nn.functional.normalize(hf), packed).item()
    print(f"one 8,192-token text, long tile vs Hugging Face's model (fp16): cosine {cos:.6f}")


if __name__ == "__main__":
    main()
