"""Spec text -> AST, with every syntax error located.

Parsing is LALR (lark). When the whole file does not parse, the file is cut at statement keywords
and each piece is parsed on its own, so that every broken statement gets its own diagnostic.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import lark
from lark import Lark, Token, Transformer_NonRecursive, v_args

from . import ast
from ..lang.source import Diagnostic, DiagnosticBag, Source, Span, SpecError

MAX_SOURCE_CHARS = 1_000_000
MAX_NESTING = 64
STATEMENT_KEYWORDS = {"size", "param", "input", "feature", "score", "weight", "mask", "bias", "normalize", "pool",
                      "let", "output"}

_TOKEN_TEXT = {
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "EQUAL": "`=`", "COMMA": "`,`", "COLON": "`:`", "NAME": "a name", "NUMBER": "a number",
    "CMPOP": "a comparison", "ADDOP": "`+` or `-`",
    "MULOP": "`*`, `/`, `//` or `%`", "$END": "end of file",
}


def grammar_path(name: str = "attn.lark") -> Path:
    """A file of the repository's grammar/ folder: attncc/grammar/ in an installed wheel (setup.py
    copies it there), or grammar/ beside the package in a source checkout or editable install."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "grammar", package.parent / "grammar"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"grammar/{name} is neither in the package nor beside it ({package})")


@lru_cache(maxsize=1)
def parser() -> Lark:
    grammar = grammar_path().read_text(encoding="utf-8")
    # cache=True keeps the LALR tables in the temp dir, keyed by the grammar's hash: ~40 ms per process saved
    return Lark(grammar, parser="lalr", lexer="basic", start=["start", "stmt"], propagate_positions=True,
                maybe_placeholders=True, cache=True)


def _span(meta_or_token) -> Span:
    """Tokens and rule metadata both carry start_pos / end_pos."""
    return Span(meta_or_token.start_pos, meta_or_token.end_pos)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """lark tree -> attncc.ast, offsetting spans by `base` (for statement-wise reparsing); iterative, since
    operator chains (`a + b + ...`, `not not ...`) nest without brackets, as deep as a spec is long."""

    def __init__(self, base: int = 0):
        super().__init__()
        self.base = base

    def _s(self, x) -> Span:
        s = _span(x)
        return Span(s.start + self.base, s.end + self.base)

    def start(self, meta, children):
        return children[0]

    def attention(self, meta, children):
        name, *stmts = children
        return ast.Spec(str(name), self._s(name), tuple(stmts), self._s(meta))

    def size_decl(self, meta, c):
        return ast.SizeDecl(self._s(meta), str(c[0]), self._s(c[0]), c[1])

    def let_decl(self, meta, c):
        return ast.LetDecl(self._s(meta), str(c[0]), self._s(c[0]), c[1])

    def param_decl(self, meta, c):
        return ast.ParamDecl(self._s(meta), str(c[0]), self._s(c[0]), tuple(c[1]), c[2])

    def input_decl(self, meta, c):
        dtype = c[2]
        return ast.InputDecl(self._s(meta), str(c[0]), self._s(c[0]), tuple(c[1]),
                             str(dtype) if dtype is not None else None,
                             self._s(dtype) if dtype is not None else None, c[3])

    def feature_decl(self, meta, c):
        args, kwargs = c[2] if c[2] is not None else ((), ())
        return ast.FeatureDecl(self._s(meta), str(c[0]), self._s(c[0]), str(c[1]), self._s(c[1]), args, kwargs)

    def defkind(self, meta, c):
        return c[0]

    def def_stmt(self, meta, c):
        kind, a, b, body = c
        return ast.Def(self._s(meta), str(kind), self._s(kind), (str(a), str(b)), self._s(a) | self._s(b), body)

    def normalize_stmt(self, meta, c):
        args, kwargs = c[1] if c[1] is not None else ((), ())
        return ast.Normalize(self._s(meta), str(c[0]), self._s(c[0]), args, kwargs, c[2])

    def approx(self, meta, c):
        args, kwargs = c[1] if c[1] is not None else ((), ())
        return ast.Approx(str(c[0]), self._s(c[0]), args, kwargs)

    def pool_decl(self, meta, c):
        *names, fn, arglist = c
        args, kwargs = arglist if arglist is not None else ((), ())
        return ast.PoolDecl(self._s(meta), tuple(str(n) for n in names), tuple(self._s(n) for n in names),
                            str(fn), self._s(fn), args, kwargs)

    def map_decl(self, meta, c):
        name, *stmts = c
        return ast.MapDecl(self._s(meta), str(name), self._s(name), tuple(stmts))

    def output_stmt(self, meta, c):
        return ast.OutputDecl(self._s(meta), c[0])

    def exprs(self, meta, c):
        return tuple(c)

    def args(self, meta, c):
        return (tuple(a for a in c if not isinstance(a, ast.Kwarg)),
                tuple(a for a in c if isinstance(a, ast.Kwarg)))

    def kwarg(self, meta, c):
        return ast.Kwarg(str(c[0]), c[1], self._s(meta))

    def binary(self, meta, c):
        left, op, right = c
        return ast.Binary(self._s(meta), str(op), left, right)

    def unary(self, meta, c):
        op, operand = c
        return ast.Unary(self._s(meta), str(op), operand)

    def number(self, meta, c):
        text = str(c[0])
        is_int = not any(ch in text for ch in ".eE")
        return ast.Num(self._s(meta), int(text) if is_int else float(text), is_int)

    def boolean(self, meta, c):
        return ast.Bool(self._s(meta), str(c[0]) == "true")

    def name(self, meta, c):
        return ast.Name(self._s(meta), str(c[0]))

    def call(self, meta, c):
        args, kwargs = c[1] if c[1] is not None else ((), ())
        return ast.Call(self._s(meta), str(c[0]), self._s(c[0]), args, kwargs)

    def index(self, meta, c):
        return ast.Index(self._s(meta), str(c[0]), self._s(c[0]), tuple(c[1]))

    def items(self, meta, c):
        return tuple(c)

    def slice(self, meta, c):
        return ast.Slice(self._s(meta), c[0], c[1])


