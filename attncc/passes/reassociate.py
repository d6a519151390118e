"""Reassociation of kernelized attention into linear form."""
from __future__ import annotations

from dataclasses import dataclass

from ..analysis.kernel import split_kernel
from ..lang.expr import FLOAT, VEC, TExpr, const
from ..lang.operators import fmt
from ..lang.normalizers import NORMALIZERS
from ..ir.graph import Graph, Node, carried_attrs, expr_of
from ..ir.lower import ExprBuilder
from ..lang.source import AttnccError
from ..analysis.gates import gate_form, gate_holds
from ..lang.rows import PreparedRows
from ..analysis.grid import classify_grid, grid_holds
from ..analysis.structure import Structure, classify_modulation, decay_form, decay_holds, structure_holds


def _graph_lookup(m: TExpr | None, signature) -> str | None:
    """M = G[i, j] for a graph kernel G of the module: its name."""
    if m is not None and m.op == "input" and m.value in signature.graphs and \
            [a.op for a in m.args] == ["var", "var"] and [a.value for a in m.args] == ["i", "j"]:
        return m.value
    return None


def _kernel_factor(graph: Graph, node, ops, modulation: TExpr | None) -> TExpr:
    """f(i, j) = where(mask, M, 0): the whole non-kernel factor of W."""
    f = modulation if modulation is not None else TExpr("const", (), 1.0, FLOAT)
    if node.attr("masked"):
        f = TExpr("call", (expr_of(graph, ops[1]), f, TExpr("const", (), 0.0, FLOAT)), "where", FLOAT)
    return f


def reassociate_kernel(graph: Graph, ctx) -> None:
    """Kernelized attention with W = (phi(Q) psi(K)^T) o M o mask:

      M o mask full:     out = phi(Q) (psi(K)^T V) / (phi(Q) psi(K)^T 1 + eps)        -> linear_attend {causal=False}
      M o mask causal:   out_i = phi(q_i) S_i / (phi(q_i) z_i + eps), S_i = sum_{j<=i} psi(k_j) v_j^T
                                                                                    -> linear_attend {causal=True}
      M = A gamma^(i - j), mask causal: S_t = gamma S_(t-1) + psi(k_t) v_t^T (retention), chunked
                                                        -> linear_attend(phi_q, phi_k, A, gamma, M, v) {decayed}
      M = A exp(G(i) - G(j)), mask causal (G one expression of a token index: data-dependent gates):
                         S_t = exp(G_t - G_(t-1)) S_(t-1) + psi(k_t) v_t^T, chunked with in-chunk differences
                                                        -> gated_attend(phi_q, phi_k, A, G, M, v)
      a per-dimension gate found on the written dot (find_row_gates: dot(X o exp(G(i)), Y o exp(-G(j)))),
      mask causal, M = A or A exp(g(i) - g(j)):  the same recurrence with S's rows decayed apiece, on the
                         prepared rows X, Y (not X o exp(G)) and the gate row G (+ g)
                                                        -> gated_attend(q', k', A, G, M, v) {gate_rows}
      M o mask Toeplitz: (M o phi(Q) psi(K)^T) V = sum_l diag(phi(Q)_l) T_f diag(psi(K)_l) V with
                         f(i - j) = where(mask, M, 0), each T_f product a convolution (FFT) -> toeplitz_attend
      f = where(mask, M, 0) on a grid of width w (r = t // w, c = t % w):
        f = g(dr, dc):           the same sum with T_f 2-level block Toeplitz: 2-D convolutions (FFT)
        f = g(i, rho(dr, dc)):   sum over rings rho of g(i, rho) (box(rho) - box(rho - 1)), each box
                                 of phi(K)_l [V, 1] four summed-area-table reads  -> grid_attend {grid}
      M = G[i, j], G a graph kernel of an adjacency A (no mask): each G product through products with
                         A (sparse when A is), G never formed        -> graph_attend(phi_q, phi_k, G[i, j], v) {graph}
    A scalar M (no i, j) stays as the `modulation` operand. Anything else stays a quadratic attend.
    The forms are tried in the order of REWRITE_FORMS; the first that holds replaces the attend.
    """
    for nid in graph.find("attend"):
        node = graph.node(nid)
        if NORMALIZERS[node.attr("normalize")].online_softmax:
            continue
        ops = graph.operands(nid)
        split = split_kernel(expr_of(graph, ops[0]))
        if split is None:
            ctx.note("reassociate_kernel", "weight is not dot(phi(q), psi(k)) times an index expression: "
                     "stays quadratic")
            continue
        attend = _kernelized(graph, ctx, nid, split)
        for rewrite in REWRITE_FORMS:
            new = rewrite(attend)
            if new is not None:
                graph.replace_uses(nid, new)
                break
        else:
            ctx.note("reassociate_kernel", f"modulation is {attend.mod_structure.describe()}, mask is "
                     f"{attend.mask_structure.describe()}: stays quadratic")


