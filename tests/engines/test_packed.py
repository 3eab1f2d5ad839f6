"""The padding-free packed encoder (issue 14) on CPU: same vectors as the padded model.

The Triton kernels run only on CUDA (tests/engines/test_gpu_packed.py); here the packed forward
runs its torch reference kernels, which checks everything around them: packing, positions
(RoBERTa's offset included), filler tokens, empty slots, CLS and mean pooling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vecq.engines.backends.torch_packed import pack_into, packed_shapes
from vecq.engines.base import Batch
from vecq.engines.packed_encoder import PackedEncoder, supports
from vecq.engines.pooled import PooledEncoder

LENGTHS = [5, 1, 17, 64, 3, 40, 2]


def _tiny(kind: str):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    shape = dict(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=80,
    )  # fmt: skip
    if kind == "distilbert":
        from transformers import DistilBertConfig, DistilBertModel

        config = DistilBertConfig(
            vocab_size=500, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=80
        )
        return DistilBertModel(config).eval()
    if kind == "roberta":
        config = RobertaConfig(**{**shape, "max_position_embeddings": 82}, pad_token_id=1, type_vocab_size=1)
        return RobertaModel(config, add_pooling_layer=False).eval()
    return BertModel(BertConfig(**shape), add_pooling_layer=False).eval()


def _padded(lengths: list[int], pad_id: int, rows_extra: int = 2) -> Batch:
    rng = np.random.default_rng(1)
    L = max(lengths)
    ids = np.full((len(lengths) + rows_extra, L), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, 500, size=n)
        mask[i, :n] = 1
    mask[len(lengths) :, :2] = 1  # padding rows, as make_batch writes them
    return Batch(input_ids=ids, attention_mask=mask, rows=len(lengths))


@pytest.mark.parametrize(
    ("kind", "pooling", "normalize"),
    [("bert", "cls", False), ("bert", "mean", True), ("roberta", "mean", True), ("distilbert", "mean", True)],
)
def test_packed_vectors_equal_the_padded_models(kind: str, pooling: str, normalize: bool) -> None:
    encoder = _tiny(kind)
    pad = encoder.config.pad_token_id
    batch = _padded(LENGTHS, pad)
    padded = PooledEncoder(encoder, pooling=pooling, normalize=normalize).eval()
    with torch.inference_mode():
        want = padded(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    slots, T = 12, 256  # more slots than rows, more tokens than the batch has: filler and empties
    ids, cu = np.zeros(T, dtype=np.int32), np.zeros(slots + 1, dtype=np.int32)  # as the engine stages them
    n = pack_into(batch, ids, cu)
    assert n == sum(LENGTHS) and list(cu[: len(LENGTHS) + 1]) == [0, *np.cumsum(LENGTHS)]
    packed = PackedEncoder(encoder, pooling=pooling, normalize=normalize)
    with torch.inference_mode():
        got = packed(torch.from_numpy(ids), torch.from_numpy(cu), torch.tensor([n], dtype=torch.int32))
    assert got.shape == (slots, 64) and got.dtype == torch.float32
    np.testing.assert_allclose(got[: len(LENGTHS)].numpy(), want[: len(LENGTHS)].numpy(), atol=2e-5)
    assert torch.isfinite(got).all()


def test_a_model_the_packed_encoder_cannot_run_is_named() -> None:
    from transformers import BertConfig, DistilBertConfig, ModernBertConfig

    assert supports(BertConfig()) is None and supports(DistilBertConfig()) is None
    assert supports(ModernBertConfig()) is None
    scaled = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    plain = {"rope_type": "default", "rope_theta": 1e4}
    rope = {"full_attention": scaled, "sliding_attention": plain}
    assert "rope_type 'linear'" in supports(ModernBertConfig(rope_parameters=rope))
    assert "hidden_activation 'relu'" in supports(ModernBertConfig(hidden_activation="relu"))
    assert "relative_key" in supports(BertConfig(position_embedding_type="relative_key"))
    assert "head size 24" in supports(BertConfig(hidden_size=48, num_attention_heads=2))


def test_packed_shapes_fill_a_token_buffer_with_one_batch() -> None:
    shapes = packed_shapes(512)
    assert shapes.max_batch(16) == 2048 and shapes.max_batch(64) == 512 and shapes.max_batch(512) == 64
    assert max(s.tokens for s in shapes) == 32768
    short = packed_shapes(128)
    assert short.seq_lens == (16, 32, 64, 128) and short.max_batch(128) == 256


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_embed_on_a_packing_engine_tokenizes_in_chunks_and_equals_the_padded_path(monkeypatch, chunk) -> None:
    """Chunks (each one's unfilled last batch carried on) change neither vectors nor order, and
    truncation off still refuses an over-long text before anything runs."""
    from vecq.engines import Embedder, batching
    from vecq.engines.backends.null import NullEngine
    from vecq.engines.errors import TextTooLong
    from vecq.worker.bench.corpus import make_corpus

    monkeypatch.setattr(batching, "CHUNK_TEXTS", chunk)
    plain = Embedder.load(backend="null")
    packing = Embedder.load(backend="null")
    packing.engine = NullEngine(shapes=packing.engine.shapes, dim=packing.dim, token_budget=512)
    texts = make_corpus(300, seed=3)
    np.testing.assert_array_equal(packing.embed(texts), plain.embed(texts))
    calls = packing.engine.calls
    with pytest.raises(TextTooLong, match=r"texts\[2\]"):
        packing.embed(["a", "b", "word " * 600], truncate=False)
    assert packing.engine.calls == calls


def test_a_buffer_of_long_texts_is_told_from_short_ones_and_its_tile_set_for_capture() -> None:
    """The long-tile graph is chosen by the texts' token-weighted mean length (what attention
    costs), so one long text among many short ones keeps the default tile; the capture's tile
    is set on every packed encoder inside the module (a reranker's too) and put back after."""
    from vecq.engines import kernels
    from vecq.engines.backends.torch_packed import LONG_TEXTS_FROM, _long_texts, attention_tile

    def cu(lengths: list[int]) -> np.ndarray:
        return np.r_[0, np.cumsum(lengths)].astype(np.int32)

    assert _long_texts(cu([2048, 2048]), 2, 4096)
    assert _long_texts(cu([LONG_TEXTS_FROM]), 1, LONG_TEXTS_FROM)
    assert not _long_texts(cu([600] + [40] * 200), 201, 8600)
    assert not _long_texts(cu([53] * 100), 100, 5300)
    encoder = PackedEncoder(_tiny("bert"), pooling="mean", normalize=True)
    module = torch.nn.Sequential(encoder)
    with attention_tile(module, long=True):
        assert encoder.attention_config == kernels.LONG_ATTENTION_CONFIG
    assert encoder.attention_config == kernels.ATTENTION_CONFIG


@pytest.mark.parametrize("bias", [False, True])
def test_packed_modernbert_equals_the_padded_model(bias: bool) -> None:
    """ModernBERT packed: rotary positions from each text's own start, local layers that see
    only keys within the window (texts longer than it included), pre-norm layers with and
    without biases, filler and empty slots — the padded Hugging Face model's vectors."""
    from transformers import ModernBertConfig, ModernBertModel

    from vecq.engines.packed_encoder import packed_module

    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=256, local_attention=32, global_attn_every_n_layers=2, pad_token_id=0,
        norm_bias=bias, attention_bias=bias, mlp_bias=bias,
    )  # fmt: skip
    encoder = ModernBertModel(config).eval()
    lengths = [5, 1, 17, 130, 3, 200, 40]
    batch = _padded(lengths, 0)
    padded = PooledEncoder(encoder, pooling="mean", normalize=True).eval()
    with torch.inference_mode():
        want = padded(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    slots, T = 12, 512
    ids, cu = np.zeros(T, dtype=np.int32), np.zeros(slots + 1, dtype=np.int32)  # as the engine stages them
    n = pack_into(batch, ids, cu)
    packed = packed_module(encoder, pooling="mean", normalize=True)
    with torch.inference_mode():
        got = packed(torch.from_numpy(ids), torch.from_numpy(cu), torch.tensor([n], dtype=torch.int32))
    assert got.shape == (slots, 64)
    np.testing.assert_allclose(got[: len(lengths)].numpy(), want[: len(lengths)].numpy(), atol=2e-5)
    assert torch.isfinite(got).all()


class _Track:
    def __init__(self) -> None:
        self.busy = False
        self.held = False  # its next staging set not yet read out

    def idle(self) -> bool:
        return not self.busy

    def free(self) -> bool:
        return not self.held


def test_batches_go_to_tracks_in_turn_and_a_query_to_an_idle_one() -> None:
    """Bulk batches alternate tracks (each track's two staging sets then rest a batch apart); a
    batch that comes while the next track in turn is busy takes an idle one, so a query does not
    queue behind a bulk buffer another track could run it beside; a track whose next staging set
    still holds an uncollected batch's rows takes none.  (The tracks' CUDA work is in
    tests/engines/test_gpu_packed.py.)"""
    from vecq.engines.backends.torch_packed import PackedGraphEngine

    engine = object.__new__(PackedGraphEngine)  # the track choice alone: no CUDA here
    engine.tracks, engine._next = [_Track(), _Track(), _Track()], 0
    assert [engine._pick_track() for _ in range(4)] == [0, 1, 2, 0]
    engine.tracks[1].busy = True  # track 1, next in turn, still runs a bulk batch
    assert engine._pick_track() == 2
    assert engine._pick_track() == 0
    for track in engine.tracks:
        track.busy = True  # all busy: in turn again
    assert [engine._pick_track() for _ in range(3)] == [1, 2, 0]
    engine.tracks[1].held = True  # its next set's batch not collected yet: skipped
    assert engine._pick_track() == 2
    for track in engine.tracks:
        track.held = True
    with pytest.raises(RuntimeError, match="none collected"):
        engine._pick_track()
