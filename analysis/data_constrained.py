"""The data-constrained laws of Muennighoff et al. (2023), for runs that repeat their data.

* muennighoff(t):  L = E + A / N'^alpha + B / D'^alpha with effective data D' = U_D + U_D R*_D (1 - e^(-R_D / R*_D))
                   (R_D = D / U_D - 1, repetitions) and effective parameters N' = U_N + U_N R*_N (1 - e^(-R_N / R*_N))
                   (U_N = min(N, the compute-optimal N for U_D tokens), R_N = N / U_N - 1), in their two stages.
* muennighoff_one_rstar(t, base): the simpler L = E + A / N^alpha + B / D'^beta with one R* on D, all at once.

Reproducing their published fit. Their stage 1 fitted E, A, B and alpha on 54 points read off Chinchilla's C4
figure, which are not public; stage 2 then froze those constants and fitted R*_D and R*_N on their 182 runs. So
the constants are pinned (`fix`, `scaling fit --fix E=...,A=...,B=...,alpha=...`), and stage 2 then runs on every
run, as theirs did. Their stage-2 objective (Huber, delta 1e-3, on log loss, summed) is flat in R*: several local
minima lie within a fraction of a per cent of each other, from R*_D of about 15 to about 100. Which one a fit
returns depends on its starts and on how far its optimiser's first steps go, so both are recorded:

* starts="default": a grid in log R* (1, 5, 15, 50 each), L-BFGS-B from each start; the lowest minimum is kept,
  and every distinct minimum is listed with its objective, so the flatness shows.
* starts="published": their start grid (R* in {0, 6.67, 13.3, 20} each; R* = 0 is undefined on runs that do not
  repeat, 0 / 0, and gave them no fit, so the 9 positive pairs) and a local descent like theirs (PyTorch's L-BFGS
  with a strong-Wolfe line search and lr 0.1: a first trial step of a tenth of the quasi-Newton step, so each start
  stays in its own basin). With their constants pinned this returns their R*_D 15.39 and R*_N 5.31 to within
  0.02, where L-BFGS-B from the same starts reaches a lower minimum at R*_D 47.
* compare: the objective at a published point, beside the fitted one.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import line_search, minimize

from analysis import lse
from analysis.fit import Fit, identifiability, summarise
from analysis.laws import _fit_and_bootstrap
from analysis.table import Table

STAGE1 = ("E", "A", "B", "alpha")  # the Chinchilla constants (stage 1), pinned together or not at all
STAGE2 = ("R_star_D", "R_star_N")
PUBLISHED_RSTAR_STARTS = np.linspace(0, 20, 4)[1:]  # their np.linspace(0, 20, 4), less the undefined 0
DEFAULT_RSTAR_STARTS = (1.0, 5.0, 15.0, 50.0)
STARTS = ("default", "published")
FIRST_STEP = 0.1  # their lr: the local descent's first trial step, as a fraction of the quasi-Newton step


def _repetition(t: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, U, y = log loss) of a table whose runs may repeat data; refuses one without a repeat."""
    df = t.df
    if "U" not in df or not (df["D"] > df["U"] * 1.01).any():
        raise ValueError("the data-constrained law needs unique tokens (U: --unique-tokens COLUMN) and runs that "
                         "repeat data (D > U)")
    return (df["N"].to_numpy(float), df["D"].to_numpy(float), np.minimum(df["U"].to_numpy(float),
            df["D"].to_numpy(float)), np.log(df["loss"].to_numpy(float)))


def _effective(U, R, rstar):
    """U + U R* (1 - exp(-R / R*)): repeated units are worth less, their value decaying with scale R*."""
    return U + U * rstar * (1 - np.exp(-R / rstar))


def _log_law(log_terms: list, y) -> np.ndarray:
    m = np.maximum.reduce(log_terms)
    return m + np.log(sum(np.exp(term - m) for term in log_terms)) - y