@dataclass
class _Kernelized:
    """One attend with W = dot(phi(q), psi(k)) o M o mask, its feature sides already in the graph."""
    graph: Graph
    ctx: object  # the PassContext (its notes and symbols)
    node: Node
    ops: list
    modulation: TExpr | None
    mod_structure: Structure
    mask_structure: Structure
    build: ExprBuilder
    phi_q: int
    phi_k: int

    def add(self, op: str, factors: list, **attrs) -> int:
        """The rewritten node: op(phi_q, phi_k, *factors, v), with the attend's shape and carried attributes."""
        return self.graph.add(op, [self.phi_q, self.phi_k, *factors, self.ops[-1]], **attrs, shape=self.node.shape,
                              dtype=FLOAT, **carried_attrs(self.node))

    def note(self, message: str) -> None:
        self.ctx.note("reassociate_kernel", message)


def _kernelized(graph: Graph, ctx, nid, split) -> _Kernelized:
    """The attend's parts; its modulation's structure checked on samples, its feature sides added."""
    node = graph.node(nid)
    dot, modulation = split
    mod_structure = classify_modulation(modulation, ctx.symbols)
    if modulation is not None and not structure_holds(modulation, mod_structure, graph.signature, is_mask=False):
        raise AttnccError(f"internal error: modulation structure `{mod_structure.describe()}` failed its "
                          "sampled check; please report this spec")
    build = ExprBuilder(graph)
    phi_q, phi_k = (build.add(side) for side in dot.args)
    return _Kernelized(graph, ctx, node, graph.operands(nid), modulation, mod_structure, node.attr("mask_structure"),
                       build, phi_q, phi_k)


def _as_linear(k: _Kernelized) -> int | None:
    """M full, mask full or causal: phi(Q) (psi(K)^T V), by prefix sums when causal."""
    if k.mod_structure.kind != "full" or k.mask_structure.kind not in ("full", "causal"):
        return None
    causal = k.mask_structure.kind == "causal"
    mod = [k.build.add(k.modulation)] if k.modulation is not None else []
    new = k.add("linear_attend", mod, causal=causal, modulated=bool(mod))
    k.note(f"kernelized with {'causal' if causal else 'full'} mask: "
           f"phi(Q) (phi(K)^T V){' by prefix sums' if causal else ''}, O(N m e)")
    return new


def _as_decayed(k: _Kernelized) -> int | None:
    """M = A gamma^(i - j), mask causal: the retention recurrence, in chunks."""
    if k.mask_structure.kind != "causal" or (decay := decay_form(k.modulation, k.ctx.symbols)) is None:
        return None
    amplitude, gamma = decay
    if not decay_holds(k.modulation, amplitude, gamma, k.graph.signature):
        raise AttnccError("internal error: decay form failed its sampled check; please report this spec")
    new = k.add("linear_attend", [k.build.add(amplitude), k.build.add(gamma), k.build.add(k.modulation)],
                causal=True, modulated=True, decayed=True)
    k.note(f"kernelized with a decay {fmt(gamma)}^(i - j) on j <= i: the "
           "recurrence S_t = gamma S_(t-1) + phi(k_t) v_t^T in chunks, O(N m e)")
    return new


def _as_gated(k: _Kernelized) -> int | None:
    """M = A exp(G(i) - G(j)), mask causal: the gated recurrence, in chunks (G read per token)."""
    if k.mask_structure.kind != "causal" or (gated := gate_form(k.modulation, k.ctx.symbols)) is None:
        return None
    amplitude, gate = gated
    if not gate_holds(k.modulation, amplitude, gate, k.graph.signature):
        raise AttnccError("internal error: gate form failed its sampled check; please report this spec")
    new = k.add("gated_attend", [k.build.add(amplitude), k.build.add(gate), k.build.add(k.modulation)],
                causal=True, modulated=True)
    k.note(f"kernelized with a gate exp(G(i) - G(j)), G(i) = {fmt(gate)}, on j <= i: the recurrence "
           "S_t = exp(G_t - G_(t-1)) S_(t-1) + phi(k_t) v_t^T in chunks, O(N m e)")
    return new


