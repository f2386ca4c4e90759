"""A renderer for the part of Go's text/template that Ollama chat templates use, to check a Modelfile's TEMPLATE
without Ollama.

Actions: ``{{ PIPELINE }}`` (printed unless it declares or assigns a variable), ``{{ if }}``/``{{ else if }}``/
``{{ else }}``/``{{ end }}``, ``{{ range PIPELINE }}``, ``{{ range $x := PIPELINE }}`` and ``{{ range $i, $x :=
PIPELINE }}`` (with ``{{ else }}`` for none), ``{{ with }}``, comments, and ``{{-``/``-}}`` trimming of the whitespace
beside an action. Operands: ``.``, ``.A.B``, ``$``, ``$x``, ``$x.A.B``, ``$.A``, string (``"..."``, raw), number,
``true``/``false``/``nil`` literals and parenthesised pipelines (``(index .X 0).A``); ``|`` pipes. Variables: ``$x :=``
declares in the innermost ``if``/``with``/``range`` (a range declares afresh on each pass), ``$x =`` updates the
nearest declared one, as Go does. Functions: ``and``/``or`` (returning an argument, short-circuit, as Go 1.18+),
``not``, ``eq`` (one or more candidates)/``ne``/``lt``/``le``/``gt``/``ge``, ``len``, ``index``, ``slice``, and
Ollama's own ``json`` (``encoding/json.Marshal``). Truth is Go's: false, 0, "", nil and an empty list or map are false.

Values: Python ``str``/``int``/``float``/``bool``/``None``; ``dict`` for a Go map (``.key`` reads it, a missing key
gives nil as Ollama's ``missingkey=zero`` does, ``range`` visits it in sorted key order, ``json`` writes it with
sorted keys); ``list``; :class:`Struct` for a Go struct. Printing follows ``fmt.Print``, with one assumption about
types: a ``dict`` or ``list`` prints as its Go JSON (``json``), as Ollama's template types with a ``String`` method
do (``.Tools``, a call's ``.Function.Arguments``, a tool's ``.Function.Parameters.Properties``), while a
:class:`Struct` prints in Go's ``{field field}`` form (a list in it as ``[a b]``), since Ollama gives its template
structs no ``String`` method.
"""

from __future__ import annotations

import ast
import math
import re
from decimal import Decimal


class TemplateError(Exception):
    """What Go's text/template would refuse, at parse or at execution."""


class Struct:
    """A Go struct value: ``fields`` by Go name in declaration order, and for each the JSON key ``encoding/json``
    writes it under, as in a Go struct tag: ``"name"``, ``"name,omitempty"`` (left out when empty) or ``"-"``
    (never written); a field without one is written under its Go name. Reading a field that the struct lacks is an
    error, as in Go."""

    def __init__(self, fields: dict, tags: dict | None = None) -> None:
        self.fields = dict(fields)
        self.tags = dict(tags or {})

    def field(self, name: str):
        if name not in self.fields:
            raise TemplateError(f"can't evaluate field {name} in a struct with fields {sorted(self.fields)}")
        return self.fields[name]

    def __repr__(self) -> str:
        return f"Struct({self.fields!r})"


# --- printing and JSON, as Go writes them ----------------------------------------------------------------------


