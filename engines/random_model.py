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

import json
from pathlib import Path
from typing import Any

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


#: Architectures `write_random_encoder` builds, each with the tokenizer kind its real models use.
RANDOM_ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "modernbert")


def write_random_encoder(
    path: str | Path,
    *,
    model_type: str,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    max_seq_length: int | None = None,
    pooling: str = "mean",
    normalize: bool = True,
    seed: int = 0,
    **config: Any,
) -> Path:
    """A random encoder of `model_type` in the sentence-transformers layout (modules.json,
    1_Pooling, sentence_bert_config.json, a Normalize module when `normalize`), with a tokenizer
    of the kind its real models use, trained here on vecq's parity and calibration texts:
    WordPiece (bert, distilbert), byte-level BPE with `<s>`/`</s>` (roberta), a SentencePiece-style
    Unigram (xlm-roberta), byte-level BPE with `[CLS]`/`[SEP]` (modernbert).

    `max_positions` is the number of positions the model reads (RoBERTa-style models get the
    padding offset on top, as real checkpoints have); `config` overrides fields of the config
    (say, `local_attention` of ModernBERT).  Any other `model_type` (gpt2, t5...) gets a config
    and weights but no sentence-transformers files: for tests of what vecq refuses.
    """
    import torch

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    specials = _write_tokenizer(root, model_type, max_positions)
    torch.manual_seed(seed)
    model = _random_model(model_type, specials, hidden, layers, heads, max_positions, config)
    model.eval().save_pretrained(root, safe_serialization=True)
    if model_type in RANDOM_ARCHITECTURES:
        _write_sentence_transformers(root, hidden, pooling, normalize, max_seq_length)
    return root


def _random_model(model_type, specials, hidden, layers, heads, max_positions, overrides):
    """The transformers model of `model_type` with random weights (no pooler head)."""
    from transformers import AutoModel

    config = _random_config(model_type, specials, hidden, layers, heads, max_positions, overrides)
    if model_type in ("bert", "roberta", "xlm-roberta"):
        return AutoModel.from_config(config, add_pooling_layer=False)
    if model_type == "t5":
        from transformers import T5EncoderModel

        return T5EncoderModel(config)
    return AutoModel.from_config(config)


def _random_config(model_type, specials, hidden, layers, heads, max_positions, overrides):
    """The transformers config of a random `model_type` model of these sizes."""
    from transformers import AutoConfig

    vocab, ids = specials
    common = {"vocab_size": vocab, "max_position_embeddings": max_positions}
    fields = {
        "bert": {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                 "intermediate_size": 4 * hidden, "pad_token_id": ids["pad"]},
        "distilbert": {"dim": hidden, "n_layers": layers, "n_heads": heads, "hidden_dim": 4 * hidden,
                       "pad_token_id": ids["pad"]},
        "roberta": {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                    "intermediate_size": 4 * hidden, "type_vocab_size": 1, "pad_token_id": ids["pad"],
                    "bos_token_id": ids["cls"], "eos_token_id": ids["sep"],
                    "max_position_embeddings": max_positions + ids["pad"] + 1},
        "modernbert": {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                       "intermediate_size": 2 * hidden, "pad_token_id": ids["pad"],
                       "cls_token_id": ids["cls"], "sep_token_id": ids["sep"], "bos_token_id": ids["cls"],
                       "eos_token_id": ids["sep"], "global_attn_every_n_layers": 2},
        "gpt2": {"n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": max_positions},
        "t5": {"d_model": hidden, "num_layers": layers, "num_heads": heads, "d_kv": hidden // heads,
               "d_ff": 4 * hidden},
    }  # fmt: skip
    fields["xlm-roberta"] = fields["roberta"]
    if model_type not in fields:
        raise ValueError(f"model_type {model_type!r}: random models are {', '.join(fields)}")
    return AutoConfig.for_model(model_type, **{**common, **fields[model_type], **overrides})


