"""Probe (issue 14, padding-free fixed shapes): BERT-base with no padding at all, over fixed
token buffers, one CUDA graph per buffer size (and length bucket).

Texts are packed end to end into a buffer of T tokens with cumulative sequence lengths beside
them; attention is torch's variable-length flash attention (or, `padded`, dense SDPA per length
bucket); every other layer is token-wise, so no padding is computed.  Measures texts/s and real
tokens/s on the benchmark corpus, profiles one buffer's kernels, and checks cosine to fp32.
Pure torch + tokenizers + transformers, so it runs on the GPU image with nothing staged:

    here:   python benchmarks/probes/packed_bert.py prepare .proto     (corpus + tokenizer, from vecq)
    device: python3 benchmarks/probes/packed_bert.py .proto VARIANTS

VARIANTS: eager,graph,compiled | bucketed | padded | profile | profile64 | fa3 | fa4 |
vecq-profile (vecq's own PackedEncoder with its Triton kernels; needs vecq installed).

Results: BENCHMARKS.md, "Issue 14".
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from cuda_timing import cuda_ms  # this folder's
from tokenizers import Tokenizer
from torch.nn.attention.varlen import varlen_attn
from transformers import BertConfig, BertModel

if sys.argv[1:2] == ["prepare"]:  # here, with vecq installed: the inputs the device run reads
    import shutil
    from pathlib import Path

    from vecq.engines import default_model_dir
    from vecq.worker.bench.corpus import make_corpus

    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copyfile(default_model_dir() / name, out / name)
    (out / "corpus.json").write_text(json.dumps(make_corpus(50000, seed=7)))
    sys.exit(0)

torch.manual_seed(0)
dev = "cuda"
dtype = torch.float16
MAX_SEQS = 2048  # cu_seqlens slots per buffer
here = sys.argv[1] if len(sys.argv) > 1 else ".proto"
with open(f"{here}/corpus.json") as f:
    texts = json.load(f)
tok = Tokenizer.from_file(f"{here}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(max_length=512)
t0 = time.perf_counter()
ids = [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch_fast(texts)]
print(
    f"tokenized {len(texts)} texts in {time.perf_counter() - t0:.2f}s; "
    f"mean {np.mean([len(x) for x in ids]):.1f} tokens"
)
lengths = np.array([len(x) for x in ids])
total_tokens = int(lengths.sum())

config = BertConfig(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
)
hf = BertModel(config, add_pooling_layer=False).eval()
H, NH, D = 768, 12, 64


class Packed(torch.nn.Module):
    """BERT-base over a packed token buffer: (ids, positions, cu_seqlens, cls_index) -> (n, H)."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        e = bert.embeddings
        self.word, self.pos, self.typ = (
            e.word_embeddings.weight,
            e.position_embeddings.weight,
            e.token_type_embeddings.weight[0],
        )
        self.eln = (e.LayerNorm.weight, e.LayerNorm.bias, e.LayerNorm.eps)
        self.layers = []
        for layer in bert.encoder.layer:
            a = layer.attention
            wqkv = torch.cat([a.self.query.weight, a.self.key.weight, a.self.value.weight])
            bqkv = torch.cat([a.self.query.bias, a.self.key.bias, a.self.value.bias])
            self.layers.append(
                dict(
                    wqkv=wqkv,
                    bqkv=bqkv,
                    wo=a.output.dense.weight,
                    bo=a.output.dense.bias,
                    ln1=(a.output.LayerNorm.weight, a.output.LayerNorm.bias),
                    w1=layer.intermediate.dense.weight,
                    b1=layer.intermediate.dense.bias,
                    w2=layer.output.dense.weight,
                    b2=layer.output.dense.bias,
                    ln2=(layer.output.LayerNorm.weight, layer.output.LayerNorm.bias),
                )
            )

    fused_gelu = False

    def attend_padded(self, qkv, gather, tok_idx, mask):
        """Attention with the bucket's sequences padded to its length (dense SDPA, key mask),
        gathered from and back to the packed buffer; the GEMMs around it stay packed."""
        ext = torch.cat([qkv, qkv.new_zeros(1, 3, NH, D)])  # row T: zeros, for padding slots
        padded = ext[gather]  # [S, L, 3, NH, D]
        q, k, v = (padded[:, :, j].transpose(1, 2) for j in range(3))  # [S, NH, L, D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        S, L = gather.shape
        return out.transpose(1, 2).reshape(S * L, NH * D)[tok_idx]

    def forward(self, ids, positions, cu, cls_index, max_len: int, padded=None):
        x = self.word[ids] + self.pos[positions] + self.typ
        x = F.layer_norm(x, (H,), self.eln[0], self.eln[1], self.eln[2])
        for L in self.layers:
            qkv = F.linear(x, L["wqkv"], L["bqkv"]).view(-1, 3, NH, D)
            if padded is not None:
                att = self.attend_padded(qkv, *padded)
            else:
                att = varlen_attn(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, max_len, max_len)
            x = F.layer_norm(x + F.linear(att.reshape(-1, H), L["wo"], L["bo"]), (H,), *L["ln1"], 1e-12)
            if self.fused_gelu:  # bias + GELU in the GEMM's epilogue (cuBLASLt, tanh form)
                h = torch._addmm_activation(L["b1"], x, L["w1"].t(), use_gelu=True)
            else:
                h = F.gelu(F.linear(x, L["w1"], L["b1"]))
            x = F.layer_norm(x + F.linear(h, L["w2"], L["b2"]), (H,), *L["ln2"], 1e-12)
        return x[cls_index]


