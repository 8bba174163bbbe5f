"""Chat formatting and token cropping shared by the teacher, cropping, training and inference.

Every stage formats a (instruction, report[, answer]) triple through these functions, so the
prompt the student is trained on is token for token the prompt it sees at inference. Cropping cuts at a
token boundary mapped back to characters, so a cropped text is always a prefix of the original and never
ends in a broken character.
"""

from __future__ import annotations

from .io import ClinsumError

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


def crop_to_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """The longest prefix of `text`, cut at a token boundary, that encodes to at most `max_tokens`."""
    if max_tokens <= 0:
        return ""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    keep = max_tokens
    while keep > 0:
        cropped = text[: offsets[keep - 1][1]].rstrip()
        # a character split over several byte-level tokens maps back whole: re-check the count
        if len(tokenizer(cropped, add_special_tokens=False)["input_ids"]) <= max_tokens:
            return cropped
        keep -= 1
    return ""


def crop_prompt(tokenizer, instruction: str, text: str, max_tokens: int, role: str) -> str:
    """Crop the report so the formatted prompt (system+user turns and generation header) fits."""
    overhead = len(encode_prompt(tokenizer, build_messages(instruction, "", role=role)))
    budget = max_tokens - overhead
    if budget <= 0:
        raise ClinsumError(f"a prompt budget of {max_tokens} tokens leaves no room for the report (the template uses {overhead})")
    while True:
        cropped = crop_to_tokens(tokenizer, text, budget)
        excess = len(encode_prompt(tokenizer, build_messages(instruction, cropped, role=role))) - max_tokens
        if excess <= 0:
            return cropped
        budget -= excess  # tokens can merge across the report's boundary with the template


def crop_answer(tokenizer, answer: str, max_tokens: int, role: str) -> str:
    """Crop an answer so that it and the template's end-of-turn tokens fit in `max_tokens`."""
    probe = build_messages("x", "x", answer="", role=role)
    overhead = len(encode_example(tokenizer, probe)[1])
    budget = max_tokens - overhead
    while budget > 0:
        cropped = crop_to_tokens(tokenizer, answer, budget)
        excess = len(encode_example(tokenizer, build_messages("x", "x", cropped, role=role))[1]) - max_tokens
        if excess <= 0:
            return cropped
        budget -= excess
    raise ClinsumError(f"an answer budget of {max_tokens} tokens leaves no room for an answer (end of turn uses {overhead})")


def encode_cropped_prompt(
    tokenizer, instruction: str, text: str, role: str, max_tokens: int, budget_key: str
) -> tuple[list[int], bool]:
    """(prompt ids, cropped): the prompt's ids, its report cropped at a token boundary when the prompt would
    exceed `max_tokens`; `budget_key` names the config key that set it (infer.max_input_tokens,
    teacher.max_prompt_tokens) in the error when even an empty report does not fit."""
    ids = encode_prompt(tokenizer, build_messages(instruction, text, role=role))
    if len(ids) <= max_tokens:
        return ids, False
    overhead = len(encode_prompt(tokenizer, build_messages(instruction, "", role=role)))
    if overhead >= max_tokens:
        raise ClinsumError(
            f"{budget_key}={max_tokens} leaves no room for the report "
            f"(the prompt template alone takes {overhead} tokens)"
        )
    cropped = crop_prompt(tokenizer, instruction, text, max_tokens, role)
    return encode_prompt(tokenizer, build_messages(instruction, cropped, role=role)), True
