"""The dense meaning of `dot` over row expressions (the forms: attncc/lang/rows.py).

A side is evaluated as a pair (P, Z) meaning the row P * exp(Z) (Z None: P alone), [B|1, H|1, n, W]
with n its tokens: products multiply P and add Z, `exp(row)` is (1, row), anything else is formed.
A dot whose sides both carry exponents sums P_i P_j exp(Z_i + Z_j) over the width, the exponents
combined before exp: gated linear attention's cumulative log-gates G give exp(G_i - G_j), finite
wherever the weight is, while exp(-G_j) alone overflows.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..lang.evaluate import Env, evaluate
from ..lang.expr import TExpr, postorder
from ..lang.operators import operator_of
from ..lang.rows import input_rows, row_input_layout


def dense_dot(t: TExpr, q: torch.Tensor, k: torch.Tensor, env: Env, input_dims: dict, feature) -> torch.Tensor:
    """dot(t) [B, H, Nq, N] over env's pair grid (env.i [1, 1, Nq, 1], env.j [1, 1, 1, N]); q, k the
    rows at the computation's precision (q those of env.i); feature(t, x): a feature node on rows x."""
    query, key = t.args
    n_keys = env.j.shape[-1]
    env_j = replace(env, j=env.j.view(1, 1, n_keys, 1))
    pq, zq = _side(query, q, k, env, env.i.view(-1), input_dims, feature)
    pk, zk = _side(key, q, k, env_j, env_j.j.view(-1), input_dims, feature)
    if zq is None or zk is None:
        a, b = _formed(pq, zq), _formed(pk, zk)
        return a @ b.transpose(-1, -2)
    out = 0
    for d in range(pq.shape[-1]):  # one [B, H, Nq, N] term a column: the exponents meet before exp
        out = out + (pq[..., d, None] * pk[..., d, None].transpose(-1, -2)
                     * torch.exp(zq[..., d, None] + zk[..., d, None].transpose(-1, -2)))
    return out


def _formed(p, z):
    return p if z is None else p * torch.exp(z)


def _side(t: TExpr, q, k, env: Env, tokens: torch.Tensor, input_dims: dict, feature):
    """(P, Z) of a row expression on the tokens of its side (env lays them out on axis 2)."""
    done: dict[TExpr, tuple] = {}
    dtype = env.float_dtype
    for e in postorder(t, descend=lambda x: x.type == "vec"):
        if e.type != "vec":  # a number (a scale, a bound): on the side's grid, [.., n, 1]-broadcastable
            done[e] = (evaluate(e, env), None)
            continue
        args = [done[a] for a in e.args]
        if e.op in ("qrow", "krow"):
            done[e] = (q if e.op == "qrow" else k, None)
        elif e.op == "rowin":
            dims = input_dims[e.value]
            per_head, _ = row_input_layout(dims)
            x = env.inputs[e.value]
            rows = input_rows(x, len(dims), per_head, int(tokens.max()) + 1 if len(tokens) else 0, e.value)
            done[e] = (rows[:, :, tokens.long()].to(dtype), None)
        elif e.op == "slice":
            lo, hi = int(args[1][0]), int(args[2][0])
            p, z = args[0]
            done[e] = (p[..., lo:hi], None if z is None else z[..., lo:hi])
        elif e.op == "mul" and all(a.type == "vec" for a in e.args):
            (pa, za), (pb, zb) = args
            done[e] = (pa * pb, za if zb is None else zb if za is None else za + zb)
        elif e.op in ("mul", "div"):
            (pa, za), (pb, zb) = args
            scalar = pb if e.args[0].type == "vec" else pa
            p, z = (pa, za) if e.args[0].type == "vec" else (pb, zb)
            scalar = scalar.to(dtype)
            done[e] = (p * scalar if e.op == "mul" else p / scalar, z)
        elif e.op == "neg":
            done[e] = (-args[0][0], args[0][1])
        elif e.op == "call" and e.value == "exp":
            x = _formed(*args[0])
            done[e] = (torch.ones_like(x), x)
        elif e.op == "feature":
            done[e] = (feature(e, _formed(*args[0])), None)
        else:  # add, sub, other functions: on formed rows
            done[e] = (operator_of(e).evaluate([_formed(*a) for a in args], dtype), None)
    return done[t]