def check_names(values: dict | None, allowed: tuple[str, ...], flag: str) -> dict:
    """values with every name checked against the law's parameters; a wrong one is a ValueError naming it."""
    values = dict(values or {})
    if bad := [k for k in values if k not in allowed]:
        raise ValueError(f"{flag} names {', '.join(bad)}, which the data-constrained law does not have; allowed: "
                         f"{', '.join(allowed)}")
    return values


def local_descent(f, x0, first_step: float = FIRST_STEP, history: int = 10, max_iter: int = 1000,
                  tol: float = 1e-9) -> np.ndarray:
    """L-BFGS (two-loop recursion, Nocedal and Wright, Algorithm 7.4) with scipy's strong-Wolfe line search, whose
    first trial step along each direction is `first_step` of it (on the first iteration, of the gradient scaled to
    unit L1 norm). Gradients by central differences. f may return inf outside its domain."""
    def grad(x):
        h = 1e-6 * np.maximum(np.abs(x), 1.0)
        return np.array([(f(x + h[i] * e) - f(x - h[i] * e)) / (2 * h[i]) for i, e in enumerate(np.eye(len(x)))])

    x = np.asarray(x0, float)
    fx, g = f(x), grad(x)
    steps, changes = [], []
    for k in range(max_iter):
        q, alphas = -g, []
        for s, y in reversed(list(zip(steps, changes))):
            alphas.append(s @ q / (y @ s))
            q = q - alphas[-1] * y
        if steps:
            q = q * (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1])
        for (s, y), a in zip(zip(steps, changes), reversed(alphas)):
            q = q + s * (a - y @ q / (y @ s))
        if g @ q > -tol:
            break
        scale = first_step * (min(1.0, 1.0 / np.abs(g).sum()) if k == 0 else 1.0)
        with np.errstate(all="ignore"):
            alpha = line_search(f, grad, x, scale * q, gfk=g, old_fval=fx, c1=1e-4, c2=0.9, maxiter=25)[0]
        if alpha is None:
            break
        s = alpha * scale * q
        x_new = x + s
        f_new, g_new = f(x_new), grad(x_new)
        if (g_new - g) @ s > 1e-10:
            steps, changes = (steps + [s])[-history:], (changes + [g_new - g])[-history:]
        done = abs(f_new - fx) < tol or np.abs(s).max() < tol
        x, fx, g = x_new, f_new, g_new
        if done:
            break
    return x


