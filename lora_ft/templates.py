"""Chat templates shipped in ``data_templates/chat/`` and the choice of template for a run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FALLBACK_TEMPLATE = "alpaca"  # for tokenizers without a chat template: plain text, ends answers with EOS


def _chat_dir():
    return resources.files("lora_ft.data_templates").joinpath("chat")


def available_chat_templates() -> list[str]:
    return sorted(p.name[: -len(".jinja")] for p in _chat_dir().iterdir() if p.name.endswith(".jinja"))


def read_chat_template(name: str) -> str:
    return _chat_dir().joinpath(f"{name}.jinja").read_text(encoding="utf-8")


def choose_chat_template(setting: str, tokenizer_template: str | None, resolve_path) -> tuple[str, str]:
    """Return ``(template_text, description)`` for the ``model.chat_template`` setting.

    ``resolve_path`` turns a relative path from the config into a real one.
    """
    if setting in ("auto", "tokenizer"):
        if tokenizer_template:
            return tokenizer_template, "the tokenizer's own chat template"
        if setting == "tokenizer":
            from lora_ft.errors import UserError

            raise UserError(
                "model.chat_template is 'tokenizer' but the tokenizer has no chat template",
                fix=f"set model.chat_template to one of {', '.join(available_chat_templates())} or a .jinja file",
            )
        return read_chat_template(FALLBACK_TEMPLATE), (
            f"'{FALLBACK_TEMPLATE}' from data_templates/chat (the tokenizer has no chat template)"
        )
    if setting in available_chat_templates():
        return read_chat_template(setting), f"'{setting}' from data_templates/chat"
    path = Path(resolve_path(setting))
    return path.read_text(encoding="utf-8"), f"the file {setting}"
