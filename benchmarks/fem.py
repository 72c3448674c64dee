"""FEM benchmark: assembly vs scikit-fem, solve, adjoint gradient, batching, convergence rates.

Run from the repository root: ``python benchmarks/fem.py [--quick]``.
Writes ``benchmarks/results/fem.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402
import skfem  # noqa: E402
from _common import machine_info, median_time, print_table, write_results  # noqa: E402
from skfem.helpers import dot, grad  # noqa: E402

from pdegen import fem  # noqa: E402


def kappa_fn(x):
    return 1.0 + 0.5 * jnp.sin(3.0 * x[0]) * jnp.cos(2.0 * x[1])


def bench_assembly(n: int, repeats: int) -> dict:
    mesh = fem.unit_square(n)
    V = fem.FunctionSpace(mesh, "P1")
    kq = V.at_quadrature(kappa_fn)  # (nc, nq)
    asm = jax.jit(lambda k: fem.stiffness(V, k).data)
    t_pd = median_time(lambda: asm(kq).block_until_ready(), repeats)
    t_pd_csr = median_time(lambda: fem.SparseMatrix(asm(kq), V.pattern).to_scipy(), repeats)

    basis = V.basis
    kappa_sk = np.asarray(kq)

    @skfem.BilinearForm
    def lap(u, v, w):
        return w["kappa"] * dot(grad(u), grad(v))

    t_sk = median_time(lambda: skfem.asm(lap, basis, kappa=kappa_sk), repeats)
    K_sk = skfem.asm(lap, basis, kappa=kappa_sk).tocsr()
    K_pd = fem.SparseMatrix(asm(kq), V.pattern).to_scipy()
    diff = abs(K_sk - K_pd).max() / abs(K_sk).max()
    return {
        "cells": mesh.ncells,
        "pdegen_s": t_pd,
        "pdegen_csr_s": t_pd_csr,
        "skfem_s": t_sk,
        "assembly_speedup_vs_skfem": t_sk / t_pd,
        "assembly_speedup_vs_skfem_incl_csr": t_sk / t_pd_csr,
        "rel_max_diff": float(diff),
    }


def bench_solve(n: int, repeats: int, batch: int) -> dict:
    V = fem.FunctionSpace(fem.unit_square(n), "P1")
    pb = fem.Poisson(V)
    kappa = V.interpolate(kappa_fn)
    f = jnp.ones(V.ndofs)
    solve = jax.jit(lambda k, f: pb.solve(kappa=k, f=f))
    t_solve_cached = median_time(lambda: solve(kappa, f).block_until_ready(), repeats)

    def fresh(fn):  # time without the LRU factorisation cache (a new matrix every call)
        def run():
            fem.clear_solver_cache()
            fn()

        return run

    t_solve = median_time(fresh(lambda: solve(kappa, f).block_until_ready()), repeats)

    # peer: skfem assembly + scipy spsolve
    K = fem.stiffness(V, kappa)
    A, b = pb.bc.apply(K, fem.load(V, f), 0.0)
    A_sp = A.to_scipy().tocsc()
    b_np = np.asarray(b)
    t_scipy = median_time(lambda: spla.spsolve(A_sp, b_np), repeats)
    kq = np.asarray(V.at_quadrature(kappa))

    @skfem.BilinearForm
    def lap(u, v, w):
        return w["kappa"] * dot(grad(u), grad(v))

    def peer():
        Ks = skfem.asm(lap, V.basis, kappa=kq)
        Ks, bs = skfem.enforce(Ks, b_np.copy(), D=np.asarray(pb.bc.dofs))
        spla.spsolve(Ks.tocsc(), bs)

    t_peer = median_time(peer, repeats)

    loss = jax.jit(jax.grad(lambda k: jnp.sum(pb.solve(kappa=k, f=f) ** 2)))
    t_grad = median_time(fresh(lambda: loss(kappa).block_until_ready()), repeats)

    key = jax.random.PRNGKey(0)
    fs = 1.0 + jax.random.normal(key, (batch, V.ndofs))
    # coefficients are arguments, not closed-over constants (XLA would constant-fold assembly)
    vsolve = jax.jit(jax.vmap(lambda f, k: pb.solve(kappa=k, f=f), in_axes=(0, None)))
    t_vmap = median_time(lambda: vsolve(fs, kappa).block_until_ready(), repeats)

    def loop_f():
        for i in range(batch):
            solve(kappa, fs[i]).block_until_ready()

    t_loop = median_time(loop_f, max(1, repeats // 2))

    ks = jnp.exp(0.3 * jax.random.normal(jax.random.PRNGKey(1), (batch, V.ndofs)))
    vsolve_k = jax.jit(jax.vmap(lambda k, f: pb.solve(kappa=k, f=f), in_axes=(0, None)))
    t_vmap_k = median_time(lambda: vsolve_k(ks, f).block_until_ready(), repeats)

    def loop_k():
        for i in range(batch):
            solve(ks[i], f).block_until_ready()

    t_loop_k = median_time(loop_k, max(1, repeats // 2))

    pb_cg = fem.Poisson(V, method="cg")
    vsolve_cg = jax.jit(jax.vmap(lambda k, f: pb_cg.solve(kappa=k, f=f), in_axes=(0, None)))
    t_vmap_cg = median_time(lambda: vsolve_cg(ks, f).block_until_ready(), repeats)
    solve_cg = jax.jit(lambda k: pb_cg.solve(kappa=k, f=f))

    def loop_cg():
        for i in range(batch):
            solve_cg(ks[i]).block_until_ready()

    t_loop_cg = median_time(loop_cg, max(1, repeats // 2))
    return {
        "grid": n,
        "solve_seconds": t_solve,
        "scipy_spsolve_seconds": t_scipy,
        "solve_cached_factorisation_seconds": t_solve_cached,
        "solve_over_scipy_spsolve": t_solve / t_scipy,
        "skfem_asm_plus_spsolve_seconds": t_peer,
        "speedup_vs_skfem_asm_spsolve": t_peer / t_solve,
        "grad_seconds": t_grad,
        "grad_over_forward": t_grad / t_solve,
        "batch": batch,
        "batched_vmap_seconds": t_vmap,
        "batched_loop_seconds": t_loop,
        "batched_speedup": t_loop / t_vmap,
        "batched_kappa_speedup_direct": t_loop_k / t_vmap_k,
        "batched_kappa_speedup_cg": t_loop_cg / t_vmap_cg,
        "batched_kappa_cg_vmap_seconds": t_vmap_cg,
    }


def bench_rates(ns: list[int]) -> dict:
    def exact(x):
        return jnp.sin(jnp.pi * x[0]) * jnp.sin(jnp.pi * x[1])

    def source(x):
        return 2.0 * jnp.pi**2 * exact(x)

    out = {}
    for element in ("P1", "P2"):
        hs, errs = [], []
        for n in ns:
            mesh = fem.unit_square(n)
            V = fem.FunctionSpace(mesh, element)
            u = fem.Poisson(V).solve(kappa=1.0, f=source)
            l2, _ = V.errors(u, exact)
            hs.append(mesh.h)
            errs.append(float(l2))
        rate = np.polyfit(np.log(hs), np.log(errs), 1)[0]
        out[f"l2_rate_{element.lower()}"] = float(rate)
        out[f"l2_errors_{element.lower()}"] = errs
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about one minute")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    t0 = time.perf_counter()
    res = {"quick": args.quick, "machine": machine_info()}
    res.update(bench_assembly(257, repeats))
    res.update(bench_solve(64, repeats, 32))
    res.update(bench_rates([9, 17, 33] if args.quick else [9, 17, 33, 65]))
    res["total_seconds"] = time.perf_counter() - t0
    rows = [(k, v) for k, v in res.items() if not isinstance(v, (dict, list))]
    print_table(rows, "pdegen FEM benchmark" + (" (quick)" if args.quick else ""))
    path = write_results("fem", res)
    print(f"\nwritten {path}")
    return res


if __name__ == "__main__":
    main()
