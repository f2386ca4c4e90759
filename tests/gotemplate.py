"""A renderer for the part of Go's text/template that Ollama chat templates use, to check a Modelfile's TEMPLATE
without Ollama: ``{{ .Field }}``, ``{{ if COND }}...{{ else }}...{{ end }}`` (COND: ``.Field`` or ``eq``/``ne .Field
"text"``), ``{{ range .Messages }}...{{ end }}``, and ``{{-``/``-}}`` trimming of the whitespace beside an action."""

from __future__ import annotations

import re

_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", template[pos:]))
    return out


def _value(expr: str, scope: dict):
    expr = expr.strip()
    if expr.startswith('"'):
        return expr[1:-1].encode().decode("unicode_escape")
    if expr.startswith("."):
        return scope.get(expr[1:], "")
    raise ValueError(f"unsupported expression {expr!r}")


def _truth(cond: str, scope: dict) -> bool:
    parts = re.findall(r'"[^"]*"|\S+', cond)
    if parts[0] in ("eq", "ne"):
        same = _value(parts[1], scope) == _value(parts[2], scope)
        return same if parts[0] == "eq" else not same
    return bool(_value(cond, scope))


def render(template: str, data: dict) -> str:
    tokens = _tokens(template)

    def block(i: int, scope: dict, emit: bool) -> tuple[str, int, str]:
        """Render from token i to the matching else/end; return (text, next index, the word that ended it)."""
        out = []
        while i < len(tokens):
            kind, value = tokens[i]
            i += 1
            if kind == "text":
                out.append(value if emit else "")
            elif value in ("end", "else"):
                return "".join(out), i, value
            elif value.startswith("if "):
                cond = emit and _truth(value[3:], scope)
                yes, i, word = block(i, scope, emit and cond)
                no = ""
                if word == "else":
                    no, i, _ = block(i, scope, emit and not cond)
                out.append(yes if cond else no)
            elif value.startswith("range "):
                items = _value(value[6:], scope) if emit else []
                start = i
                _, i, _ = block(start, scope, False)  # find the end
                for item in items or []:
                    text, _, _ = block(start, {**scope, **item}, True)
                    out.append(text)
            else:
                out.append(str(_value(value, scope)) if emit else "")
        return "".join(out), i, ""

    return block(0, data, True)[0]