def muennighoff(t: Table, base: Fit | None = None, n_boot: int = 200, seed: int = 0, fix: dict | None = None,
                compare: dict | None = None, starts: str = "default") -> Fit:
    """Muennighoff et al. (2023) as published (the module docstring). Stage 1 fits E, A, B and the shared exponent on
    the runs that repeat neither data nor parameters (D <= U and N <= U_N; U_N depends on the stage-1 law, so the
    set is refitted until it stops changing), unless `fix` pins them; stage 2 fits R*_D and R*_N (those not pinned)
    with them fixed, on the other runs (on every run when stage 1 is pinned). The bootstrap resamples runs within
    each stage and refits both. `base` is unused (the signature of the one-R* form)."""
    fix, compare = dict(fix or {}), dict(compare or {})
    check_options(fix, compare, starts, "two-stage")
    pinned1 = [k for k in STAGE1 if k in fix]
    N, D, U, y = _repetition(t)
    lN, lD = np.log(N), np.log(D)
    single = D <= U * 1.01
    free2 = [k for k in STAGE2 if k not in fix]

    def stage1(th, w, rows):  # th = (e, a, b, alpha); analytic gradient of lse.objective, the exponent shared
        value, g = lse.objective(np.array([th[1], th[2], th[3], th[3], th[0]]), np.stack([lN[rows], lD[rows]], 1),
                                 y[rows], w, 2, True, lse.DELTA)
        return value, np.array([g[4], g[0], g[1], g[2] + g[3]])

    def rstars(free_values) -> dict:
        free = dict(zip(free2, free_values))
        return {k: fix[k] if k in fix else free[k] for k in STAGE2}

    def objective2(r: dict, w, th1) -> float:
        if min(r.values()) <= 0:
            return np.inf
        e, a, b, alpha = th1
        u_n = np.minimum(N, U * np.exp((a - b) / alpha))
        n_eff = _effective(u_n, N / u_n - 1, r["R_star_N"])
        d_eff = _effective(U, D / U - 1, r["R_star_D"])
        res = _log_law([a - alpha * np.log(n_eff), b - alpha * np.log(d_eff), np.full(len(y), e)], y)
        return float((w * lse.huber(res, lse.DELTA))[~first].sum())

    def descend(w, th1, from_: list) -> list[tuple[float, np.ndarray]]:
        """(objective, free R*) at the end of each start's descent."""
        if not free2:
            return [(objective2(rstars([]), w, th1), np.empty(0))]
        out = []
        for x0 in from_:
            if starts == "published":
                x = local_descent(lambda x: objective2(rstars(x), w, th1), np.asarray(x0, float))
            else:  # in log R*: positive by construction
                x = np.exp(minimize(lambda lx: objective2(rstars(np.exp(lx)), w, th1), np.log(x0),
                                    method="L-BFGS-B", options=lse.LBFGS_OPTIONS).x)
            if not np.allclose(x, x0, rtol=1e-9, atol=0) or len(from_) == 1:  # a start that never moved is no minimum
                out.append((objective2(rstars(x), w, th1), x))
        return out or [(objective2(rstars(from_[0]), w, th1), np.asarray(from_[0], float))]

    def solve1(from_, w, rows):
        res = [minimize(stage1, s0, args=(w, rows), method="L-BFGS-B", jac=True, options=lse.LBFGS_OPTIONS)
               for s0 in from_]
        return min(res, key=lambda r: r.fun).x

    if pinned1:
        th1 = np.array([np.log(fix["E"]), np.log(fix["A"]), np.log(fix["B"]), fix["alpha"]])
        first = np.zeros(len(y), bool)  # stage 2 on every run, as Muennighoff et al. did with Chinchilla's constants
    else:
        starts1 = _published_stage1_starts() if starts == "published" else \
            [np.array([e, a, b, al]) for e in (-1.0, 0.0, 1.0) for a in (0.0, 5.0, 10.0) for b in (0.0, 5.0, 10.0)
             for al in (0.1, 0.3, 0.6)]
        first = single
        for _ in range(10):  # the runs without excess parameters under the stage-1 law, to a fixed point
            if first.sum() < 5:
                raise ValueError(f"stage 1 of the data-constrained law needs 5 or more runs that repeat neither data "
                                 f"nor parameters; the table has {int(first.sum())} (--data-law one-rstar fits one R* "
                                 "to all runs at once; --fix E=...,A=...,B=...,alpha=... pins published constants)")
            th1 = solve1(starts1, np.ones(int(first.sum())), first)
            within = single & (N <= 1.01 * U * np.exp((th1[1] - th1[2]) / th1[3]))
            if (within == first).all():
                break
            first = within
    if (~first).sum() < 2:
        raise ValueError("stage 2 of the data-constrained law needs runs that repeat data or parameters")
    grid = PUBLISHED_RSTAR_STARTS if starts == "published" else DEFAULT_RSTAR_STARTS
    starts2 = [np.array(x) for x in np.array(np.meshgrid(*[grid] * len(free2))).reshape(len(free2), -1).T]
    ends = descend(np.ones(len(y)), th1, starts2)
    value, x2 = min(ends, key=lambda r: r[0])
    boots = []
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        c2 = np.zeros(len(y))
        c2[~first] = lse.resample_counts(int((~first).sum()), 1, rng)[0]
        b1 = th1
        if not pinned1:
            b1 = solve1([th1], lse.resample_counts(int(first.sum()), 1, rng)[0], first)
        boots.append(np.concatenate([b1, np.log(list(rstars(min(descend(c2, b1, [x2]), key=lambda r: r[0])[1])
                                                   .values()))]))

    def natural(th1_, r: dict) -> dict:
        with np.errstate(over="ignore"):
            return {"E": np.exp(th1_[0]), "A": np.exp(th1_[1]), "B": np.exp(th1_[2]), "alpha": th1_[3], **r}

    point = natural(th1, rstars(x2))
    samples = {}
    if boots:
        b = np.array(boots)
        samples = natural(b[:, :4].T, {k: np.exp(b[:, 4 + i]) for i, k in enumerate(STAGE2)})
    params = summarise(point, samples)
    search = {"starts": starts, "fixed": {k: float(v) for k, v in fix.items()}, "runs_in_stage_2": int((~first).sum()),
              "minima": _distinct(ends, free2, value)}
    if compare:
        at = {**point, **compare}
        th1c = np.array([np.log(at["E"]), np.log(at["A"]), np.log(at["B"]), at["alpha"]])
        search["compared"] = {"point": {k: float(v) for k, v in compare.items()}, "objective": objective2({k: at[k] for k in STAGE2},
                                                                        np.ones(len(y)), th1c)}
    return Fit(form="muennighoff",
               formula="L = E + A / N'^alpha + B / D'^alpha; D', N' decay repeated data (R*_D) and excess "
                       "parameters (R*_N) (Muennighoff et al. 2023, two stages)",
               params=params, n_points=len(y), objective=value, samples=samples, search=search,
               warnings=identifiability(params, [k for k in STAGE2 if k in free2]) + _flatness(search, value))