def _go_float(value: float, json: bool) -> str:
    """A float64 as ``encoding/json`` (json=True) or ``fmt``'s ``%v`` writes it: the shortest digits that read
    back; in exponent form outside [1e-6, 1e21) for JSON, for a decimal exponent below -4 or above 5 for %v
    (``1e+06``)."""
    if math.isnan(value) or math.isinf(value):
        if json:
            raise TemplateError(f"json: unsupported value: {value}")
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    digits = Decimal(repr(value))
    sign, digit_tuple, exponent = digits.as_tuple()
    mantissa = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exp10 = len(digit_tuple) + exponent - 1  # the power of ten of the first digit
    abs_value = abs(value)
    use_e = (abs_value < 1e-6 or abs_value >= 1e21) if json else (exp10 < -4 or exp10 >= 6)
    prefix = "-" if sign else ""
    if use_e:
        body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
        exp_text = f"{abs(exp10):02d}" if not json else str(abs(exp10))
        return f"{prefix}{body}e{'-' if exp10 < 0 else '+'}{exp_text}"
    text = format(abs(digits), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return prefix + text


def _go_json_string(text: str) -> str:
    """A string as ``encoding/json`` writes it (Go 1.22 and later, as Ollama is built): HTML-safe (``<``, ``>``,
    ``&`` as ``\\u003c``...), U+2028 and U+2029 escaped, other non-ASCII text as it is."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # not valid UTF-8: Go writes the replacement character
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _empty(value) -> bool:
    return value is None or value is False or value == 0 and not isinstance(value, bool) or (
        isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def go_json(value) -> str:
    """``value`` as Go's ``encoding/json.Marshal`` writes it (what Ollama's ``json`` template function returns):
    compact, map keys sorted, struct fields in declaration order, HTML-safe strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value, json=True)
    if isinstance(value, str):
        return _go_json_string(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_json_string(str(k))}:{go_json(value[k])}"
                              for k in sorted(value, key=str)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if isinstance(value, Struct):
        parts = []
        for name, field_value in value.fields.items():
            key, _, options = value.tags.get(name, name).partition(",")
            if key == "-" or ("omitempty" in options.split(",") and _empty(field_value)):
                continue
            parts.append(f"{_go_json_string(key or name)}:{go_json(field_value)}")
        return "{" + ",".join(parts) + "}"
    raise TemplateError(f"json: unsupported type {type(value).__name__}")


def _go_print(value, nested: bool = False) -> str:
    """``value`` as ``{{ value }}`` prints it (``fmt.Print``); ``nested``: as a field inside a printed struct."""
    if value is None:
        return "<nil>" if nested else "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value, json=False)
    if isinstance(value, str):
        return value
    if nested and isinstance(value, (list, tuple)):
        return "[" + " ".join(_go_print(v, nested=True) for v in value) + "]"  # a plain slice in a struct
    if isinstance(value, (dict, list, tuple)):
        return go_json(value)  # Ollama's map and list types print themselves as JSON
    if isinstance(value, Struct):
        return "{" + " ".join(_go_print(v, nested=True) for v in value.fields.values()) + "}"
    raise TemplateError(f"cannot print a {type(value).__name__}")


def truth(value) -> bool:
    """Go's truth: false, 0, "", nil and an empty list or map are false; any struct is true."""
    if isinstance(value, Struct):
        return True
    return not _empty(value)


# --- lexing and parsing ------------------------------------------------------------------------------------------

_WS = " \t\r\n"
_ACTION = re.compile(r'{{(?:(-)[ \t\r\n])?[ \t\r\n]*((?:"(?:[^"\\\n]|\\.)*"|`[^`]*`|/\*.*?\*/|.)*?)'
                     r'[ \t\r\n]*(?:[ \t\r\n](-))?}}', re.S)
_LEX = re.compile(r'''(?P<space>[ \t\r\n]+)|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)|(?P<decl>:=)|
    (?P<assign>=)|(?P<comma>,)|(?P<pipe>\|)|(?P<lp>\()|(?P<rp>\))|(?P<var>\$[A-Za-z0-9_]*)|
    (?P<num>[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))|(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)|
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*)''', re.X)