def _describe(token: Token | None) -> str:
    if token is None or token.type == "$END":
        return "end of file"
    return f"`{token}`"


def _expected(expected) -> str | None:
    names = sorted({_TOKEN_TEXT.get(e, f"`{e.lower()}`") for e in expected if not e.startswith("__")})
    if not names:
        return None
    if len(names) > 6:
        return None
    return "expected " + ", ".join(names)


# Characters the lexer rejects that users bring from other languages, and what to write instead.
_CHARACTER_HINTS = {
    "~": "there is no bitwise not: write `-x - 1` (or `x ^ -1`)",
    "!": "write `not x` for a negation (`!=` compares)",
    ";": "statements need no separator: start the next one on the same line or the next",
    "'": "there are no strings in a spec", '"': "there are no strings in a spec",
    "@": "there is no matrix product: `dot(q[i], k[j])` is the inner product of a query and a key row",
    "?": "write `where(c, a, b)` for a conditional",
    "$": "names are ASCII letters, digits and `_`",
}


def _character_hint(ch: str) -> str:
    if ch in _CHARACTER_HINTS:
        return _CHARACTER_HINTS[ch]
    if ch.isalpha() or ch.isdigit():  # a letter or digit outside ASCII
        return "names are ASCII letters, digits and `_`; comments start with `#`"
    return f"`{ch}` is not part of the language; comments start with `#`"


def _token_hint(token: Token, text: str) -> str | None:
    """What the user most likely meant by a token that cannot stand where it is, judged from the text
    just before it (`>>`, `&&`, `||`, `0x1f`, `1_000`), or None. Token positions are offsets in text."""
    at = token.start_pos
    before = text[at - 1] if at > 0 else ""
    word = str(token)
    if word in ("<", ">") and before == word:
        shift = "x // 2 ** n" if word == ">" else "x * 2 ** n"
        return f"there are no shift operators: write `{shift}`"
    if word in ("&", "|") and before == word:
        return f"write `{'and' if word == '&' else 'or'}` to combine conditions"
    if token.type == "NAME" and before.isdigit():
        number = re.search(r"[0-9.]*$", text[:at]).group() + word
        if number[:2].lower() in ("0x", "0o", "0b"):
            try:
                return f"write integers in decimal: `{number}` is `{int(number, 0)}`"
            except ValueError:
                return "write integers in decimal"
        if word.startswith("_"):
            return f"digits are written without `_`: `{number.replace('_', '')}`"
    return None