def _as_row_gated(k: _Kernelized) -> int | None:
    """A per-dimension gate on the written dot (node attribute row_gate), mask causal: the gated
    recurrence over the rows X, Y, the gate a row; a scalar gate of M joins it (exp(g_i - g_j)
    multiplies every dimension's exp(G_id - G_jd))."""
    gate = k.node.attr("row_gate")
    if gate is None or k.mask_structure.kind != "causal":
        return None
    if k.mod_structure.kind == "full":
        amplitude, row = k.modulation if k.modulation is not None else const(1.0), gate.gate
    elif (scalar := gate_form(k.modulation, k.ctx.symbols)) is not None and \
            gate_holds(k.modulation, *scalar, k.graph.signature):
        amplitude, row = scalar[0], TExpr("add", (gate.gate, scalar[1]), None, VEC)
    else:
        k.note(f"a per-dimension gate with the modulation {fmt(k.modulation)} (neither free of i, j nor a "
               "scalar gate): stays on the prepared rows")
        return None
    weight = k.modulation if k.modulation is not None else const(1.0)
    attrs = {**{n: a for n, a in carried_attrs(k.node).items() if n != "row_gate"},  # now in the operands
             "prepared_rows": PreparedRows(gate.query, gate.key)}
    new = k.graph.add("gated_attend", [k.phi_q, k.phi_k, *(k.build.add(e) for e in (amplitude, row, weight)),
                                       k.ops[-1]], causal=True, modulated=True, gate_rows=True, shape=k.node.shape,
                      dtype=FLOAT, **attrs)
    k.note(f"kernelized with a gate exp(G_d(i) - G_d(j)) per dimension, G(i) = {fmt(row)}, on j <= i: the "
           "recurrence S_t = diag(exp(G_t - G_(t-1))) S_(t-1) + x_t v_t^T in chunks on the rows "
           f"{fmt(gate.query)}, {fmt(gate.key)}, O(N m e)")
    return new


def _as_graph(k: _Kernelized) -> int | None:
    """M = G[i, j] for a graph kernel G, no mask: products with its adjacency, G never formed."""
    graph_name = _graph_lookup(k.modulation, k.graph.signature)
    if not graph_name or k.node.attr("masked"):
        return None
    g = k.graph.signature.graphs[graph_name]
    new = k.add("graph_attend", [k.build.add(k.modulation)], graph=g,
                graph_steps=int(g.options["steps"]) if g.kind == "walks" else None)
    k.note(f"kernelized with the graph kernel {graph_name} = {g.kind}({g.adjacency}): "
           f"sum_l diag(phi(Q)_l) G diag(phi(K)_l) V through products with {g.adjacency}, G never formed")
    return new


def _as_toeplitz(k: _Kernelized) -> int | None:
    """M o mask Toeplitz: one FFT convolution per feature column."""
    if not (k.mod_structure.is_toeplitz and k.mask_structure.is_toeplitz):
        return None
    f = _kernel_factor(k.graph, k.node, k.ops, k.modulation)
    new = k.add("toeplitz_attend", [k.build.add(f)])
    k.note("kernelized with a Toeplitz mask/modulation f(i - j): "
           "sum_l diag(phi(Q)_l) T_f diag(phi(K)_l) V by FFT, O(N m e log N)")
    return new


def _as_grid(k: _Kernelized) -> int | None:
    """f = where(mask, M, 0) a function of grid offsets (or of i and the ring): 2-D FFT or ring boxes."""
    f = _kernel_factor(k.graph, k.node, k.ops, k.modulation)
    form = classify_grid(f, k.graph.signature, k.ctx.symbols)
    if not form:
        return None
    if not grid_holds(f, form, k.graph.signature):
        raise AttnccError(f"internal error: grid form `{form.describe()}` failed its sampled check; "
                          "please report this spec")
    new = k.add("grid_attend", [k.build.add(f)], grid=form)
    k.note(f"kernelized with a grid mask/modulation: {form.describe()} ({form.reason})")
    return new


# the rewrite forms, tried in this order: a per-dimension gate first (the plain forms would read the
# prepared rows X o exp(G)), decay, gates and graph only where no plain linear form holds,
# the grid only where no Toeplitz one does
REWRITE_FORMS = (_as_row_gated, _as_linear, _as_decayed, _as_gated, _as_graph, _as_toeplitz, _as_grid)
