"""Hypothesis strategies and assertions for testing specs against their dense reference.

    from attncc.testing import attention_shapes, mask_expressions, bias_expressions, assert_matches_reference
"""
from __future__ import annotations

from hypothesis import strategies as st

from .checking import assert_matches_reference, make_module, random_inputs  # noqa: F401  (public)


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
    )