def _syntax_diagnostic(err: lark.exceptions.UnexpectedInput, base: int, text: str) -> Diagnostic:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        ch = text[err.pos_in_stream - base] if err.pos_in_stream - base < len(text) else ""
        return Diagnostic(f"unexpected character {ch!r}", Span(err.pos_in_stream, err.pos_in_stream + 1),
                          _character_hint(ch))
    token = getattr(err, "token", None)
    if token is None or token.type == "$END":
        pos = base + len(text.rstrip())
        message = "statement ends too early" if base else "unexpected end of input"
        return Diagnostic(message, Span(pos, pos + 1), _expected(getattr(err, "expected", ())))
    start = token.start_pos + base
    span = Span(start, start + max(1, len(str(token))))
    expected = getattr(err, "expected", ())
    hint = _expected(expected)
    special = _token_hint(token, text)
    if special is not None:
        hint = special
    elif str(token) == "=" and "CMPOP" in expected:
        hint = "use `==` to compare"
    elif token.type == "CMPOP":
        hint = "comparisons do not chain: write `a < b and b < c`"
    elif "NAME" in expected and token.type != "NAME" and str(token).isidentifier():
        hint = f"`{token}` is a reserved word; choose another name"
    return Diagnostic(f"unexpected {_describe(token)}", span, hint)


def _check_nesting(src: Source, bag: DiagnosticBag) -> bool:
    depth = 0
    for pos, ch in enumerate(src.text):
        if ch in "([":
            depth += 1
            if depth > MAX_NESTING:
                bag.error(f"expression nested deeper than {MAX_NESTING} levels", Span(pos, pos + 1),
                          "split it with a `size` or simplify it")
                return False
        elif ch in ")]":
            depth = max(0, depth - 1)
    return True


def parse(src: Source) -> ast.Spec:
    """Parse a whole spec; raise SpecError with every syntax error found."""
    bag = DiagnosticBag(src)
    if len(src.text) > MAX_SOURCE_CHARS:
        bag.error(f"spec is larger than {MAX_SOURCE_CHARS} characters", Span(0, 1))
        bag.raise_if_any()
    if not src.text.strip():
        bag.error("empty spec", Span(0, 1), "a spec starts with `attention NAME {`")
        bag.raise_if_any()
    if not _check_nesting(src, bag):
        bag.raise_if_any()
    try:
        tree = parser().parse(src.text, start="start")
        return _ToAst().transform(tree)
    except lark.exceptions.UnexpectedInput as first:
        diagnostics = _recover(src) or [_syntax_diagnostic(first, 0, src.text)]
    except lark.exceptions.VisitError as e:  # transformer bug: still never a traceback for users
        diagnostics = [Diagnostic(f"internal error while reading the spec: {e.orig_exc}", Span(0, 1))]
    except RecursionError:
        diagnostics = [Diagnostic("spec is too deeply nested", Span(0, 1))]
    raise SpecError(src, diagnostics)


