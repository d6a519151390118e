"""Reassociation of kernelized attention into linear form."""
from __future__ import annotations

from ..analysis.kernel import split_kernel
from ..lang.expr import FLOAT, TExpr
from ..lang.normalizers import NORMALIZERS
from ..lang.operators import fmt
from ..ir.graph import Graph, expr_of
from ..ir.lower import ExprBuilder
from ..lang.source import AttnccError
from ..analysis.grid import classify_grid, grid_holds
from ..analysis.structure import classify_modulation, decay_form, decay_holds, structure_holds


def _graph_lookup(m: TExpr | None, spec) -> str | None:
    """M = G[i, j] for a graph kernel G of the spec: its name."""
    if m is not None and m.op == "input" and m.value in spec.graphs and \
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
                                                                                    -> linear_attend {decayed}
      M o mask Toeplitz: (M o phi(Q) psi(K)^T) V = sum_l diag(phi(Q)_l) T_f diag(psi(K)_l) V with
                         f(i - j) = where(mask, M, 0), each T_f product a convolution (FFT) -> toeplitz_attend
      f = where(mask, M, 0) on a grid of width w (r = t // w, c = t % w):
        f = g(dr, dc):           the same sum with T_f 2-level block Toeplitz: 2-D convolutions (FFT)
        f = g(i, rho(dr, dc)):   sum over rings rho of g(i, rho) (box(rho) - box(rho - 1)), each box
                                 of phi(K)_l [V, 1] four summed-area-table reads  -> grid_attend {grid}
      M = G[i, j], G a graph kernel of an adjacency A (no mask): each G product through products with
                         A (sparse when A is), G never formed                     -> graph_attend {graph}
    A scalar M (no i, j) stays as the `modulation` operand. Anything else stays a quadratic attend.
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
        dot, modulation = split
        mod_structure = classify_modulation(modulation, ctx.symbols)
        if modulation is not None and not structure_holds(modulation, mod_structure, ctx.spec, is_mask=False):
            raise AttnccError(f"internal error: modulation structure `{mod_structure.describe()}` failed its "
                              "sampled check; please report this spec")
        mask_structure = node.attr("mask_structure")
        build = ExprBuilder(graph)
        phi_q, phi_k = (build.add(side) for side in dot.args)
        common = dict(shape=node.shape, dtype=FLOAT, normalize=node.attr("normalize"), eps=node.attr("eps"),
                      mask_structure=mask_structure)
        if mod_structure.kind == "full" and mask_structure.kind in ("full", "causal"):
            causal = mask_structure.kind == "causal"
            mod = [build.add(modulation)] if modulation is not None else []
            new = graph.add("linear_attend", [phi_q, phi_k, *mod, ops[-1]], causal=causal, modulated=bool(mod),
                            **common)
            ctx.note("reassociate_kernel", f"kernelized with {'causal' if causal else 'full'} mask: "
                     f"phi(Q) (phi(K)^T V){' by prefix sums' if causal else ''}, O(N m e)")
        elif mask_structure.kind == "causal" and (decay := decay_form(modulation, ctx.symbols)) is not None:
            amplitude, gamma = decay
            if not decay_holds(modulation, amplitude, gamma, ctx.spec):
                raise AttnccError("internal error: decay form failed its sampled check; please report this spec")
            new = graph.add("linear_attend", [phi_q, phi_k, build.add(amplitude), build.add(gamma), ops[-1]],
                            causal=True, modulated=True, decayed=True, **common)
            ctx.note("reassociate_kernel", f"kernelized with a decay {fmt(gamma)}^(i - j) on j <= i: the "
                     "recurrence S_t = gamma S_(t-1) + phi(k_t) v_t^T in chunks, O(N m e)")
        elif (graph_name := _graph_lookup(modulation, ctx.spec)) and not node.attr("masked"):
            g = ctx.spec.graphs[graph_name]
            new = graph.add("graph_attend", [phi_q, phi_k, ops[-1]], graph=graph_name,
                            graph_steps=int(g.options["steps"]) if g.kind == "walks" else None, **common)
            ctx.note("reassociate_kernel", f"kernelized with the graph kernel {graph_name} = {g.kind}({g.adjacency}): "
                     f"sum_l diag(phi(Q)_l) G diag(phi(K)_l) V through products with {g.adjacency}, G never formed")
        elif mod_structure.is_toeplitz and mask_structure.is_toeplitz:
            f = _kernel_factor(graph, node, ops, modulation)
            new = graph.add("toeplitz_attend", [phi_q, phi_k, build.add(f), ops[-1]], **common)
            ctx.note("reassociate_kernel", "kernelized with a Toeplitz mask/modulation f(i - j): "
                     "sum_l diag(phi(Q)_l) T_f diag(phi(K)_l) V by FFT, O(N m e log N)")
        elif (form := classify_grid(f := _kernel_factor(graph, node, ops, modulation), ctx.spec, ctx.symbols)):
            if not grid_holds(f, form, ctx.spec):
                raise AttnccError(f"internal error: grid form `{form.describe()}` failed its sampled check; "
                                  "please report this spec")
            new = graph.add("grid_attend", [phi_q, phi_k, build.add(f), ops[-1]], grid=form, **common)
            ctx.note("reassociate_kernel", f"kernelized with a grid mask/modulation: {form.describe()} "
                     f"({form.reason})")
        else:
            ctx.note("reassociate_kernel", f"modulation is {mod_structure.describe()}, mask is "
                     f"{mask_structure.describe()}: stays quadratic")
            continue
        graph.replace_uses(nid, new)