def _published_stage1_starts() -> list[np.ndarray]:
    """Their stage-1 grid: a, b in linspace(0, 25, 5), e in linspace(-1, 1, 4), alpha in linspace(0, 2, 4), as
    (e, a, b, alpha)."""
    return [np.array([e, a, b, al]) for a in np.linspace(0, 25, 5) for b in np.linspace(0, 25, 5)
            for e in np.linspace(-1, 1, 4) for al in np.linspace(0, 2, 4)]


def _distinct(ends: list, names: list[str], best: float) -> list[dict]:
    """The different minima the starts reached, lowest first; ends whose R* all lie within 1% of a lower one's are
    that one (a descent stops anywhere along the floor of its basin)."""
    kept: list[tuple[float, np.ndarray]] = []
    for value, x in sorted(ends, key=lambda r: r[0]):
        if np.isfinite(value) and all(np.abs(np.log(x / k)).max() > 0.01 for _, k in kept):
            kept.append((value, x))
    return [{**dict(zip(names, map(float, x))), "objective": float(value),
             "above_best": float(value / best - 1) if best > 0 else 0.0} for value, x in kept]


def _flatness(search: dict, best: float) -> list[str]:
    """A warning when the starts reached several minima whose objectives differ by under 1%."""
    close = [m for m in search["minima"] if m["above_best"] < 0.01]
    if len(close) < 2:
        return []
    spans = ", ".join(f"{k} {min(m[k] for m in close):.3g} to {max(m[k] for m in close):.3g}"
                      for k in STAGE2 if k in close[0])
    worst = 100 * max(m["above_best"] for m in close)
    return [(f"the stage-2 objective is flat: {len(close)} different minima from the starts lie within "
             f"{worst:.2g}% of the lowest ({best:.7g}), {spans}; R* is not determined to better than that range")]


