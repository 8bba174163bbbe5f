"""The task's metrics: ROUGE-1/2/L/Lsum (rouge-score) and BERTScore (as bert-score 0.3.13 computes it), per document.

The paper's evaluation of Table 4 (distil-tuning-llm, `analysis/evaluate_test_unofficial.py`) calls
Hugging Face `evaluate`'s "rouge", which wraps rouge-score's `RougeScorer` with its defaults:
`use_stemmer=False`, the default tokenizer, and ROUGE-Lsum on the text's own newlines (no sentence
splitter). MultiClinSum-2's scorer does the same. Which settings a run uses comes from its scoring
protocol (`clinsum.protocols`).

rouge-score's default tokenizer keeps only `[a-z0-9]` after lowercasing: every non-ASCII letter
(é, ã, ñ, ç ...) is a token boundary, so "diagnóstico" becomes "diagn" + "stico". The "multilingual"
tokenizer keeps Unicode letters and digits instead; results made with it are labelled as such.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from .io import ClinsumError, read_json

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_KEYS = tuple(f"{kind}_{part}" for kind in ROUGE_TYPES for part in ("p", "r", "f"))
BERTSCORE_KEYS = ("bertscore_p", "bertscore_r", "bertscore_f")
TOKENIZERS = ("default", "multilingual")


class MultilingualTokenizer:
    """Lowercased runs of Unicode word characters (letters, digits, underscore); no stemming.

    rouge-score's Porter stemmer is English-only, so it is not applied to other languages' words.
    """

    _WORD = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text.lower())


def rouge_tokenizer(name: str):
    """The tokenizer object RougeScorer takes (None selects rouge-score's default tokenizer)."""
    if name == "default":
        return None
    if name == "multilingual":
        return MultilingualTokenizer()
    raise ValueError(f"unknown ROUGE tokenizer {name!r}; expected one of {', '.join(TOKENIZERS)}")


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def rouge_scores(
    predictions: list[str],
    references: list[str],
    tokenizer: str = "default",
    use_stemmer: bool = False,
) -> list[dict]:
    """ROUGE-1/2/L/Lsum precision, recall and F1 per document, as floats in [0, 1].

    ROUGE-Lsum treats each newline-separated line as a sentence (rouge-score's own convention). An
    empty prediction scores 0 on every ROUGE key.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=use_stemmer, tokenizer=rouge_tokenizer(tokenizer)
    )
    rows = []
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        row = {}
        for kind in ROUGE_TYPES:
            score = scores[kind]
            row[f"{kind}_p"] = float(score.precision)
            row[f"{kind}_r"] = float(score.recall)
            row[f"{kind}_f"] = float(score.fmeasure)
        rows.append(row)
    return rows


# The layer lists that BERTScore cuts (as bert-score does: the first `num_layers` run, the rest are dropped)
_LAYER_LISTS = (("encoder", "layer"), ("transformer", "layer"), ("encoder", "block"), ("layers",), ("layer",))


def _keep_layers(model, num_layers: int):
    """Drop the encoder's layers after the first `num_layers` (bert-score's get_model, for the usual
    families: BERT, RoBERTa, XLM-R, DeBERTa, ELECTRA, DistilBERT, T5 and BART encoders)."""
    import torch

    for path in _LAYER_LISTS:
        owner = model
        for name in path[:-1]:
            owner = getattr(owner, name, None)
        layers = getattr(owner, path[-1], None) if owner is not None else None
        if isinstance(layers, torch.nn.ModuleList):
            if not 0 <= num_layers <= len(layers):
                raise ValueError(f"num_layers {num_layers} is not between 0 and the encoder's {len(layers)} layers")
            setattr(owner, path[-1], torch.nn.ModuleList(list(layers)[:num_layers]))
            if hasattr(model.config, "num_hidden_layers"):
                model.config.num_hidden_layers = num_layers
            return model
    raise ValueError(f"cannot find the layers of {type(model).__name__} to keep the first {num_layers}")


def _restore_sentencepiece_normalizer(tokenizer, model_dir: Path) -> None:
    """Give a DeBERTa-v2 tokenizer (mDeBERTa-v3, MultiClinSum-2's encoder) its SentencePiece model's own
    normalization back, as transformers 4.x's slow tokenizer (SentencePiece itself) applied it.

    transformers 5 builds DeBERTa-v2's tokenizer with Unicode NFC in place of the precompiled map the
    SentencePiece model carries (nmt_nfkc for mDeBERTa: NFKC plus whitespace and control-character rules), so
    µ, m², 1.º, ligatures, full-width and control characters become other pieces or [UNK]: 41 of 134 test
    texts (the sample reports and such characters) tokenized differently from transformers 4.57, none with
    this map restored (as 4.x's DebertaV2Converter built it: strip, the map, runs of spaces to one)."""
    from transformers import DebertaV2Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spm_file = model_dir / DebertaV2Tokenizer.vocab_files_names["vocab_file"]
    if not isinstance(tokenizer, DebertaV2Tokenizer) or backend is None or not spm_file.is_file():
        return
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm_file.read_bytes())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if not charsmap:
        return
    steps = [normalizers.Lowercase()] if getattr(tokenizer, "do_lower_case", False) else []
    steps += [normalizers.Strip(), normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    backend.normalizer = normalizers.Sequence(steps)


class _Encoder:
    """An encoder and its tokenizer as bert-score 0.3.13 loads and applies them (transformers' slow tokenizer
    where one exists, float32 weights, the first `num_layers` layers, truncation at the tokenizer's limit)."""

    def __init__(self, model_path: str, num_layers: int, device: str, max_tokens: int | None):
        import torch
        import transformers
        from transformers import AutoModel

        from .model_files import load_tokenizer

        self.tokenizer = load_tokenizer(model_path, use_fast=False)
        # bert-score encodes GPT-2 and RoBERTa byte-level BPE with a prefix space (its sent_encode)
        byte_level = tuple(getattr(transformers, name) for name in ("GPT2Tokenizer", "RobertaTokenizer") if hasattr(transformers, name))
        if isinstance(self.tokenizer, byte_level):
            self.tokenizer = load_tokenizer(model_path, use_fast=False, add_prefix_space=True)
        _restore_sentencepiece_normalizer(self.tokenizer, Path(model_path))
        limit = int(self.tokenizer.model_max_length)
        if max_tokens:
            limit = min(int(max_tokens), limit)
        # mDeBERTa's tokenizer declares no limit (1e30): truncating "at" it overflows, and cuts nothing
        self.limit = limit if limit < 10**9 else None
        model = AutoModel.from_pretrained(model_path, dtype=torch.float32)
        if hasattr(model, "decoder") and hasattr(model, "encoder"):
            model = model.encoder
        self.model = _keep_layers(model, int(num_layers)).to(device).eval()
        self.device = device
        self.pad_id = self.tokenizer.pad_token_id
        # special tokens weigh 0 (bert-score's idf dict without idf), though they are still matched against
        self.unweighted = {self.tokenizer.sep_token_id, self.tokenizer.cls_token_id}

    def ids(self, text: str) -> list[int]:
        text = text.strip()
        if not text:
            # bert-score: build_inputs_with_special_tokens([]), the special tokens around nothing
            return list(self.tokenizer("", add_special_tokens=True)["input_ids"])
        options = {"truncation": True, "max_length": self.limit} if self.limit else {"truncation": False}
        return list(self.tokenizer.encode(text, add_special_tokens=True, **options))

    def embed(self, texts: list[str]) -> list:
        """Each text's last kept hidden states (one tensor of tokens x width each), the texts run together
        in one padded batch as bert-score runs them."""
        import torch

        encoded = [self.ids(text) for text in texts]
        width = max(len(ids) for ids in encoded)
        batch = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        with torch.no_grad():
            hidden = self.model(batch.to(self.device), attention_mask=mask.to(self.device))[0].cpu()
        weights = [torch.tensor([0.0 if i in self.unweighted else 1.0 for i in ids]) for ids in encoded]
        return [(hidden[row, : len(ids)], weights[row]) for row, ids in enumerate(encoded)]


def _greedy_match(hyps: list, refs: list):
    """bert-score's greedy_cos_idf for one batch of pairs: cosine similarity of every candidate token to
    every reference token (padding counts as similarity 0), each side's best match averaged with its
    weights; P and R of a side that is only its two special tokens set to 0 (F left as computed)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    def padded(items):
        embeddings = pad_sequence([e for e, _ in items], batch_first=True, padding_value=2.0)
        weights = pad_sequence([w for _, w in items], batch_first=True)
        lengths = torch.tensor([e.shape[0] for e, _ in items])
        mask = torch.arange(embeddings.shape[1]).expand(len(items), -1) < lengths.unsqueeze(1)
        return embeddings, weights, mask

    ref_embedding, ref_weights, ref_mask = padded(refs)
    hyp_embedding, hyp_weights, hyp_mask = padded(hyps)
    ref_embedding = ref_embedding / torch.norm(ref_embedding, dim=-1).unsqueeze(-1)
    hyp_embedding = hyp_embedding / torch.norm(hyp_embedding, dim=-1).unsqueeze(-1)
    sim = torch.bmm(hyp_embedding, ref_embedding.transpose(1, 2))
    sim = sim * torch.bmm(hyp_mask.unsqueeze(2).float(), ref_mask.unsqueeze(1).float())
    word_precision = sim.max(dim=2)[0]
    word_recall = sim.max(dim=1)[0]
    precision = (word_precision * (hyp_weights / hyp_weights.sum(dim=1, keepdim=True))).sum(dim=1)
    recall = (word_recall * (ref_weights / ref_weights.sum(dim=1, keepdim=True))).sum(dim=1)
    f1 = 2 * precision * recall / (precision + recall)
    nothing = hyp_mask.sum(dim=1).eq(2) | ref_mask.sum(dim=1).eq(2)
    precision = precision.masked_fill(nothing, 0.0)
    recall = recall.masked_fill(nothing, 0.0)
    f1 = f1.masked_fill(torch.isnan(f1), 0.0)
    return precision, recall, f1


def bertscore(
    predictions: list[str],
    references: list[str],
    model_path: str,
    num_layers: int,
    batch_size: int = 16,
    device: str = "cpu",
    max_tokens: int | None = None,
    clamp: bool = False,
) -> list[dict]:
    """BERTScore precision, recall and F1 per document (raw cosine scores: no baseline rescaling, no idf).

    Computed here with transformers and torch, step for step as bert-score 0.3.13's `BERTScorer` computes it
    (bert-score, last released in 2023, calls tokenizer methods that transformers 5 removed):
    `tests/test_bertscore_fixtures.py` holds this to bert-score's own numbers, recorded on transformers 4.57,
    within 1e-6. The encoder's slow tokenizer where it has one, inputs stripped and truncated at the
    tokenizer's `model_max_length`, the first `num_layers` layers (the paper's distilbert-base-uncased: 5,
    bert-score's choice for it; all-MiniLM-L6-v2: 6), special tokens matched but not averaged, texts embedded
    in batches of `batch_size` (deduplicated, longest first) and pairs matched in batches of `batch_size`.
    `model_path` is a local model directory. `max_tokens` lowers the truncation limit (mDeBERTa's tokenizer
    declares no limit, and MultiClinSum-2's scorer truncates to 512 tokens); `clamp` clips F1 to [0, 1] as
    that scorer does. An empty prediction scores 0.
    """
    _check_pairs(predictions, references)
    if not predictions:
        return []
    import torch

    encoder = _Encoder(str(model_path), int(num_layers), device, max_tokens)
    batch_size = max(1, int(batch_size))
    # bert-score embeds each distinct text once, longest (in words) first; ties in a fixed order here
    texts = sorted(set(references) | set(predictions), key=lambda text: (-len(text.split(" ")), text))
    embedded = {}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        embedded.update(zip(chunk, encoder.embed(chunk)))
    scores = []
    for start in range(0, len(predictions), batch_size):
        hyps = [embedded[text] for text in predictions[start : start + batch_size]]
        refs = [embedded[text] for text in references[start : start + batch_size]]
        scores.append(torch.stack(_greedy_match(hyps, refs), dim=-1))
    rows = []
    for prediction, (p, r, f) in zip(predictions, torch.cat(scores).tolist()):
        if not prediction.strip():
            # bert-score already zeroes P and R for an empty candidate; make F1 explicit too.
            p = r = f = 0.0
        if clamp:
            f = min(1.0, max(0.0, f))
        rows.append({"bertscore_p": float(p), "bertscore_r": float(r), "bertscore_f": float(f)})
    return rows


def mean_scores(rows: Iterable[dict]) -> dict:
    """The mean of every numeric key over the rows (non-numeric keys such as "id" are skipped)."""
    rows = list(rows)
    if not rows:
        return {}
    keys = [key for key, value in rows[0].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return {key: sum(float(row[key]) for row in rows) / len(rows) for key in keys}


def resolve_num_layers(model_ref: str, model_dir: str | Path, num_layers: int | None) -> int:
    """The encoder layer BERTScore reads: from config if set, else bert-score's choice for a model it
    knows by name (distilbert-base-uncased: 5, as in the paper's evaluation), else the last layer."""
    if num_layers:
        return int(num_layers)
    from bert_score.utils import model2layers

    if model_ref in model2layers:
        return int(model2layers[model_ref])
    config_path = Path(model_dir) / "config.json"
    try:
        config = read_json(config_path)
    except (OSError, json.JSONDecodeError) as error:
        raise ClinsumError(f"{config_path}: cannot read the BERTScore model's config ({error})") from None
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ClinsumError(f"{config_path}: no layer count; set evaluate.bertscore.num_layers in the config")