def _tokens(template: str) -> list[tuple[str, str]]:
    """The template as ("text", text) and ("action", action) pieces, with the trimming done."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(_WS)
        out.append(("text", text))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = template[pos:]
            pos += len(rest) - len(rest.lstrip(_WS))
    out.append(("text", template[pos:]))
    return [piece for piece in out if piece != ("text", "")]


def _lex(expr: str) -> list[tuple[str, str, bool]]:
    """(kind, text, whether whitespace came before it)."""
    out, pos, spaced = [], 0, True
    while pos < len(expr):
        m = _LEX.match(expr, pos)
        if m is None:
            raise TemplateError(f"bad character in {expr!r} at {pos}")
        pos = m.end()
        if m.lastgroup == "space":
            spaced = True
            continue
        out.append((m.lastgroup, m.group(), spaced))
        spaced = False
    return out


class _Pipe:
    def __init__(self, decl: list[str], assign: bool, cmds: list[list[tuple]]) -> None:
        self.decl, self.assign, self.cmds = decl, assign, cmds


def _parse_pipe(expr: str, what: str = "") -> _Pipe:
    toks = _lex(expr)
    decl, assign = [], False
    if toks and toks[0][0] == "var":
        names, i = [toks[0][1]], 1
        if i < len(toks) and toks[i][0] == "comma" and i + 1 < len(toks) and toks[i + 1][0] == "var":
            names.append(toks[i + 1][1])
            i += 2
        if i < len(toks) and toks[i][0] in ("decl", "assign"):
            if len(names) == 2 and what != "range":
                raise TemplateError(f"too many declarations in {expr!r}")
            decl, assign, toks = names, toks[i][0] == "assign", toks[i + 1:]
    cmds, pos = _parse_cmds(toks, 0, expr)
    if pos != len(toks):
        raise TemplateError(f"unexpected {toks[pos][1]!r} in {expr!r}")
    return _Pipe(decl, assign, cmds)


def _parse_cmds(toks: list, pos: int, expr: str) -> tuple[list[list[tuple]], int]:
    cmds: list[list[tuple]] = [[]]
    while pos < len(toks) and toks[pos][0] != "rp":
        if toks[pos][0] == "pipe":
            cmds.append([])
            pos += 1
            continue
        operand, pos = _parse_operand(toks, pos, expr)
        cmds[-1].append(operand)
    if any(not cmd for cmd in cmds):
        raise TemplateError(f"missing value in {expr!r}")
    return cmds, pos


def _chain(toks: list, pos: int) -> tuple[list[str], int]:
    """Fields written right after an operand (``$x.A.B``, ``(...).A``)."""
    if pos < len(toks) and toks[pos][0] == "field" and not toks[pos][2] and toks[pos][1] != ".":
        return toks[pos][1][1:].split("."), pos + 1
    return [], pos


def _parse_operand(toks: list, pos: int, expr: str) -> tuple[tuple, int]:
    kind, text, _ = toks[pos]
    pos += 1
    if kind == "str":
        try:
            return ("lit", ast.literal_eval(text)), pos
        except (ValueError, SyntaxError) as exc:
            raise TemplateError(f"bad string {text}") from exc
    if kind == "raw":
        return ("lit", text[1:-1]), pos
    if kind == "num":
        return ("lit", float(text) if any(c in text for c in ".eE") else int(text)), pos
    if kind == "ident":
        if text in ("true", "false"):
            return ("lit", text == "true"), pos
        if text == "nil":
            return ("lit", None), pos
        if text not in _FUNCS:
            raise TemplateError(f'function "{text}" not defined')
        return ("func", text), pos
    if kind == "var":
        fields, pos = _chain(toks, pos)
        return ("var", text, fields), pos
    if kind == "field":
        return ("field", [] if text == "." else text[1:].split(".")), pos
    if kind == "lp":
        cmds, pos = _parse_cmds(toks, pos, expr)
        if pos >= len(toks) or toks[pos][0] != "rp":
            raise TemplateError(f"unclosed ( in {expr!r}")
        fields, pos = _chain(toks, pos + 1)
        return ("sub", _Pipe([], False, cmds), fields), pos
    raise TemplateError(f"unexpected {text!r} in {expr!r}")


def _parse(tokens: list, i: int) -> tuple[list, int, str | None]:
    """Nodes from token i to the ``end``/``else`` that closes them: (nodes, next index, the closing action)."""
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        if value.startswith("/*"):
            if not value.endswith("*/"):
                raise TemplateError(f"unclosed comment {value!r}")
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in ("end", "else"):
            return nodes, i, value
        if word in ("if", "with", "range"):
            node, i = _parse_branch(word, value[len(word):], tokens, i)
            nodes.append(node)
        elif word in ("define", "template", "block", "break", "continue"):
            raise TemplateError(f"{word} is not supported by this renderer")
        else:
            nodes.append(("action", _parse_pipe(value)))
    return nodes, i, None


def _parse_branch(word: str, expr: str, tokens: list, i: int) -> tuple[tuple, int]:
    branches = [(_parse_pipe(expr, word), None)]
    body, i, closing = _parse(tokens, i)
    branches[0] = (branches[0][0], body)
    otherwise = None
    while closing is not None and closing.startswith("else ") and word != "range":
        rest = closing[5:].strip()
        if not rest.startswith(word + " "):
            raise TemplateError(f"unexpected {{{{ {closing} }}}}")
        pipe = _parse_pipe(rest[len(word):], word)
        body, i, closing = _parse(tokens, i)
        branches.append((pipe, body))
    if closing == "else":
        otherwise, i, closing = _parse(tokens, i)
    if closing != "end":
        raise TemplateError(f"{{{{ {word} }}}} without its {{{{ end }}}}" if closing is None
                            else f"unexpected {{{{ {closing} }}}}")
    return (word, branches, otherwise), i


# --- execution ---------------------------------------------------------------------------------------------------


class _State:
    def __init__(self, data) -> None:
        self.frames: list[dict] = [{"$": data}]

    def lookup(self, name: str):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise TemplateError(f"undefined variable: {name}")

    def declare(self, name: str, value) -> None:
        self.frames[-1][name] = value

    def assign(self, name: str, value) -> None:
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise TemplateError(f"undefined variable: {name}")


def _field(value, name: str):
    if isinstance(value, Struct):
        return value.field(name)
    if isinstance(value, dict):
        return value.get(name)  # missingkey=zero: a missing key reads as nil
    if value is None:
        raise TemplateError(f"nil pointer evaluating .{name}")
    raise TemplateError(f"can't evaluate field {name} in type {type(value).__name__}")


def _fields(value, names: list[str]):
    for name in names:
        value = _field(value, name)
    return value


def _kind(value) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    raise TemplateError(f"incompatible types for comparison: {type(value).__name__}")


def _eq(a, b) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        if "nil" in (ka, kb):
            return False
        raise TemplateError(f"incompatible types for comparison: {ka} and {kb}")
    return a == b


def _less(a, b) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka not in ("int", "float", "string"):
        raise TemplateError(f"invalid type for comparison: {ka} and {kb}")
    return a < b


def _len(value) -> int:
    if isinstance(value, str):
        return len(value.encode())  # Go counts bytes
    if isinstance(value, (list, tuple, dict)):
        return len(value)
    raise TemplateError(f"len of {type(value).__name__}")


def _index(value, *keys):
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, (list, tuple, str)) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(value):
                raise TemplateError(f"index out of range: {key}")
            value = value[key] if not isinstance(value, str) else value.encode()[key]
        else:
            raise TemplateError(f"can't index item of type {type(value).__name__}")
    return value


def _slice(value, *bounds):
    if not isinstance(value, (list, tuple, str)) or len(bounds) > 2 or any(
            not isinstance(b, int) or isinstance(b, bool) for b in bounds):
        raise TemplateError(f"can't slice item of type {type(value).__name__}")
    seq = value.encode() if isinstance(value, str) else value
    start = bounds[0] if bounds else 0
    stop = bounds[1] if len(bounds) > 1 else len(seq)
    if not 0 <= start <= stop <= len(seq):
        raise TemplateError(f"index out of range: {start}:{stop}")
    part = seq[start:stop]
    return part.decode(errors="replace") if isinstance(value, str) else list(part)


def _eq_any(a, *others) -> bool:
    """Go's ``eq``: whether ``a`` equals any of the others."""
    if not others:
        raise TemplateError("missing argument for comparison")
    return any(_eq(a, b) for b in others)


