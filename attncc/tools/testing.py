"""Hypothesis strategies and assertions for testing specs against their dense reference.

    from attncc.tools.testing import attention_shapes, mask_expressions, bias_expressions, assert_matches_reference
    from attncc.tools.testing import function_expressions
"""
from __future__ import annotations

from hypothesis import strategies as st

from .compare import assert_matches_reference, make_module, random_inputs  # noqa: F401  (public)


@st.composite
def attention_shapes(draw, max_tokens: int = 80, dims=(8, 16, 24, 32)):
    """(batch, heads, Nq, N, D, E): tokens not multiples of a block, single tokens, Nq != N."""
    nq = draw(st.one_of(st.just(1), st.integers(1, max_tokens)))
    nk = draw(st.one_of(st.just(nq), st.just(1), st.integers(1, max_tokens)))
    d = draw(st.sampled_from(dims))
    e = draw(st.sampled_from(dims))
    return draw(st.integers(1, 2)), draw(st.integers(1, 3)), nq, nk, d, e


def _int_terms(sizes: tuple[str, ...]):
    leaves = st.sampled_from(["i", "j", "h", "N", "Nq", "H", *sizes]) | st.integers(-9, 9).map(str)
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, st.sampled_from(["//", "%"]), st.integers(1, 7)).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, inner).map(lambda t: f"(abs({t[0]}) ^ abs({t[1]}))"),
            st.tuples(st.sampled_from(["min", "max"]), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
            inner.map(lambda t: f"abs({t})"),
            st.tuples(st.integers(2, 20), inner).map(lambda t: "-" * t[0] + f"({t[1]})"),  # deep, bracket-free
        ),
        max_leaves=6,
    )


def mask_expressions(sizes: tuple[str, ...] = ()):
    """Random boolean mask expressions over i, j and the given sizes, as spec text."""
    compare = st.tuples(_int_terms(sizes), st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
                        _int_terms(sizes)).map(lambda t: f"{t[0]} {t[1]} {t[2]}")
    return st.recursive(
        compare,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda t: f"not ({t})"),
            st.tuples(st.integers(2, 30), inner).map(lambda t: "not " * t[0] + f"({t[1]})"),
        ),
        max_leaves=3,
    )


def bias_expressions(sizes: tuple[str, ...] = ()):
    """Random numeric bias expressions (relative positions, blocks, bit patterns), as spec text."""
    term = _int_terms(sizes)
    return st.one_of(
        st.tuples(st.floats(-2, 2, allow_nan=False).map(lambda x: f"{x:.3f}"), term).map(lambda t: f"{t[0]} * {t[1]}"),
        term.map(lambda t: f"exp(-0.1 * abs({t}))"),
        term.map(lambda t: f"log(1 + abs({t}))"),
        st.tuples(mask_expressions(sizes), st.floats(-3, 3, allow_nan=False)).map(
            lambda t: f"where({t[0]}, {t[1]:.3f}, 0.0)"),
        st.tuples(st.floats(0.5, 1.05), st.sampled_from(["1.0", "h", "(h + 1) * 0.5"])).map(  # decays
            lambda t: f"{t[1]} * {t[0]:.3f} ** (i - j)"),
        st.lists(term, min_size=2, max_size=12).map(  # wide: a long bracket-free sum
            lambda terms: f"0.01 * ({' + '.join(terms)})"),
    )


def function_expressions(sizes: tuple[str, ...] = ()):
    """Random float expressions of the math functions (sin, cos, erf, tanh, softplus, log1p, expm1,
    clamp) and the conversions floor and int, over integer terms in i, j, h, the batch index b and the
    given sizes, as spec text. Arguments stay moderate (no overflow in fp16); conversions read only
    exact arithmetic (a transcendental value within rounding of an integer may round either way in
    different libraries)."""
    term = _int_terms((*sizes, "b"))
    x = term.map(lambda t: f"0.1 * {t}")
    converted = st.one_of(
        st.tuples(st.sampled_from(["floor", "int"]), term, st.sampled_from(["/ 3.0", "* 0.7", "* -0.25"])).map(
            lambda t: f"0.1 * {t[0]}({t[1]} {t[2]})"))
    return st.recursive(
        x | converted,
        lambda inner: st.one_of(
            st.tuples(st.sampled_from(["sin", "cos", "erf", "tanh", "softplus"]), inner).map(lambda t: f"{t[0]}({t[1]})"),
            inner.map(lambda t: f"log1p(abs({t}))"),
            inner.map(lambda t: f"expm1(-abs({t}))"),
            st.tuples(inner, st.floats(-1, 0, allow_nan=False), st.floats(0, 1, allow_nan=False)).map(
                lambda t: f"clamp({t[0]}, {t[1]:.2f}, {t[2]:.2f})"),
            st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        ),
        max_leaves=4,
    )