def write_random_cross_encoder(
    path: str | Path,
    *,
    model_type: str = "bert",
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 128,
    activation: str = "torch.nn.modules.activation.Sigmoid",
    seed: int = 0,
    vocab: str = "trained",
    initializer_range: float = 0.02,
) -> Path:
    """A random one-label `*ForSequenceClassification` (bert, roberta, xlm-roberta) in the layout
    `CrossEncoder.save` writes (modules.json with one Transformer, sentence_bert_config.json's
    sequence-classification task, config_sentence_transformers.json's `activation`), with the
    tokenizer `write_random_encoder` gives the same architecture: a reranker for tests.
    `vocab="english"` (bert only): bert-base-uncased's WordPiece instead, so that a benchmark's
    pairs are as long as a real English BERT reranker reads them.  `initializer_range` 0.2
    (BERT's initial scale is 0.02) spreads the scores: at 0.02 every pair of a tiny model scores
    within 1e-4 of 0.489, too close for a parity test to see a lost segment id."""
    import torch
    from transformers import AutoModelForSequenceClassification

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    if vocab == "english" and model_type == "bert":
        specials = (_english_tokenizer(root), {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103})
    elif vocab == "trained":
        specials = _write_tokenizer(root, model_type, max_positions)
    else:
        raise ValueError(f"vocab {vocab!r} for {model_type}: trained, or english for bert")
    torch.manual_seed(seed)
    overrides = {"num_labels": 1, "initializer_range": initializer_range}
    config = _random_config(model_type, specials, hidden, layers, heads, max_positions, overrides)
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(
        root, safe_serialization=True
    )
    transformer = {
        "idx": 0,
        "name": "0",
        "path": "",
        "type": "sentence_transformers.base.modules.transformer.Transformer",
    }
    task = {
        "transformer_task": "sequence-classification",
        "module_output_name": "scores",
        "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
    }
    st = {
        "activation_fn": activation,
        "model_type": "CrossEncoder",
        "prompts": {},
        "default_prompt_name": None,
    }
    for name, content in (("modules.json", [transformer]), ("sentence_bert_config.json", task),
                          ("config_sentence_transformers.json", st)):  # fmt: skip
        (root / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
    return root


#: Special tokens per tokenizer kind, in id order from 0 (pad, cls, sep, unk, mask by role).
_SPECIALS = {
    "roberta": {"cls": "<s>", "pad": "<pad>", "sep": "</s>", "unk": "<unk>", "mask": "<mask>"},
    "modernbert": {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"},
}
_SPECIALS["xlm-roberta"] = _SPECIALS["roberta"]


def _write_tokenizer(root: Path, model_type: str, max_positions: int) -> tuple[int, dict[str, int]]:
    """tokenizer.json and tokenizer_config.json for `model_type`; (vocab size, special ids)."""
    from tokenizers import Tokenizer

    if model_type not in _SPECIALS:  # WordPiece, as BERT and DistilBERT (and the refused ones here)
        size = 3000
        _chinese_tokenizer(root, size)
        names = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    else:
        names = _SPECIALS[model_type]
        _trained_tokenizer(model_type, list(names.values())).save(str(root / "tokenizer.json"))
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    ids = {role: int(tok.token_to_id(name)) for role, name in names.items()}
    token_types = model_type in ("bert",)
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_positions,
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"][:: 1 if token_types else 2],
        **{f"{role}_token": name for role, name in names.items()},
    }
    (root / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return tok.get_vocab_size(), ids


def _trained_tokenizer(model_type: str, specials: list[str]):
    """A small tokenizer trained on vecq's parity and calibration texts (every script they hold)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from .parity import calibration_texts, parity_texts

    corpus = parity_texts() + calibration_texts()
    cls, sep = specials[1:3] if model_type == "modernbert" else (specials[0], specials[2])
    if model_type == "xlm-roberta":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=1500, special_tokens=specials, unk_token="<unk>")
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(corpus, trainer=trainer)
    ids = {t: tok.token_to_id(t) for t in (cls, sep)}
    if model_type == "roberta":
        tok.post_processor = processors.RobertaProcessing((sep, ids[sep]), (cls, ids[cls]))
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}", special_tokens=list(ids.items())
        )
    return tok


def _write_sentence_transformers(
    root: Path, dim: int, pooling: str, normalize: bool, max_seq_length: int | None
) -> None:
    """modules.json, 1_Pooling/config.json, sentence_bert_config.json (and 2_Normalize)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (root / "2_Normalize").mkdir(exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    (root / "1_Pooling").mkdir(exist_ok=True)
    head = {"word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False}  # fmt: skip
    (root / "1_Pooling" / "config.json").write_text(json.dumps(head, indent=2), encoding="utf-8")
    st = {"do_lower_case": False} | ({} if max_seq_length is None else {"max_seq_length": max_seq_length})
    (root / "sentence_bert_config.json").write_text(json.dumps(st, indent=2), encoding="utf-8")
