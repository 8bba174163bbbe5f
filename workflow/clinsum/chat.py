"""Chat formatting shared by the teacher, cropping, training and inference.

Every stage formats a (instruction, report[, answer]) triple through these functions, so the
prompt the student is trained on is token for token the prompt it sees at inference.
"""

from __future__ import annotations

ROLES = ("system", "user")


def build_messages(instruction: str, text: str, answer: str | None = None, role: str = "system") -> list[dict]:
    """ChatML messages: the instruction as the system turn (the paper) or prefixed to the user turn
    (the paper's public code), the report as the user turn, and the answer as the assistant turn."""
    if role == "system":
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
    elif role == "user":
        messages = [{"role": "user", "content": f"{instruction}:\n{text}"}]
    else:
        raise ValueError(f"prompt role must be one of {ROLES}, got {role!r}")
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def _ids(encoded) -> list[int]:
    # transformers 4.x returns a list, newer versions a BatchEncoding
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the prompt turns followed by the assistant generation header."""
    prompt = [m for m in messages if m["role"] != "assistant"]
    return _ids(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True))


def encode_example(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) of a conversation that ends with an assistant turn.

    answer_ids are what follows the generation header in the fully formatted conversation: the
    answer and the template's end-of-turn tokens, which the model must learn to emit to stop.
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("encode_example needs a conversation ending with an assistant turn")
    prompt_ids = encode_prompt(tokenizer, messages)
    full_ids = _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False))
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not format the prompt as a prefix of the conversation")
    return prompt_ids, full_ids[len(prompt_ids) :]


def answer_overhead(tokenizer, role: str = "system") -> int:
    """Tokens the template adds after an answer (end-of-turn), counted inside the answer budget."""
    probe = build_messages("x", "x", "", role=role)
    return len(encode_example(tokenizer, probe)[1])