def pack(rows, T):
    """Rows end to end into T tokens; the rest of the buffer one filler sequence; cu padded with T."""
    n = len(rows)
    cat = np.zeros(T, dtype=np.int64)
    pos = np.zeros(T, dtype=np.int64)
    cu = np.full(MAX_SEQS + 1, T, dtype=np.int32)
    cu[0] = 0
    off = 0
    for i, r in enumerate(rows):
        cat[off : off + len(r)] = r
        pos[off : off + len(r)] = np.arange(len(r))
        off += len(r)
        cu[i + 1] = off
    i = n  # the rest of the buffer: filler sequences of at most 512 tokens while slots last
    while off < T and i < MAX_SEQS:
        step = min(512, T - off)
        pos[off : off + step] = np.arange(step)
        off += step
        i += 1
        cu[i] = off if i < MAX_SEQS else T
    cls = np.zeros(MAX_SEQS, dtype=np.int64)
    cls[:n] = cu[:n]
    return cat, pos, cu, cls, n


def plan(lengths, T):
    """Greedy: texts in corpus order into buffers of T tokens (at most MAX_SEQS texts each)."""
    batches, cur, used = [], [], 0
    for i, L in enumerate(lengths):
        if used + L > T or len(cur) == MAX_SEQS:
            batches.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += L
    if cur:
        batches.append(cur)
    return batches


BUCKETS = (32, 64, 128, 256, 512)


def plan_bucketed(lengths, T):
    """Texts grouped by the smallest length bucket that holds them, each group packed in corpus
    order into T-token buffers: attention's grid follows the bucket, not the model's max."""
    out = []
    bucket_of = np.searchsorted(np.asarray(BUCKETS), lengths)
    for k, bound in enumerate(BUCKETS):
        members = np.flatnonzero(bucket_of == k)
        out += [(bound, [int(members[i]) for i in b]) for b in plan(lengths[members], T)]
    return out


