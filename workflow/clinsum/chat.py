"""Chat formatting and token cropping shared by the teacher, cropping, training and inference.

Every stage formats a (instruction, report[, answer]) triple through these functions, so the
prompt the student is trained on is token for token the prompt it sees at inference. Cropping cuts at a
token boundary mapped back to characters, so a cropped text is always a prefix of the original and never
ends in a broken character.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .io import ClinsumError

ROLES = ("system", "user", "paper_code")

# The paper's code (distil-tuning-llm, distil_ft_qwen25.py) trained on this hand-written ChatML, as a chat
# template so that every stage renders it alike: no system turn (so no default system prompt), a newline
# before each <|im_end|>, and nothing after the last one.
PAPER_CODE_TRAINING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '\\n<|im_end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '\\n<|im_start|>assistant\\n' }}{% endif -%}"
)
CHAT_TEMPLATES = {"paper_code": PAPER_CODE_TRAINING_TEMPLATE}


def build_messages(
    instruction: str, text: str, answer: str | None = None, role: str = "system", training: bool = False
) -> list[dict]:
    """ChatML messages: the instruction as the system turn (the paper's text) or prefixed to the user turn, the
    report as the user turn, and the answer as the assistant turn.

    `paper_code` is the paper's public code: one user turn "{instruction}: {report}" for the teacher and at
    inference (the model's template then adds its default system prompt), and "{instruction}:\n{report}" in
    training (`training=True`), rendered with `training_template(role)`."""
    if role == "system":
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
    elif role == "user" or (role == "paper_code" and training):
        messages = [{"role": "user", "content": f"{instruction}:\n{text}"}]
    elif role == "paper_code":
        messages = [{"role": "user", "content": f"{instruction}: {text}"}]
    else:
        raise ValueError(f"prompt role must be one of {ROLES}, got {role!r}")
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def training_template(role: str) -> str | None:
    """The chat template training examples of this prompt role are rendered with (None: the tokenizer's own)."""
    return CHAT_TEMPLATES.get(role)


def named_template(name: str | None) -> str | None:
    """A chat template by the name a crop record gives (`chat_template`); None: the tokenizer's own."""
    if name is None:
        return None
    if name not in CHAT_TEMPLATES:
        raise ClinsumError(f"unknown chat template {name!r} (known: {sorted(CHAT_TEMPLATES)})")
    return CHAT_TEMPLATES[name]


def _template(chat_template: str | None) -> dict:
    """apply_chat_template's keyword for a template other than the tokenizer's own (none for its own)."""
    return {"chat_template": chat_template} if chat_template is not None else {}


def _ids(encoded) -> list[int]:
    # transformers 4.x returns a list, newer versions a BatchEncoding
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def encode_prompt(tokenizer, messages: list[dict], chat_template: str | None = None) -> list[int]:
    """Token ids of the prompt turns followed by the assistant generation header."""
    prompt = [m for m in messages if m["role"] != "assistant"]
    return _ids(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, **_template(chat_template)))


def encode_example(tokenizer, messages: list[dict], chat_template: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) of a conversation that ends with an assistant turn.

    answer_ids are what follows the generation header in the fully formatted conversation: the
    answer and the template's end-of-turn tokens, which the model must learn to emit to stop.
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("encode_example needs a conversation ending with an assistant turn")
    prompt_ids = encode_prompt(tokenizer, messages, chat_template)
    full_ids = _ids(
        tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False, **_template(chat_template))
    )
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template does not format the prompt as a prefix of the conversation")
    return prompt_ids, full_ids[len(prompt_ids) :]


def prompt_ids(tokenizer, instruction: str, text: str, role: str, training: bool = False) -> list[int]:
    """The formatted prompt's ids: as training renders it (`training=True`: the role's training template) or as
    the teacher and inference do."""
    template = training_template(role) if training else None
    return encode_prompt(tokenizer, build_messages(instruction, text, role=role, training=training), template)


def example_ids(tokenizer, instruction: str, text: str, answer: str, role: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, answer_ids) of a training example, rendered as training renders it."""
    messages = build_messages(instruction, text, answer, role=role, training=True)
    return encode_example(tokenizer, messages, training_template(role))


def answer_overhead(tokenizer, role: str = "system") -> int:
    """Tokens the template adds after an answer (end-of-turn), counted inside the answer budget."""
    return len(example_ids(tokenizer, "x", "x", "", role)[1])


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


def crop_prompt(tokenizer, instruction: str, text: str, max_tokens: int, role: str, training: bool = False) -> str:
    """Crop the report so the formatted prompt (system+user turns and generation header) fits."""
    overhead = len(prompt_ids(tokenizer, instruction, "", role, training))
    budget = max_tokens - overhead
    if budget <= 0:
        raise _no_room_for_report(max_tokens, overhead)
    while True:
        cropped = crop_to_tokens(tokenizer, text, budget)
        excess = len(prompt_ids(tokenizer, instruction, cropped, role, training)) - max_tokens
        if excess <= 0:
            return cropped
        budget -= excess  # tokens can merge across the report's boundary with the template


def crop_answer(tokenizer, answer: str, max_tokens: int, role: str) -> str:
    """Crop an answer so that it and the template's end-of-turn tokens fit in `max_tokens`."""
    overhead = answer_overhead(tokenizer, role)
    budget = max_tokens - overhead
    while budget > 0:
        cropped = crop_to_tokens(tokenizer, answer, budget)
        excess = len(example_ids(tokenizer, "x", "x", cropped, role)[1]) - max_tokens
        if excess <= 0:
            return cropped
        budget -= excess
    raise _no_room_for_answer(max_tokens, overhead)


def _no_room_for_report(max_tokens: int, overhead: int) -> ClinsumError:
    return ClinsumError(f"a prompt budget of {max_tokens} tokens leaves no room for the report (the template uses {overhead})")


def _no_room_for_answer(max_tokens: int, overhead: int) -> ClinsumError:
    return ClinsumError(f"an answer budget of {max_tokens} tokens leaves no room for an answer (end of turn uses {overhead})")


def encode_cropped_prompt(
    tokenizer, instruction: str, text: str, role: str, max_tokens: int, budget_key: str
) -> tuple[list[int], bool]:
    """(prompt ids, cropped): the prompt's ids, its report cropped at a token boundary when the prompt would
    exceed `max_tokens`; `budget_key` names the config key that set it (infer.max_input_tokens,
    teacher.max_prompt_tokens) in the error when even an empty report does not fit."""
    ids = prompt_ids(tokenizer, instruction, text, role)
    if len(ids) <= max_tokens:
        return ids, False
    overhead = len(prompt_ids(tokenizer, instruction, "", role))
    if overhead >= max_tokens:
        raise ClinsumError(
            f"{budget_key}={max_tokens} leaves no room for the report "
            f"(the prompt template alone takes {overhead} tokens)"
        )
    cropped = crop_prompt(tokenizer, instruction, text, max_tokens, role)
    return prompt_ids(tokenizer, instruction, cropped, role), True


def crop_example(
    tokenizer, instruction: str, text: str, answer: str, role: str, prompt_tokens: int, answer_tokens: int
) -> "CroppedExample":
    """One example, per document: the report cropped to the prompt budget, the answer to the answer budget, and
    the token counts of the formatted conversation (the reference `ChatCropper` must equal)."""
    report = crop_prompt(tokenizer, instruction, text, prompt_tokens, role, training=True)
    cropped_answer = crop_answer(tokenizer, answer, answer_tokens, role)
    prompt, answer_ids = example_ids(tokenizer, instruction, report, cropped_answer, role)
    return CroppedExample(report, cropped_answer, len(prompt), len(answer_ids))


# ---------------------------------------------------------------------------------------------
# batched cropping: crop_example's results for many examples, with one tokenizer pass per text
#
# A fast tokenizer cuts its input at added tokens (<|im_start|>, <|im_end|>, ...) before normalizing and
# pre-tokenizing, so a rendered conversation head + lead + TEXT + trail + tail, with head ending and tail
# starting at an added token, encodes as head, lead + TEXT + trail and tail apart. One encoding of the middle
# part then gives the formatted count; when the pre-tokenizer splits by a regex without look-behind and the
# middle's tokens have a word boundary where TEXT starts, TEXT's own tokens (what crop_to_tokens cuts by) are a
# slice of it. Every assumption is checked per text; an example where one fails goes through crop_example.

MARKER = "\ue000clinsum\ue001"  # a private-use probe text, to find where a template puts the free text


@dataclass(frozen=True)
class CroppedExample:
    report: str
    answer: str
    prompt_tokens: int
    answer_tokens: int


class _Unproven(Exception):
    """The batched path cannot show it equals the per-document one for this example."""


class _TokenizerShape:
    """What the batched path may rely on, read once from a fast tokenizer's configuration."""

    def __init__(self, tokenizer):
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        added = list(getattr(tokenizer, "added_tokens_decoder", {}).items())
        self.added_ids = {token.content: token_id for token_id, token in added}
        self.longest_added = max((len(content) for content in self.added_ids), default=1)
        self.added_firsts = {content[0] for content in self.added_ids if content}
        if self.backend is None:
            self.usable = self.local = self.nfc = False
            return
        # the parts it relies on, each serialized alone: the whole tokenizer's JSON (vocabulary, merges) takes 0.5 s
        normalizer = _normalizer_kind(_component(self.backend.normalizer))
        # added tokens that strip neighbouring spaces or match after normalization would blur the cut
        self.usable = normalizer is not None and all(
            not (t.lstrip or t.rstrip or t.single_word or (t.normalized and normalizer != "none")) for _, t in added
        )
        dropout = getattr(self.backend.model, "dropout", None)
        self.local = self.usable and not dropout and _local_split(_component(self.backend.pre_tokenizer))
        self.nfc = normalizer == "NFC"

    def encode(self, texts: list[str]) -> list:
        # what tokenizer(texts, add_special_tokens=False) does, without building Python lists it does not need
        self.backend.no_truncation()
        self.backend.no_padding()
        self.backend.encode_special_tokens = False
        if not self.nfc:
            return self.backend.encode_batch(texts, add_special_tokens=False)
        # NFC leaves an NFC-stable text as it is, character for character: those skip the normalizer's pass (a
        # tenth of the encoding), with the same ids and offsets
        stable = [nfc_stable(text) for text in texts]
        normalized = iter(self.backend.encode_batch([t for t, keep in zip(texts, stable) if not keep], add_special_tokens=False))
        normalizer, self.backend.normalizer = self.backend.normalizer, None
        try:
            plain = iter(self.backend.encode_batch([t for t, keep in zip(texts, stable) if keep], add_special_tokens=False))
        finally:
            self.backend.normalizer = normalizer
        return [next(plain) if keep else next(normalized) for keep in stable]

    def last_added(self, text: str) -> tuple[int, str | None]:
        """(end, text) of the added token that ends last in `text`; (0, None) without one."""
        ends = [(text.rfind(c) + len(c), c) for c in self.added_ids if c in text]
        return max(ends) if ends else (0, None)

    def first_added(self, text: str) -> tuple[int, str | None]:
        """(start, text) of the added token that starts first in `text`; (len(text), None) without one."""
        starts = [(text.find(c), c) for c in self.added_ids if c in text]
        return min(starts) if starts else (len(text), None)

    def overlaps_added(self, rendered: str, start: int, end: int) -> bool:
        """Whether any added token's text overlaps rendered[start:end]."""
        low = max(0, start - self.longest_added + 1)
        window = rendered[low : end + self.longest_added - 1]
        if not any(char in window for char in self.added_firsts):
            return False
        for content in self.added_ids:
            at = window.find(content)
            while at >= 0:
                if low + at < end and low + at + len(content) > start:
                    return True
                at = window.find(content, at + 1)
        return False


def _component(part) -> dict | None:
    """A tokenizer component's configuration as tokenizer.json holds it: None for none, and a type nothing
    accepts for one that cannot be serialized (so the batched path keeps off)."""
    if part is None:
        return None
    try:
        return json.loads(part.__getstate__())
    except Exception:  # a custom component without a serialization: assume nothing about it
        return {"type": "unknown"}


@lru_cache(maxsize=1)
def _outside_assigned_bmp() -> re.Pattern:
    """A character outside the Basic Multilingual Plane or unassigned in Python's Unicode database."""
    ranges, start = [], None
    for code in range(0x10001):
        assigned = code < 0x10000 and unicodedata.category(chr(code)) not in ("Cn", "Cs")
        if assigned and start is None:
            start = code
        elif not assigned and start is not None:
            ranges.append(f"\\u{start:04x}-\\u{code - 1:04x}")
            start = None
    return re.compile("[^" + "".join(ranges) + "]")


def nfc_stable(text: str) -> bool:
    """Whether NFC, in any Unicode version, leaves `text` unchanged: it is NFC in Python's Unicode database
    and every character is assigned there (Unicode's stability policy: an assigned character never changes
    its decomposition or composition, so only characters unassigned here could normalize differently in a
    tokenizer's own tables, older or newer)."""
    return text.isascii() or (_outside_assigned_bmp().search(text) is None and unicodedata.is_normalized("NFC", text))


def _normalizer_kind(normalizer) -> str | None:
    """"none", "NFC", or None for any other normalizer (the batched path then keeps off)."""
    if normalizer is None or (normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")):
        return "none"
    return "NFC" if normalizer.get("type") == "NFC" else None


def _looks_left(regex: str) -> bool:
    """Whether a regex may look left of where a match starts: look-behind, anchors, word boundaries (a named
    group `(?<name>` counts too: rare in pre-tokenizers, and refusing is safe)."""
    in_class, i = False, 0
    while i < len(regex):
        char = regex[i]
        if char == "\\":
            if not in_class and regex[i + 1 : i + 2] in ("b", "B", "A", "z", "Z", "G"):
                return True
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            i += 1 if regex[i + 1 : i + 2] != "^" else 2  # a leading ^ negates the class
            i += regex[i : i + 1] == "]"  # a ] right after [ or [^ is a literal
            continue
        elif char in "^$" or regex.startswith("(?<", i):
            return True
        i += 1
    return False


def _local_split(pre_tokenizer) -> bool:
    """A pre-tokenizer whose words from a word boundary on do not depend on the text before it: one regex split
    (isolated matches, no look-behind or anchors; or byte-level's own regex) and byte-level mapping."""
    stages = [pre_tokenizer]
    if pre_tokenizer and pre_tokenizer.get("type") == "Sequence":
        stages = pre_tokenizer.get("pretokenizers", [])
    splitting = 0
    for stage in stages:
        kind = (stage or {}).get("type")
        if kind == "Split":
            pattern = stage.get("pattern", {})
            regex = pattern.get("Regex", None) if isinstance(pattern, dict) else None
            if regex is None or stage.get("behavior") != "Isolated" or stage.get("invert") or _looks_left(regex):
                return False
            splitting += 1
        elif kind == "ByteLevel":
            if stage.get("add_prefix_space"):
                return False
            splitting += bool(stage.get("use_regex", True))
        else:
            return False
    return splitting == 1


@dataclass(frozen=True)
class _Layout:
    """A template's rendering of one free text as head + lead + TEXT + trail + tail."""

    render: Callable[[list[str]], list[str]]
    head: str
    lead: str
    trail: str
    tail: str
    head_tokens: int
    tail_tokens: int
    derive: bool  # TEXT's own tokens may be read off the middle's (checked per text)

    def fits(self, shape: _TokenizerShape, text: str, rendered: str) -> bool:
        """The template put `text` where the probe said, and no added token overlaps the middle."""
        if len(rendered) != len(self.head) + len(self.lead) + len(text) + len(self.trail) + len(self.tail):
            return False
        if rendered != self.head + self.lead + text + self.trail + self.tail:
            return False
        start = len(self.head)
        return not shape.overlaps_added(rendered, start, start + len(self.lead) + len(text) + len(self.trail))


def _make_layout(shape: _TokenizerShape, render: Callable[[list[str]], list[str]]) -> _Layout | None:
    rendered = render([MARKER])[0]
    if rendered.count(MARKER) != 1:
        return None
    before, after = rendered.split(MARKER)
    cut, last = shape.last_added(before)
    head, lead = before[:cut], before[cut:]
    cut, first = shape.first_added(after)
    trail, tail = after[:cut], after[cut:]
    head_ids, tail_ids = (encoding.ids for encoding in shape.encode([head, tail]))
    # the parts must end and start with the added tokens found, or the tokenizer cut elsewhere
    if last and head_ids[-1:] != [shape.added_ids[last]] or first and tail_ids[:1] != [shape.added_ids[first]]:
        return None
    derive = shape.local and trail == "" and (not shape.nfc or lead == "" or lead.endswith("\n"))
    return _Layout(render, head, lead, trail, tail, len(head_ids), len(tail_ids), derive)


@dataclass
class _Measure:
    """A text measured in its place: tokens of the conversation part it sits in, and its own tokens."""

    context: int  # formatted prompt tokens, or answer tokens (answer and end of turn)
    alone: int  # len(tokenizer(text, add_special_tokens=False)["input_ids"])
    encoding: object  # the encoding that holds the text's own tokens
    first: int  # the text's first token in it
    shift: int  # the text's first character in it

    def end(self, keep: int) -> int:
        """Where the text's first `keep` tokens end in it (crop_to_tokens' offsets[keep - 1][1]); one token's
        offsets, not the list of all (a cropped report has thousands and the search reads one or two)."""
        return self.encoding.token_to_chars(self.first + keep - 1)[1] - self.shift


def _own_tokens(encoding, lead: int, size: int) -> int | None:
    """Index of the text's first token in lead + text's encoding, when its tokens are its own (word boundary)."""
    first, last = encoding.char_to_token(lead), encoding.char_to_token(lead + size - 1)
    if first is None or last is None or last != len(encoding) - 1:
        return None
    if encoding.token_to_chars(first)[0] != lead or encoding.token_to_chars(last)[1] != lead + size:
        return None
    if first > 0 and encoding.token_to_word(first - 1) == encoding.token_to_word(first):
        return None
    return first


def _crop_measured(text: str, whole: _Measure, budget: int, measure) -> tuple[str, _Measure]:
    """crop_to_tokens(text, budget) and the measure of its result, from the measure of the whole text."""
    if budget <= 0:
        return "", measure("")
    if whole.alone <= budget:
        return text, whole
    for keep in range(budget, 0, -1):
        cut = text[: whole.end(keep)].rstrip()
        cut_measure = measure(cut)
        if cut_measure.alone <= budget:
            return cut, cut_measure
    return "", measure("")


class ChatCropper:
    """`crop_example` for many examples at once, with the same results.

    Each batch encodes every distinct report and answer once, in its place in the formatted conversation
    (one batched tokenizer call); the budgets' search then only encodes the
    cropped candidates of reports and answers that do not fit. Examples where the tokenizer or the template
    break an assumption go through crop_example (`fallbacks` counts them).
    """

    def __init__(self, tokenizer, role: str, prompt_tokens: int, answer_tokens: int):
        if role not in ROLES:
            raise ValueError(f"prompt role must be one of {ROLES}, got {role!r}")
        self.tokenizer, self.role, self.template = tokenizer, role, training_template(role)
        self.prompt_tokens, self.answer_tokens = prompt_tokens, answer_tokens
        self.shape = _TokenizerShape(tokenizer)
        self.answer_overhead = answer_overhead(tokenizer, role)
        self._prompt_layouts: dict[str, tuple[_Layout | None, int]] = {}
        self.answer_layout = self._make_answer_layout() if self.shape.usable else None
        self.fallbacks = 0

    def _render(self, conversations: list[list[dict]], generation_prompt: bool) -> list[str]:
        return self.tokenizer.apply_chat_template(
            conversations, tokenize=False, add_generation_prompt=generation_prompt, **_template(self.template)
        )

    def _messages(self, instruction: str, text: str, answer: str | None = None) -> list[dict]:
        return build_messages(instruction, text, answer, role=self.role, training=True)

    def _make_answer_layout(self) -> _Layout | None:
        role = self.role
        layout = _make_layout(self.shape, lambda answers: self._render([self._messages("x", "x", a) for a in answers], False))
        # encode_example's prompt must be the conversation's part before the answer
        if layout is None or self._render([self._messages("x", "x")], True)[0] != layout.head + layout.lead:
            return None
        self.answer_lead_ids = self.shape.encode([layout.lead])[0].ids
        return layout

    def _prompt_layout(self, instruction: str) -> tuple[_Layout | None, int]:
        """The prompt's layout for an instruction (None: not usable) and the template's own tokens."""
        if instruction not in self._prompt_layouts:
            role = self.role
            overhead = len(prompt_ids(self.tokenizer, instruction, "", role, training=True))
            layout = None
            if self.answer_layout is not None:
                layout = _make_layout(
                    self.shape, lambda texts: self._render([self._messages(instruction, t) for t in texts], True)
                )
            if layout is not None:
                # the generation header must be the answer's lead, after an added token
                lead = self.answer_layout.lead
                before = layout.tail[: len(layout.tail) - len(lead)]
                if not layout.tail.endswith(lead) or not before or self.shape.last_added(before)[0] != len(before):
                    layout = None
            self._prompt_layouts[instruction] = (layout, overhead)
        return self._prompt_layouts[instruction]

    def crop(self, examples: list[tuple[str, str, str]]) -> list[CroppedExample]:
        """(instruction, report, answer) -> crop_example(tokenizer, instruction, report, answer, ...) each."""
        results: list[CroppedExample | None] = [None] * len(examples)
        batched = [i for i, (instruction, _, _) in enumerate(examples) if self._prompt_layout(instruction)[0]]
        items = []
        for i in batched:
            instruction, text, answer = examples[i]
            items += [(self._prompt_layout(instruction)[0], text, False), (self.answer_layout, answer, True)]
        measures = self._measure_all(items)
        for n, i in enumerate(batched):
            try:
                results[i] = self._fit(examples[i], measures[2 * n], measures[2 * n + 1])
            except _Unproven:
                pass
        self._check_joined(examples, results)
        for i, result in enumerate(results):
            if result is None:
                self.fallbacks += 1
                results[i] = crop_example(self.tokenizer, *examples[i], self.role, self.prompt_tokens, self.answer_tokens)
        return results

    def _fit(self, example: tuple[str, str, str], whole_report: _Measure | None, whole_answer: _Measure | None):
        """crop_prompt's and crop_answer's searches, on measures."""
        instruction, text, answer = example
        if whole_report is None or whole_answer is None:
            raise _Unproven
        layout, overhead = self._prompt_layout(instruction)
        budget = self.prompt_tokens - overhead
        if budget <= 0:
            raise _no_room_for_report(self.prompt_tokens, overhead)
        while True:
            report, report_measure = _crop_measured(text, whole_report, budget, self._measurer(layout, False))
            excess = report_measure.context - self.prompt_tokens
            if excess <= 0:
                break
            budget -= excess
        budget = self.answer_tokens - self.answer_overhead
        while True:
            if budget <= 0:
                raise _no_room_for_answer(self.answer_tokens, self.answer_overhead)
            cropped, answer_measure = _crop_measured(answer, whole_answer, budget, self._measurer(self.answer_layout, True))
            excess = answer_measure.context - self.answer_tokens
            if excess <= 0:
                break
            budget -= excess
        return CroppedExample(report, cropped, report_measure.context, answer_measure.context)

    def _check_joined(self, examples: list[tuple[str, str, str]], results: list[CroppedExample | None]) -> None:
        """encode_example: each whole conversation must join its prompt and answer as measured (else None)."""
        done = [i for i, result in enumerate(results) if result is not None]
        conversations = [self._messages(examples[i][0], results[i].report, results[i].answer) for i in done]
        answer = self.answer_layout
        for i, full in zip(done, self._render(conversations, False) if done else []):
            layout = self._prompt_layout(examples[i][0])[0]
            prompt = layout.head + layout.lead + results[i].report + layout.trail + layout.tail
            end = len(prompt) + len(results[i].answer) + len(answer.trail)
            if full != prompt + results[i].answer + answer.trail + answer.tail or self.shape.overlaps_added(
                full, len(prompt) - len(answer.lead), end
            ):
                results[i] = None

    def _measurer(self, layout: _Layout, answer: bool):
        def measure(text: str) -> _Measure:
            found = self._measure_all([(layout, text, answer)])[0]
            if found is None:
                raise _Unproven
            return found

        return measure

    def _measure_all(self, items: list[tuple[_Layout, str, bool]]) -> list[_Measure | None]:
        """Each (layout, text, is_answer) measured: one encoding of each distinct middle part, and of each text
        whose own tokens cannot be read off its middle part's; None where the layout does not hold."""
        rendered: dict[int, list[str]] = {}
        for number, layout in {id(layout): layout for layout, _, _ in items}.items():
            rendered[number] = iter(layout.render([text for each, text, _ in items if each is layout]))
        middles: dict[str, int] = {}
        for layout, text, _ in items:
            middles.setdefault(layout.lead + text + layout.trail, len(middles))
        encodings = self.shape.encode(list(middles)) if middles else []
        measures, alone = [], {}
        for layout, text, answer in items:
            encoding = encodings[middles[layout.lead + text + layout.trail]]
            measure = self._place(layout, text, next(rendered[id(layout)]), answer, encoding)
            if measure is not None and measure.encoding is None and text:
                alone.setdefault(text, len(alone))
            measures.append(measure)
        if alone:
            own = self.shape.encode(list(alone))
            for measure, (_, text, _) in zip(measures, items):
                if measure is not None and measure.encoding is None and text:
                    encoding = own[alone[text]]
                    measure.alone, measure.encoding = len(encoding), encoding
        return measures

    def _place(self, layout: _Layout, text: str, rendered: str, answer: bool, encoding) -> _Measure | None:
        if not layout.fits(self.shape, text, rendered):
            return None
        if answer:
            lead = self.answer_lead_ids
            if encoding.ids[: len(lead)] != lead:
                return None  # encode_example would refuse it: let crop_example say so
            context = len(encoding) - len(lead) + layout.tail_tokens
        else:
            context = layout.head_tokens + len(encoding) + layout.tail_tokens
        first = _own_tokens(encoding, len(layout.lead), len(text)) if layout.derive and text else None
        if first is None:
            return _Measure(context, 0, None, 0, 0)  # its own tokens: encoded apart (none for "")
        return _Measure(context, len(encoding) - first, encoding, first, len(layout.lead))


def encode_prompts(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """encode_prompt for many conversations: the same ids, from one batched tokenizer call."""
    if not conversations:
        return []
    rendered = [
        tokenizer.apply_chat_template([m for m in messages if m["role"] != "assistant"], tokenize=False, add_generation_prompt=True)
        for messages in conversations
    ]
    return [list(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
