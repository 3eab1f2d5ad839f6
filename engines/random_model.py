"""Random-weight BERTs with a Chinese character vocab, written as ordinary model dirs.

No machine of vecq's can reach a model hub, so tests and GPU benchmarks build the model shape they
need on the spot: tiny ones for tests, BERT-base (vocab 21128, like `bert-base-chinese` and the
SimCSE retriever of vecq's seed write-up) for benchmarks.  No sentence-transformers files: vecq
reads such a dir as CLS pooling, the SimCSE way.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ASCII = [chr(c) for c in range(33, 127)] + [f"##{chr(c)}" for c in range(48, 123) if chr(c).isalnum()]


def chinese_vocab(size: int) -> list[str]:
    """Special tokens at BERT's usual ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102), ASCII, then
    CJK characters from U+4E00 up to `size` entries."""
    vocab = SPECIAL + ASCII
    code = 0x4E00
    while len(vocab) < size:
        vocab.append(chr(code))
        code += 1
    return vocab[:size]


def write_random_bert(
    path: str | Path,
    *,
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    intermediate: int | None = None,
    vocab_size: int = 21128,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """A BertModel with random weights, its config, vocab.txt and tokenizer.json, in `path`."""
    import torch
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(chinese_vocab(vocab_size)) + "\n", encoding="utf-8")
    tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=True, handle_chinese_chars=True)
    tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 4 * hidden,
        max_position_embeddings=max_positions,
    )
    BertModel(config).eval().save_pretrained(root, safe_serialization=True)
    return root