def muennighoff_one_rstar(t: Table, base: Fit, n_boot: int = 200, seed: int = 0, fix: dict | None = None,
                          compare: dict | None = None, starts: str = "default") -> Fit:
    """The simpler data-constrained form, all runs at once from the Chinchilla fit `base`:
    L = E + A / N^alpha + B / D'^beta with D' = U + U R* (1 - exp(-R / R*)), R = D / U - 1."""
    if fix or compare or starts != "default":
        raise ValueError("--fix, --compare and --starts apply to the two-stage data-constrained law (--data-law "
                         "two-stage)")
    N, D, U, y = _repetition(t)
    lN, R = np.log(N), np.maximum(D / U - 1, 0)

    def objective(th, w):
        e, a, alpha, b, beta, log_r = th
        r = _log_law([a - alpha * lN, b - beta * np.log(_effective(U, R, np.exp(log_r))), np.full(len(y), e)], y)
        return float((w * lse.huber(r, lse.DELTA)).sum())

    p = {k: base.value(k) for k in ("E", "A", "alpha", "B", "beta")}
    start0 = [np.log(p["E"]), np.log(p["A"]), p["alpha"], np.log(p["B"]), p["beta"]]

    best, boot = _fit_and_bootstrap(objective, [start0 + [np.log(r)] for r in (1, 5, 15, 50)], len(y), n_boot, seed)

    def natural(th):
        th = np.atleast_2d(th)
        return {"E": np.exp(th[:, 0]), "A": np.exp(th[:, 1]), "alpha": th[:, 2], "B": np.exp(th[:, 3]),
                "beta": th[:, 4], "R_star": np.exp(th[:, 5])}

    point = {k: v[0] for k, v in natural(best.x).items()}
    samples = natural(boot) if boot is not None else {}
    params = summarise(point, samples)
    return Fit(form="muennighoff_one_rstar",
               formula="L = E + A / N^alpha + B / D'^beta, D' = U + U R* (1 - exp(-R / R*))",
               params=params, n_points=len(y), objective=float(best.fun),
               warnings=identifiability(params, ["R_star"]), samples=samples)


def search_lines(fit: Fit) -> list[str]:
    """How the fit's optimum was searched for, in words: the objective at the fitted point, at a compared one, and
    the other minima the starts reached."""
    s = fit.search or {}
    if not s:
        return []
    pinned = ", ".join(f"{k} = {v:.7g}" for k, v in s["fixed"].items())
    out = [f"objective {fit.objective:.7g} at the fitted point ({s['starts']} starts; {s['runs_in_stage_2']} runs "
           f"in stage 2" + (f"; pinned: {pinned}" if pinned else "") + ")"]
    if c := s.get("compared"):
        at = ", ".join(f"{k} = {v:.7g}" for k, v in c["point"].items())
        out.append(f"objective {c['objective']:.7g} at the compared point ({at}): "
                   f"{100 * (c['objective'] / fit.objective - 1):+.3g}% from the fitted one")
    for m in s["minima"][1:]:
        at = ", ".join(f"{k} = {m[k]:.4g}" for k in STAGE2 if k in m)
        out.append(f"another minimum from the starts: {at}, objective {m['objective']:.7g} "
                   f"({100 * m['above_best']:+.3g}%)")
    return out


def check_options(fix: dict, compare: dict, starts: str, data_law: str) -> None:
    """The CLI's --fix, --compare and --starts, checked before any fit: a ValueError names what is wrong."""
    if (fix or compare or starts != "default") and data_law != "two-stage":
        raise ValueError("--fix, --compare and --starts apply to the two-stage data-constrained law (--data-law "
                         "two-stage)")
    check_names(fix, STAGE1 + STAGE2, "--fix")
    check_names(compare, STAGE1 + STAGE2, "--compare")
    if (pinned := [k for k in STAGE1 if k in fix]) and len(pinned) < len(STAGE1):
        raise ValueError(f"--fix pins the data-constrained law's stage 1 as a whole: {', '.join(STAGE1)} together "
                         f"(got {', '.join(pinned)})")
    if starts not in STARTS:
        raise ValueError(f"--starts must be one of {', '.join(STARTS)}, got {starts!r}")