_FUNCS = {
    "not": lambda a: not truth(a),
    "eq": _eq_any,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _less,
    "le": lambda a, b: _less(a, b) or _eq(a, b),
    "gt": lambda a, b: not (_less(a, b) or _eq(a, b)),
    "ge": lambda a, b: not _less(a, b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "json": go_json,  # Ollama's: encoding/json.Marshal
    "and": None,  # short-circuit: evaluated in _call
    "or": None,
}


def _call(name: str, args: list, state: _State, dot, final):
    """Call a function on operand nodes ``args`` (and ``final``, the value piped in, if any)."""
    thunks = [lambda a=a: _operand(a, state, dot) for a in args]
    if final is not _NOTHING:
        thunks.append(lambda: final)
    if name in ("and", "or"):
        if not thunks:
            raise TemplateError(f"{name}: no arguments")
        for thunk in thunks:
            value = thunk()
            if truth(value) != (name == "and"):
                return value
        return value
    try:
        return _FUNCS[name](*(thunk() for thunk in thunks))
    except TypeError as exc:
        raise TemplateError(f"wrong number of arguments for {name}: {len(thunks)}") from exc


_NOTHING = object()


def _operand(node: tuple, state: _State, dot):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "field":
        return _fields(dot, node[1])
    if kind == "var":
        return _fields(state.lookup(node[1]), node[2])
    if kind == "sub":
        return _fields(_pipe(node[1], state, dot), node[2])
    if kind == "func":
        return _call(node[1], [], state, dot, _NOTHING)
    raise TemplateError(f"bad operand {node!r}")


def _pipe(pipe: _Pipe, state: _State, dot, declare: bool = True):
    value = _NOTHING
    for cmd in pipe.cmds:
        if cmd[0][0] == "func":
            value = _call(cmd[0][1], cmd[1:], state, dot, value)
        elif len(cmd) > 1 or value is not _NOTHING:
            raise TemplateError("can't give an argument to a non-function")
        else:
            value = _operand(cmd[0], state, dot)
    if declare and pipe.decl:
        (state.assign if pipe.assign else state.declare)(pipe.decl[0], value)
    return value


def _items(value) -> list[tuple]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if isinstance(value, dict):
        return [(key, value[key]) for key in sorted(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        return [(i, i) for i in range(value)]
    raise TemplateError(f"range can't iterate over {_go_print(value)}")


def _run(nodes: list, state: _State, dot, out: list) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "action":
            value = _pipe(node[1], state, dot)
            if not node[1].decl:
                out.append(_go_print(value))
        elif kind in ("if", "with"):
            _, branches, otherwise = node
            state.frames.append({})
            try:
                for pipe, body in branches:
                    value = _pipe(pipe, state, dot)
                    if truth(value):
                        _run(body, state, value if kind == "with" else dot, out)
                        break
                else:
                    if otherwise is not None:
                        _run(otherwise, state, dot, out)
            finally:
                state.frames.pop()
        elif kind == "range":
            _, [(pipe, body)], otherwise = node
            items = _items(_pipe(pipe, state, dot, declare=False))
            for key, item in items:
                frame = {}
                if len(pipe.decl) == 1:
                    frame[pipe.decl[0]] = item
                elif len(pipe.decl) == 2:
                    frame[pipe.decl[0]], frame[pipe.decl[1]] = key, item
                state.frames.append(frame)
                try:
                    _run(body, state, item, out)
                finally:
                    state.frames.pop()
            if not items and otherwise is not None:
                state.frames.append({})
                try:
                    _run(otherwise, state, dot, out)
                finally:
                    state.frames.pop()


def _check_pipe(pipe: _Pipe, scope: list[str]) -> None:
    def operands(cmds):
        for cmd in cmds:
            for node in cmd:
                if node[0] == "var" and node[1] not in scope:
                    raise TemplateError(f"undefined variable: {node[1]}")
                if node[0] == "sub":
                    operands(node[1].cmds)
    operands(pipe.cmds)
    if pipe.assign and pipe.decl[0] not in scope:
        raise TemplateError(f"undefined variable: {pipe.decl[0]}")


def _check(nodes: list, scope: list[str]) -> None:
    """Go's parse-time check: every variable used or assigned is declared before, in an enclosing block."""
    for node in nodes:
        if node[0] == "action":
            _check_pipe(node[1], scope)
            if not node[1].assign:
                scope.extend(node[1].decl)
        elif node[0] in ("if", "with", "range"):
            mark = len(scope)
            for pipe, body in node[1]:
                _check_pipe(pipe, scope)
                if not pipe.assign:
                    scope.extend(pipe.decl)
                inner = len(scope)
                _check(body, scope)
                del scope[inner:]
            if node[2] is not None:
                _check(node[2], scope)
            del scope[mark:]


def parse(template: str) -> list:
    """The template's nodes; a TemplateError where Go's parser would refuse it."""
    nodes, _, closing = _parse(_tokens(template), 0)
    if closing is not None:
        raise TemplateError(f"unexpected {{{{ {closing} }}}}")
    _check(nodes, ["$"])
    return nodes


def render(template: str, data) -> str:
    """``template`` executed on ``data`` (the value of ``.`` and ``$``)."""
    out: list[str] = []
    _run(parse(template), _State(data), data, out)
    return "".join(out)