def padded_index(rows, T, bound):
    """gather [S, bound] into the packed buffer (T = a zero row), tok_idx [T] back, key mask."""
    S = min(MAX_SEQS, T // (BUCKETS[BUCKETS.index(bound) - 1] + 1) if bound != BUCKETS[0] else MAX_SEQS)
    gather = np.full((S, bound), T, dtype=np.int64)
    mask = np.zeros((S, bound), dtype=bool)
    mask[:, 0] = True  # every slot attends at least one key (unused slots: no NaNs)
    tok = np.zeros(T, dtype=np.int64)
    off = 0
    for i, r in enumerate(rows):
        n = len(r)
        gather[i, :n] = off + np.arange(n)
        mask[i, :n] = True
        tok[off : off + n] = i * bound + np.arange(n)
        off += n
    return gather, tok, mask


def static_inputs(T, packed):
    """The device tensors a captured graph reads (ids, positions, cu_seqlens, CLS index), and
    `load(k)`: copy packed buffer k's pinned arrays into them."""
    static = (
        torch.zeros(T, dtype=torch.long, device=dev),
        torch.zeros(T, dtype=torch.long, device=dev),
        torch.zeros(MAX_SEQS + 1, dtype=torch.int32, device=dev),
        torch.zeros(MAX_SEQS, dtype=torch.long, device=dev),
    )
    host = [tuple(torch.from_numpy(a).pin_memory() for a in p[:4]) for p in packed]

    def load(k):
        for dst, src in zip(static, host[k], strict=True):
            dst.copy_(src, non_blocking=True)

    return static, load


def run_bucketed(name, model, T, padded=False):
    batches = plan_bucketed(lengths, T)
    packed = [pack([ids[i] for i in b], T) for _, b in batches]
    pads = [padded_index([ids[i] for i in b], T, bound) for bound, b in batches] if padded else None
    s_pad = {}
    if padded:
        for bound in BUCKETS:
            g, t, m = (
                next(p for p, (bd, _) in zip(pads, batches, strict=True) if bd == bound)
                if any(bd == bound for bd, _ in batches)
                else padded_index([], T, bound)
            )
            s_pad[bound] = (
                torch.from_numpy(g).to(dev),
                torch.from_numpy(t).to(dev),
                torch.from_numpy(m).to(dev),
            )
        host_pad = [tuple(torch.from_numpy(a).pin_memory() for a in pd) for pd in pads]
    (s_ids, s_pos, s_cu, s_cls), load_packed = static_inputs(T, packed)
    graphs, outs = {}, {}

    def load(k):
        load_packed(k)
        if padded:
            for dst, src in zip(s_pad[batches[k][0]], host_pad[k], strict=True):
                dst.copy_(src, non_blocking=True)

    with torch.inference_mode():
        load(0)
        for bound in BUCKETS:
            extra = {"padded": s_pad[bound]} if padded else {}
            for _ in range(2):
                model(s_ids, s_pos, s_cu, s_cls, bound, **extra)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                outs[bound] = model(s_ids, s_pos, s_cu, s_cls, bound, **extra)
            graphs[bound] = g
        results = np.empty((len(texts), H), dtype=np.float32)
        host_out = torch.empty((MAX_SEQS, H), dtype=dtype, pin_memory=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for k, (bound, b) in enumerate(batches):
            load(k)
            graphs[bound].replay()
            host_out.copy_(outs[bound])
            results[b] = host_out[: len(b)].float().numpy()
        torch.cuda.synchronize()
        el = time.perf_counter() - t
    fill = total_tokens / (len(batches) * T)
    print(
        f"{name:<44} T={T:>6} batches={len(batches):>4} fill={fill:5.1%} "
        f"{len(texts) / el:>9,.0f} texts/s {total_tokens / el / 1e6:6.2f}M tok/s",
        flush=True,
    )
    return results


def run_variant(name, model, T, graphs, compiled=False):
    fwd = model
    if compiled:
        fwd = torch.compile(model, mode="max-autotune-no-cudagraphs", dynamic=False, fullgraph=False)
    batches = plan(lengths, T)
    packed = [pack([ids[i] for i in b], T) for b in batches]
    (s_ids, s_pos, s_cu, s_cls), load = static_inputs(T, packed)

    with torch.inference_mode():
        load(0)
        t = time.perf_counter()
        for _ in range(3):
            out = fwd(s_ids, s_pos, s_cu, s_cls, 512)
        torch.cuda.synchronize()
        warm = time.perf_counter() - t
        if graphs:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = fwd(s_ids, s_pos, s_cu, s_cls, 512)
            step = g.replay
        else:

            def step():
                nonlocal out
                out = fwd(s_ids, s_pos, s_cu, s_cls, 512)

        results = np.empty((len(texts), H), dtype=np.float32)
        host_out = torch.empty((MAX_SEQS, H), dtype=dtype, pin_memory=True)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for k, b in enumerate(batches):
            load(k)
            step()
            host_out.copy_(out)
            results[b] = host_out[: len(b)].float().numpy()
        torch.cuda.synchronize()
        el = time.perf_counter() - t
    fill = total_tokens / (len(batches) * T)
    print(
        f"{name:<44} T={T:>6} batches={len(batches):>4} fill={fill:5.1%} warm={warm:5.1f}s "
        f"{len(texts) / el:>9,.0f} texts/s {total_tokens / el / 1e6:6.2f}M tok/s",
        flush=True,
    )
    return results


def hf_baseline():
    m = hf.to(dev).to(dtype)
    order = np.argsort(lengths, kind="stable")
    batches, s = [], 0
    while s < len(order):
        e = s + 1
        while e < len(order) and (e - s + 1) * lengths[order[e]] <= 32768:
            e += 1
        rows = [ids[i] for i in order[s:e]]
        Lm = max(len(r) for r in rows)
        a = np.zeros((len(rows), Lm), dtype=np.int64)
        msk = np.zeros_like(a)
        for j, r in enumerate(rows):
            a[j, : len(r)] = r
            msk[j, : len(r)] = 1
        batches.append((torch.from_numpy(a).to(dev), torch.from_numpy(msk).to(dev)))
        s = e
    with torch.inference_mode():
        for a, msk in batches[:5]:
            m(input_ids=a, attention_mask=msk)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for a, msk in batches:
            m(input_ids=a, attention_mask=msk).last_hidden_state[:, 0]
        torch.cuda.synchronize()
        el = time.perf_counter() - t
    print(
        f"{'HF BertModel fp16 SDPA sorted <=32k tokens':<44} {len(texts) / el:>9,.0f} texts/s "
        f"{total_tokens / el / 1e6:6.2f}M tok/s",
        flush=True,
    )


def parity(results, n=64):
    ref_model = BertModel(config, add_pooling_layer=False).eval()
    ref_model.load_state_dict(hf_state)
    ref = []
    with torch.inference_mode():
        for i in range(n):
            t = torch.from_numpy(ids[i])[None]
            ref.append(ref_model(input_ids=t).last_hidden_state[0, 0].numpy())
    ref = np.stack(ref)
    a = results[:n]
    cos = (a * ref).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"parity vs fp32 HF (first {n} texts): min cosine {cos.min():.6f}", flush=True)


hf_state = {k: v.clone() for k, v in hf.state_dict().items()}
variants = sys.argv[2].split(",") if len(sys.argv) > 2 else ["eager", "graph", "compiled"]
packed_model = Packed(hf.to(dev).to(dtype))
if "fa3" in variants or "fa4" in variants:
    import torch.nn.attention as attn

    impl = "FA3" if "fa3" in variants else "FA4"
    print("impls:", attn.list_flash_attention_impls(), flush=True)
    try:
        attn.activate_flash_attention_impl(impl)
        print("active:", attn.current_flash_attention_impl(), flush=True)
    except Exception as exc:
        print(f"{impl} not usable: {type(exc).__name__}: {exc}", flush=True)
        sys.exit(0)
    packed_model.fused_gelu = True
    res = run_bucketed(f"packed, buckets, fused GELU, {impl}", packed_model, 32768)
    parity(res)
    sys.exit(0)
if "padded" in variants:
    packed_model.fused_gelu = True
    for T in (16384, 32768):
        res = run_bucketed("packed GEMMs, padded SDPA per bucket, fused GELU", packed_model, T, padded=True)
    parity(res)
    sys.exit(0)
if "bucketed" in variants:
    for T in (16384, 32768, 65536):
        res = run_bucketed("packed, length buckets, graph per (T, bucket)", packed_model, T)
    parity(res)
    packed_model.fused_gelu = True
    for T in (32768, 65536):
        res = run_bucketed("  + bias-GELU in the GEMM epilogue", packed_model, T)
    parity(res)
    sys.exit(0)
if "vecq-profile" in variants:
    from torch.profiler import ProfilerActivity, profile

    from vecq.engines import kernels
    from vecq.engines.packed_encoder import PackedEncoder

    T, slots = 32768, 2048
    enc = PackedEncoder(hf.to(dev).to(dtype), pooling="cls", normalize=False)
    b = plan(lengths, T)[0]
    rows = [ids[i] for i in b]
    flat = np.concatenate(rows)
    cu = np.full(slots + 1, len(flat), dtype=np.int32)
    cu[0] = 0
    cu[1 : len(rows) + 1] = np.cumsum([len(r) for r in rows])
    buf = np.zeros(T, dtype=np.int64)
    buf[: len(flat)] = flat
    args = (
        torch.from_numpy(buf).to(dev),
        torch.from_numpy(cu).to(dev),
        torch.tensor([len(flat)], dtype=torch.int32, device=dev),
    )
    print(f"profiled buffer: {len(rows)} texts, {len(flat)} real tokens of {T}")

    def timed(fn, reps=20):
        return cuda_ms(fn, reps, warm=1)  # ms

    with torch.inference_mode():
        # attention alone, per kernel config, on this buffer's sequence layout
        qkv = torch.randn(T, 3, NH, D, dtype=dtype, device=dev)
        tok = torch.arange(T, device=dev, dtype=torch.int32)
        seq = torch.where(tok < args[2], torch.searchsorted(args[1], tok, right=True) - 1, slots)
        seq = seq.to(torch.int32)
        cu64 = args[1]
        ms = timed(lambda: varlen_attn(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu64, cu64, 512, 512))
        print(f"attention per layer: torch varlen_attn {ms * 1000:.0f} µs", flush=True)
        ref = kernels.packed_attention(qkv, seq, args[1], args[2], heads=NH)
        for cfg in [
            (32, 32, 2, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3),
            (64, 128, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (128, 128, 8, 2), (128, 64, 4, 2),
            (128, 32, 4, 2),
        ]:  # fmt: skip
            try:
                got = kernels.packed_attention(qkv, seq, args[1], args[2], heads=NH, config=cfg)
                err = (got - ref).abs().max().item()
                ms = timed(
                    lambda c=cfg: kernels.packed_attention(qkv, seq, args[1], args[2], heads=NH, config=c)
                )
                print(
                    f"attention per layer: triton {cfg} {ms * 1000:.0f} µs (max diff {err:.1e})", flush=True
                )
            except Exception as exc:
                print(f"attention config {cfg}: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
        for epilogue in (False, True):
            enc.gelu_epilogue = epilogue
            for _ in range(3):
                enc(*args)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = enc(*args)
            per = timed(g.replay) / 1000
            print(
                f"graph replay, GELU {'in GEMM epilogue' if epilogue else 'separate'}: {per * 1e3:.2f} ms "
                f"= {len(flat) / per / 1e6:.2f}M real tokens/s, {len(rows) / per:,.0f} texts/s",
                flush=True,
            )
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                enc(*args)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    # parity of the served path (epilogue on) against fp32 HF, per text
    results = np.zeros((len(texts), H), dtype=np.float32)
    out_rows = out[: len(rows)].float().cpu().numpy()
    results[b] = out_rows
    parity(results)
    sys.exit(0)
if "profile" in variants or "profile64" in variants:
    from torch.profiler import ProfilerActivity, profile

    T = 32768
    if "profile64" in variants:
        packed_model.fused_gelu = True
        bound, b = next(x for x in plan_bucketed(lengths, T) if x[0] == 64)
    else:
        bound, b = 512, plan(lengths, T)[0]
    arrays = pack([ids[i] for i in b], T)
    print(f"profiled buffer: {len(b)} texts, bucket {bound}, {sum(len(ids[i]) for i in b)} real tokens")
    args = [torch.from_numpy(a).to(dev) for a in arrays[:4]]
    with torch.inference_mode():
        for _ in range(3):
            packed_model(*args, bound)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                packed_model(*args, bound)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
    total = sum(e.device_time_total for e in prof.key_averages()) / 5 / 1000
    print(
        f"kernel time per {T}-token buffer: {total:.2f} ms = "
        f"{T / total * 1000 / 1e6:.2f}M tokens/s if back to back"
    )
    sys.exit(0)
hf_baseline()
res = None
for T in (4096, 16384, 32768):
    if "eager" in variants:
        res = run_variant("packed eager (varlen flash attention)", packed_model, T, graphs=False)
    if "graph" in variants:
        res = run_variant("packed + CUDA graph per buffer", packed_model, T, graphs=True)
if "compiled" in variants:
    for T in (16384, 32768):
        res = run_variant("packed + torch.compile + CUDA graph", packed_model, T, graphs=True, compiled=True)
if res is not None:
    parity(res)
