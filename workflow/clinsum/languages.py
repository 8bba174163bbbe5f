"""The languages of MultiClinSum (en, es, fr, pt) and MultiClinSum-2 (eleven more), by their codes: their English
names, for tables and prompts. One owner: the report and the judge read them here."""

from __future__ import annotations

LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "pt": "Portuguese", "it": "Italian", "ru": "Russian",
    "ca": "Catalan", "no": "Norwegian", "da": "Danish", "ro": "Romanian", "de": "German", "el": "Greek",
    "nl": "Dutch", "cs": "Czech", "sv": "Swedish",
}


def language_name(lang: str) -> str:
    """A language's English name; the code itself for a language not listed, "All languages" for "all"."""
    return "All languages" if lang == "all" else LANGUAGE_NAMES.get(lang, lang)
