"""Random-weight BERTs written as ordinary model dirs, with a real tokenizer.

No machine of vecq's can reach a model hub, so tests and GPU benchmarks build the model shape they
need on the spot: tiny ones for tests, BERT-base for benchmarks.  The tokenizer decides how long
texts are, so it must be a real one:
- `vocab="english"`: the 30,522-token uncased WordPiece tokenizer of bert-base-uncased, taken from
  the default model's files (all-MiniLM-L6-v2 uses it): English text gets the token counts real
  English BERTs give it (the GPU benchmarks' default);
- `vocab="chinese"`: a character vocab of 21,128 (like `bert-base-chinese` and the SimCSE
  retriever of vecq's seed write-up), which splits English into single letters (four times the
  tokens): the write-up's own workload and the Chinese tests.
No sentence-transformers files: vecq reads such a dir as CLS pooling, the SimCSE way.
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
    vocab: str = "chinese",
) -> Path:
    """A BertModel with random weights, its config, vocab.txt and tokenizer.json, in `path`
    (`vocab`: "chinese", or "english" -- then `vocab_size` is the English tokenizer's)."""
    import torch
    from transformers import BertConfig, BertModel

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if vocab == "english":
        vocab_size = _english_tokenizer(root)
    elif vocab == "chinese":
        _chinese_tokenizer(root, vocab_size)
    else:
        raise ValueError(f"vocab {vocab!r} is not english or chinese")
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


def _chinese_tokenizer(root: Path, size: int) -> None:
    from tokenizers.implementations import BertWordPieceTokenizer

    vocab_file = root / "vocab.txt"
    vocab_file.write_text("\n".join(chinese_vocab(size)) + "\n", encoding="utf-8")
    tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=True, handle_chinese_chars=True)
    tokenizer.save(str(root / "tokenizer.json"))


def _english_tokenizer(root: Path) -> int:
    """bert-base-uncased's tokenizer files, from the default model's package; its vocab size."""
    import shutil

    from .embedder import default_model_dir

    source = default_model_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(source / name, root / name)
    return sum(1 for _ in (root / "vocab.txt").open(encoding="utf-8"))