# G(t) of a gate, as spec text: the input, scaled, with a position term (t is i or j)
_GATE_FORMS = ("{gate}[h, {t}]", "0.5 * {gate}[h, {t}]", "({gate}[h, {t}] - 0.01 * {t})", "{gate}[h, {t}] * 1.5")


def gate_expressions(gate: str = "g"):
    """Data-dependent scalar gates A exp(G(i) - G(j)) in equivalent spellings, as spec text, with G(t)
    read from the float input `gate` (declared `[H, N]`) and sometimes a position term; A a constant,
    `scale` or a function of h. Under a causal mask these take the chunked gated lowering."""
    amplitude = st.sampled_from(["1.0", "scale", "(h + 1) * 0.5"])
    spelling = st.sampled_from(["exp({i} - {j})", "exp({i}) * exp(-{j})", "exp(-({j} - {i}))"])
    form = st.sampled_from(_GATE_FORMS)
    return st.tuples(amplitude, spelling, form).map(lambda t: f"{t[0]} * " + t[1].format(
        i=t[2].format(gate=gate, t="i"), j=t[2].format(gate=gate, t="j")))


def _offsets(width: str):
    """(row offset, column offset) of i and j on a grid of `width` columns, in equivalent spellings."""
    w = width
    return (st.sampled_from([f"(i // {w} - j // {w})", f"(-(j // {w} - i // {w}))"]),
            st.sampled_from([f"(i % {w} - j % {w})", f"(i % {w} + -(j % {w}))"]))


def _grid_terms(width: str):
    dr, dc = _offsets(width)
    return st.recursive(
        dr | dc | st.integers(-3, 3).map(str),
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(st.sampled_from(["min", "max"]), inner, inner).map(lambda t: f"{t[0]}({t[1]}, {t[2]})"),
            inner.map(lambda t: f"abs({t})"),
        ),
        max_leaves=4,
    )


def _ring_distance(width: str):
    """Chebyshev max(|dr|, |dc|) or Manhattan |dr| + |dc| of i and j, operands in either order."""
    dr, dc = _offsets(width)
    pair = st.tuples(dr.map(lambda t: f"abs({t})"), dc.map(lambda t: f"abs({t})")).flatmap(
        lambda p: st.sampled_from([p, p[::-1]]))
    return st.one_of(pair.map(lambda p: f"max({p[0]}, {p[1]})"), pair.map(lambda p: f"({p[0]} + {p[1]})"))


def _conditions(term):
    compare = st.tuples(term, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), st.integers(-2, 4)).map(
        lambda t: f"{t[0]} {t[1]} {t[2]}")
    return st.recursive(compare, lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        inner.map(lambda t: f"not ({t})")), max_leaves=2)


def _weights(term, condition):
    """Numeric factors of a kernel built from an integer term (bounded: no overflow in fp16)."""
    return st.one_of(
        term.map(lambda t: f"exp(-0.2 * abs({t}))"),
        term.map(lambda t: f"1 / (1 + abs({t}))"),
        st.tuples(st.floats(-1, 1, allow_nan=False), term).map(lambda t: f"{t[0]:.3f} * {t[1]}"),
        st.tuples(condition, st.floats(-2, 2, allow_nan=False)).map(lambda t: f"where({t[0]}, {t[1]:.3f}, 0.0)"),
    )


def grid_expressions(width: str = "w", boolean: bool = False):
    """Functions of the 2-D offset (i // w - j // w, i % w - j % w) of tokens on a grid of `width`
    columns (2-level block Toeplitz), as spec text: conditions if `boolean`, else numeric factors."""
    term = _grid_terms(width)
    return _conditions(term) if boolean else _weights(term, _conditions(term))


def ring_expressions(width: str = "w", boolean: bool = False):
    """Functions of one ring distance rho (Chebyshev or Manhattan) of tokens on a grid of `width`
    columns, sometimes saturated (min(rho, c)), as spec text: conditions if `boolean`, else factors."""
    def of(rho):
        term = st.one_of(st.just(rho), st.integers(0, 3).map(lambda c: f"min({rho}, {c})"),
                         st.integers(1, 3).map(lambda c: f"({c} * {rho} - 1)"))
        return _conditions(term) if boolean else _weights(term, _conditions(term))
    return _ring_distance(width).flatmap(of)