def _recover(src: Source) -> list[Diagnostic]:
    """Cut the body at statement keywords and parse each piece alone, collecting every error."""
    text, diagnostics = _blank_bad_characters(src.text)
    text = _unwrap_maps(text, diagnostics)
    cuts = _statement_starts(text)
    if cuts is None:
        return diagnostics
    header_end, body_end = cuts[0], cuts[-1]
    header = text[:header_end]
    head_ok = header.strip().startswith("attention") and header.rstrip().endswith("{")
    if not head_ok:
        diagnostics.append(Diagnostic("expected `attention NAME {` at the start of the spec",
                                      Span(len(header) - len(header.lstrip()), max(1, len(header.rstrip()))),
                                      "a spec starts with `attention NAME {`"))
    bad_chars = [d.span.start for d in diagnostics]
    skip = False
    for start, end in zip(cuts[:-1], cuts[1:]):
        piece = text[start:end]
        if skip or not piece.strip() or any(start <= pos < end for pos in bad_chars):
            skip = False
            continue  # a statement with a bad character (or a keyword used as a name) has its error already
        try:
            parser().parse(piece, start="stmt")
        except lark.exceptions.UnexpectedInput as err:
            diag = _syntax_diagnostic(err, start, piece)
            word = text[end:].split("(")[0].split()[0] if text[end:].split() else ""
            if "NAME" in getattr(err, "expected", ()) and getattr(err, "token", None) is not None \
                    and err.token.type == "$END" and word in STATEMENT_KEYWORDS:
                diag = Diagnostic(f"`{word}` is a reserved word and cannot be a name", Span(end, end + len(word)),
                                  "choose another name")
                skip = True
            diagnostics.append(diag)
        except RecursionError:
            diagnostics.append(Diagnostic("statement is too deeply nested", Span(start, start + 1)))
    tail = text[body_end:].strip()
    if not tail:
        pos = len(text.rstrip())
        diagnostics.append(Diagnostic("expected `}` to close the spec", Span(pos, pos + 1)))
    elif tail != "}":
        pos = text.index("}", body_end) + 1
        pos += len(text[pos:]) - len(text[pos:].lstrip())
        diagnostics.append(Diagnostic("unexpected text after the closing `}`", Span(pos, pos + 1)))
    return diagnostics


def _blank_bad_characters(text: str, limit: int = 50) -> tuple[str, list[Diagnostic]]:
    """Report characters the lexer rejects and blank them out, so the rest can still be parsed."""
    diagnostics: list[Diagnostic] = []
    for _ in range(limit):
        try:
            for _tok in parser().lex(text, dont_ignore=False):
                pass
            return text, diagnostics
        except lark.exceptions.UnexpectedCharacters as err:
            diagnostics.append(_syntax_diagnostic(err, 0, text))
            pos = err.pos_in_stream
            text = text[:pos] + " " + text[pos + 1:]
    return text, diagnostics


def _unwrap_maps(text: str, diagnostics: list[Diagnostic]) -> str:
    """`map NAME {` and its closing `}` blanked out, so that the statements inside a map are cut and
    parsed one by one like the top-level ones; a `map` not followed by `NAME {` is reported."""
    try:
        tokens = list(parser().lex(text, dont_ignore=False))
    except lark.exceptions.UnexpectedCharacters:
        return text
    blank = []
    for n, t in enumerate(tokens):
        if t.type != "MAP":
            continue
        if [x.type for x in tokens[n + 1:n + 3]] != ["NAME", "LBRACE"]:
            diagnostics.append(Diagnostic("expected `map NAME {`", Span(t.start_pos, t.end_pos),
                                          "a map is written `map NAME { ...definitions... }`"))
            blank.append((t.start_pos, t.end_pos))
            continue
        blank.append((t.start_pos, tokens[n + 2].end_pos))
        depth = 0
        for x in tokens[n + 2:]:
            depth += {"LBRACE": 1, "RBRACE": -1}.get(x.type, 0)
            if depth == 0:
                blank.append((x.start_pos, x.end_pos))
                break
    for start, end in blank:
        text = text[:start] + " " * (end - start) + text[end:]
    return text


def _statement_starts(text: str) -> list[int] | None:
    """Offsets [end of header, start of each statement..., start of closing brace]."""
    try:
        tokens = list(parser().lex(text, dont_ignore=False))
    except lark.exceptions.UnexpectedCharacters:
        return None
    brace = next((t for t in tokens if t.type == "LBRACE"), None)
    if brace is None:
        return None
    cuts = [brace.end_pos]
    depth = 0
    last_close = None
    for t in tokens:
        if t.start_pos < brace.end_pos:
            continue
        if t.type in ("LPAR", "LSQB"):
            depth += 1
        elif t.type in ("RPAR", "RSQB"):
            depth = max(0, depth - 1)
        elif t.type == "RBRACE":
            last_close = t.start_pos
        elif depth == 0 and str(t) in STATEMENT_KEYWORDS and t.start_pos > cuts[-1]:
            cuts.append(t.start_pos)
    end = last_close if last_close is not None and last_close >= cuts[-1] else len(text)
    cuts.append(end)
    return cuts
