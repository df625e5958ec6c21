"""Veit et al.'s lesion and gradient claims (F3-F8), verdicted from the tables with thresholds stated here.

What a verdict says and what its interval is over: ``claim.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from workloads.surgery.paths import (contribution_fractions, effective_range, log10_total_contribution,
                                     path_length_distribution, probability_in_range, surviving_fraction)

from orchestrator.analysis.claim import ONE_SEED, Claim
from orchestrator.analysis.prose import plural
from orchestrator.analysis.results import CRITICAL_RISE, EFFECTIVE_MASS, Results
from orchestrator.analysis.stats import (Interval, difference_interval, median_interval, paired_difference_interval,
                                         resampled_interval, share_interval, slope_interval, spearman_interval)

# thresholds, in error points (percentage points) unless said otherwise; CRITICAL_RISE and
# EFFECTIVE_MASS, which define a run's facts, are stated in results.py
ROBUST_RISE = 5.0           # "no noticeable change": a rise below this ...
ROBUST_SHARE = 0.9          # ... for at least this share of the ordinary blocks
PLAIN_COLLAPSE = 0.7        # plain net: median error after one deletion at least this (chance ~0.9)
SMOOTH_STEP = 15.0          # F5a: no step between consecutive k beyond what the two 95% bands allow
TAU_RHO = -0.5              # F5b: Spearman correlation of error with Kendall tau at most this (interval below 0)
GRAD_R2 = 0.9               # F6b: straight line in log10 norm vs k explains at least this
PAPER_BLOCKS = 54           # ResNet-110, the network of the paper's numbers
MANY_SURVIVE = 0.10         # F7: deleting 10 of 54 blocks keeps at least this share of the gradient's paths


def residual_runs(results: Results, mode: str | None = "normal") -> list[str]:
    """Residual runs trained in ``mode`` (None: any); ``normal`` includes networks trained normally
    elsewhere and imported (mode ``pretrained``)."""
    modes = {mode, "pretrained"} if mode == "normal" else {mode}
    return [r for r, m in zip(results.runs["run_id"], results.runs["mode"])
            if not results.structure(r).plain and (mode is None or m in modes)]


def trainings(results: Results, runs: list[str]) -> str:
    """What an interval over one network's blocks or draws leaves out, said for ``runs``: training variance
    with one seed per network; with several, each seed is judged on its own and all must agree."""
    seeds = pd.Series([results.series(r) for r in runs]).value_counts()
    if seeds.max() == 1:
        return "one trained network each, so the variance between trainings is not covered"
    return (f"each of {seeds.min()}{'' if seeds.min() == seeds.max() else f'-{seeds.max()}'} seeds per network "
            f"judged on its own, every one must pass")


def plain_runs(results: Results) -> list[str]:
    return [r for r in results.runs["run_id"] if results.structure(r).plain]


def f3_resnet(results: Results) -> Claim:
    paper = "F3 single-block deletion barely hurts a ResNet (except downsampling blocks)"
    runs = [r for r in residual_runs(results) if r in set(results.study("single_deletion")["run_id"])]
    if not runs:
        return Claim("F3-resnet", paper, "no single-deletion results on a residual run", "not run", "")
    parts, ok, any_critical, judged = [], True, False, 0
    for r in runs:
        crit = results.critical_blocks(r)
        apart = set(results.structure(r).downsampling) | set(crit)
        rest = [rise for b, rise in results.single_deletion_rises(r).items() if b not in apart]
        any_critical |= bool(crit)
        structure = results.structure(r)
        noun = "unit" if structure.sublayers else "block"
        crit_text = f"critical {structure.units_text(crit)}" if crit else f"no critical {noun}"
        if not rest:
            parts.append(f"{results.name(r)}: no ordinary {noun}s (every {noun} downsamples or is critical); "
                         f"{crit_text}")
            continue
        judged += 1
        share = share_interval(sum(x < ROBUST_RISE for x in rest), len(rest))
        ok &= share.estimate >= ROBUST_SHARE
        parts.append(f"{results.name(r)}: {share.estimate:.0%} [95% CI {share.lo:.0%}, {share.hi:.0%}] of "
                     f"{plural(len(rest), 'ordinary ' + noun)} rise < {ROBUST_RISE:g} {results.measure.points} "
                     f"(largest {max(rest):+.1f}); {crit_text}")
    if not judged:
        verdict = "cannot be computed: no run has an ordinary block"
    else:
        verdict = ("partly reproduced: not for the critical blocks" if ok and any_critical
                   else "reproduced" if ok else "not reproduced")
    return Claim("F3-resnet", paper, "; ".join(parts), verdict,
                 f"at least {ROBUST_SHARE:.0%} of the blocks that neither downsample nor are critical rise < "
                 f"{ROBUST_RISE:g} {results.measure.points} (the share's exact binomial interval is shown); a "
                 f"block rising > {CRITICAL_RISE:g} points is critical and reported apart",
                 f"exact binomial (Clopper-Pearson) over the ordinary "
                 f"{'units' if all(results.structure(r).sublayers for r in runs) else 'blocks'} of each network; "
                 f"{trainings(results, runs)}")


def f3_plain(results: Results) -> Claim:
    paper = "F3 deleting any layer of the plain net sends it to chance (~90%)"
    f3 = results.study("single_deletion")
    runs = [r for r in plain_runs(results) if r in set(f3["run_id"])]
    if not runs:
        return Claim("F3-plain", paper, "no plain net in the experiment", "not run", "")
    parts, verdicts = [], []
    for r in runs:
        med = median_interval(f3[f3["run_id"] == r]["error"]).scaled(100)
        parts.append(f"{results.name(r)}: median error {med.text(1, '%')} over {plural(med.n, 'deletable layer')}")
        if not med.known:
            verdicts.append(med.estimate >= 100 * PLAIN_COLLAPSE)
        else:
            verdicts.append(True if med.lo >= 100 * PLAIN_COLLAPSE else False if med.hi < 100 * PLAIN_COLLAPSE
                            else None)
    verdict = ("reproduced" if all(v is True for v in verdicts) else "not reproduced" if any(v is False for v in verdicts)
               else "not resolved on this data")
    return Claim("F3-plain", paper, "; ".join(parts), verdict,
                 f"the 95% interval of the median error after one deletion lies at or above "
                 f"{100 * PLAIN_COLLAPSE:.0f}% (below it: not reproduced; across it: not resolved)",
                 f"bootstrap over the deletable layers of each plain net; {trainings(results, runs)}")


def _smooth(curve: pd.DataFrame, rows: pd.DataFrame, unit: str = "block", points: str = "points"
            ) -> tuple[bool | None, str]:
    """F5a's test on a mean-error curve with its 95% bands (and the draws behind it): (rises smoothly,
    the numbers that decided); None when there are too few k values to judge."""
    if len(curve) < 3:
        return None, f"only {plural(len(curve), 'value')} of k (3 needed for a trend)"
    mean, half = 100 * curve["mean"].to_numpy(), 50 * (curve["hi"] - curve["lo"]).to_numpy()
    half = np.nan_to_num(half, nan=0.0)
    slope = slope_interval(rows["k"], 100 * rows["error"])
    forced = float(np.max(np.maximum(np.abs(np.diff(mean)) - (half[1:] + half[:-1]), 0.0)))
    at10 = curve[curve["k"] == 10]
    at10 = [Interval(row.mean, row.lo, row.hi, int(row.draws)).scaled(100) for row in at10.itertuples()]
    at = f", k=10 {at10[0].text(1, '%')}" if at10 else ""
    ok = bool(slope.above(0) and forced <= SMOOTH_STEP)
    return ok, (f"rise {slope.text(2)} {points} per deleted {unit}, largest step beyond the 95% bands "
                f"{forced:.1f} points{at}")


def f5a(results: Results) -> Claim:
    paper = "F5a error rises smoothly with the number of deleted blocks (k=10 -> ~20%)"
    d = results.study("random_deletion")
    runs = [r for r in residual_runs(results) if r in set(d["run_id"])]
    if not runs:
        return Claim("F5a", paper, "no random-deletion results", "not run", "")
    parts, outcomes = [], []   # per run: True, False, None (too few k) or "spared" (smooth only sparing its
    for r in runs:             # critical blocks)
        unit = "unit" if results.structure(r).sublayers else "block"
        good, text = _smooth(results.deletion_curve(r), results.random_deletions(r), unit, results.measure.points)
        part = f"{results.name(r)}: {text}"
        if results.critical_blocks(r):
            avoiding = results.deletion_curve(r, True)
            if len(avoiding) > 2:
                good_a, text_a = _smooth(avoiding, results.random_deletions(r, True), unit, results.measure.points)
                part += f" (draws avoiding critical {unit}s: {text_a})"
                if good is False and good_a is True:
                    good = "spared"
        outcomes.append(good)
        parts.append(part)
    judged = [o for o in outcomes if o is not None]
    if not judged:
        verdict = "cannot be computed: too few values of k"
    elif all(o is True for o in judged):
        verdict = "reproduced"
    elif all(o in (True, "spared") for o in judged):   # every run that fails has critical blocks, and passes without
        verdict = "partly reproduced: only away from the critical blocks"
    else:
        verdict = "not reproduced"
    return Claim("F5a", paper, "; ".join(parts), verdict,
                 f"the error rises with k (the 95% interval of the least-squares slope over all draws lies above 0) "
                 f"and no step between consecutive k is larger than {SMOOTH_STEP:g} points beyond what the two k's "
                 f"95% bootstrap bands (over draws) allow",
                 f"over the random draws of each network: the slope's t interval (scipy linregress over k) and "
                 f"bootstrap bands per k; {trainings(results, runs)}")


def f5b(results: Results) -> Claim:
    paper = "F5b error rises smoothly as Kendall tau of the reordering falls"
    d = results.study("reorder")
    runs = [r for r in residual_runs(results) if r in set(d["run_id"])]
    if not runs:
        return Claim("F5b", paper, "no reorder results", "not run", "")
    parts, outcomes = [], []
    for r in runs:
        rows = d[d["run_id"] == r]
        rho = spearman_interval(rows["kendall_tau"], rows["error"])
        if not np.isfinite(rho.estimate):
            outcomes.append(None)
            parts.append(f"{results.name(r)}: too few reorderings or no spread in tau or error to correlate")
            continue
        outcomes.append(bool(rho.estimate <= TAU_RHO and rho.below(0)))
        parts.append(f"{results.name(r)}: Spearman(tau, error) {rho.text(2)} over {plural(rho.n, 'reordering')}, "
                     f"tau {rows['kendall_tau'].min():.2f}..{rows['kendall_tau'].max():.2f}")
    judged = [o for o in outcomes if o is not None]
    verdict = ("cannot be computed: too few reorderings" if not judged
               else "reproduced" if all(judged) else "not reproduced")
    return Claim("F5b", paper, "; ".join(parts), verdict,
                 f"Spearman(tau, error) <= {TAU_RHO} with its 95% bootstrap interval (over draws) below 0",
                 f"bootstrap over the reorderings of each network; {trainings(results, runs)}")


def _draw_matrix(results: Results, run_id: str) -> pd.DataFrame:
    """log10 gradient norms, one row per draw, one column per path length k."""
    g = results.gradients[results.gradients["run_id"] == run_id]
    return g.pivot_table(index="draw", columns="k", values="log10_norm", aggfunc="first").sort_index(axis=1)


def _profile(matrix: np.ndarray) -> np.ndarray:
    """Per k, the log10 of the mean norm over the rows' finite values (draws), as Results.gradient_profile
    computes it (``log10_mean`` of each column), nan where a column has none. All columns at once: the
    bootstrap calls this for each of its resamples."""
    finite = np.isfinite(matrix)
    any_finite = finite.any(axis=0)
    values = np.where(finite, matrix, -np.inf)
    top = np.where(any_finite, values.max(axis=0, initial=-np.inf), 0.0)
    scaled = np.where(finite, 10.0 ** (values - top), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = scaled.sum(axis=0) / finite.sum(axis=0)
        return np.where(any_finite, top + np.log10(mean), np.nan)


def _slope_and_fit(ks: np.ndarray, profile: np.ndarray) -> tuple[float, float]:
    ok = np.isfinite(profile)
    if ok.sum() < 3:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(ks[ok], profile[ok], 1)
    resid = profile[ok] - (slope * ks[ok] + intercept)
    ss = float(((profile[ok] - profile[ok].mean()) ** 2).sum())
    return float(slope), 1 - float((resid ** 2).sum()) / ss if ss else 0.0


def _effective_hi(n: int, ks: np.ndarray, profile: np.ndarray) -> int:
    log_norm = np.full(n + 1, -np.inf)
    ok = np.isfinite(profile)
    log_norm[ks[ok]] = profile[ok]
    return effective_range(contribution_fractions(log10_total_contribution(n, log_norm)), EFFECTIVE_MASS)[1]


def f6(results: Results) -> list[Claim]:
    paper_b = "F6b gradient magnitude falls exponentially with path length"
    paper_c = "F6c almost all gradient comes from short paths (5-17 of 54 blocks, 0.45% of paths)"
    runs = [r for r in residual_runs(results) if r in set(results.gradients["run_id"])]
    if not runs:
        return [Claim("F6b", paper_b, "no gradient results", "not run", ""),
                Claim("F6c", paper_c, "no gradient results", "not run", "")]
    parts_b, parts_c, out_b, out_c, one_draw = [], [], [], [], False
    for r in runs:
        frame, n = _draw_matrix(results, r), results.structure(r).paths
        ks, matrix = frame.columns.to_numpy(dtype=int), frame.to_numpy(dtype=float)
        slope0, r2 = _slope_and_fit(ks, _profile(matrix))
        if not np.isfinite(slope0):
            out_b.append(None)
            out_c.append(None)
            parts_b.append(f"{results.name(r)}: fewer than 3 path lengths with a finite norm")
            continue
        slope = resampled_interval(len(matrix), lambda i: _slope_and_fit(ks, _profile(matrix[i]))[0])
        one_draw |= not slope.known
        eff = results.effective_paths(r)
        hi = resampled_interval(len(matrix), lambda i: _effective_hi(n, ks, _profile(matrix[i])))
        out_b.append(bool(slope.below(0) if slope.known else slope.estimate < 0) and r2 >= GRAD_R2)
        out_c.append(bool(hi.below(n / 2) if hi.known else eff.hi < n / 2))
        factor = (f"x{10 ** slope.estimate:.3f} per block [95% CI x{10 ** slope.lo:.3f}, x{10 ** slope.hi:.3f}]"
                  if slope.known else f"x{10 ** slope.estimate:.3f} per block (no interval: one draw)")
        parts_b.append(f"{results.name(r)}: {factor}, R^2 {r2:.2f}, over {plural(slope.n, 'draw')}")
        upper = f" (upper end 95% CI {hi.lo:.0f}-{hi.hi:.0f})" if hi.known else ""
        parts_c.append(f"{results.name(r)}: {EFFECTIVE_MASS:.0%} of the gradient from paths of {eff.lo}-{eff.hi} of "
                       f"{n} blocks{upper}, {100 * eff.share:.2g}% of all paths")

    over = f"bootstrap over the gradient draws of each network; {trainings(results, runs)}" + (
        "; a network with one draw has no interval, and its verdict reads the estimate" if one_draw else "")

    def verdict(outcomes):
        judged = [o for o in outcomes if o is not None]
        return ("cannot be computed: too few path lengths" if not judged
                else "reproduced" if all(judged) else "not reproduced")

    return [Claim("F6b", paper_b, "; ".join(parts_b), verdict(out_b),
                  f"the 95% bootstrap interval (over draws) of the slope of log10 norm vs k lies below 0, and a "
                  f"straight line explains R^2 >= {GRAD_R2}", over),
            Claim("F6c", paper_c, "; ".join(parts_c) or "no finite gradient profile", verdict(out_c),
                  f"the {EFFECTIVE_MASS:.0%} range's upper end (95% bootstrap interval over draws) lies below n/2, "
                  f"the typical path length", over)]


def f6a(results: Results) -> Claim:
    """Exact arithmetic: path lengths are Binomial(n, 1/2), for the paper's n and each run's."""
    paper = "F6a path lengths are Binomial(n, 1/2): >95% of ResNet-110's paths have length 19-35"
    share = probability_in_range(PAPER_BLOCKS, 19, 35)
    parts = [f"n={PAPER_BLOCKS}: {100 * share:.1f}% of 2^{PAPER_BLOCKS} paths have length 19-35 (exact)"]
    for n in sorted({results.structure(r).paths for r in residual_runs(results, None)} - {PAPER_BLOCKS}):
        p = path_length_distribution(n)
        lo, hi = effective_range(p, 0.95)
        parts.append(f"n={n}: 95% of paths have length {lo}-{hi}")
    return Claim("F6a", paper, "; ".join(parts), "reproduced" if share > 0.95 else "not reproduced",
                 "exact binomial counts (no sampling, so no interval)", "none: exact binomial counts")


def f7(results: Results) -> Claim:
    """What deleting d blocks removes: exact survival per length, weighted by each length's measured share
    of the gradient (F6c) for the runs with gradients."""
    paper = "F7 deleting 10 blocks keeps many effective paths (length 5: 34%, length 10: 10% survive)"
    runs = [r for r in residual_runs(results) if r in set(results.gradients["run_id"])]
    reference = (f"n=54, d=10: {100 * surviving_fraction(54, 10, 5):.1f}% of length-5 and "
                 f"{100 * surviving_fraction(54, 10, 10):.1f}% of length-10 paths survive (exact)")
    if not runs:
        return Claim("F7", paper, reference + "; no gradient profile to weight the paths by", "not run",
                     "needs the gradients study (F6)")
    parts, ok = [reference], True
    for r in runs:
        n, eff = results.structure(r).paths, results.effective_paths(r)
        d = max(1, round(10 * n / PAPER_BLOCKS))
        kept = float(sum(f * surviving_fraction(n, d, x) for x, f in enumerate(eff.fractions)))
        ok &= kept >= MANY_SURVIVE
        parts.append(f"{results.name(r)}: deleting {plural(d, 'block')} of {n} keeps {100 * kept:.1f}% of the "
                     f"gradient's paths against {100 * 2.0 ** -d:.2g}% of all paths")
    return Claim("F7", paper, "; ".join(parts), "reproduced" if ok else "not reproduced",
                 f"deleting 10 of 54 blocks (scaled to the run's n) keeps at least {MANY_SURVIVE:.0%} of the paths, "
                 f"each length weighted by its measured share of the gradient (exact given the F6c profile)",
                 "none: exact given each network's F6c profile (whose interval is F6c's)")


def _mean_rise(results: Results, run_id: str, blocks: list[int]) -> float:
    rises = results.single_deletion_rises(run_id)
    return float(np.mean([rises[b] for b in blocks]))


def f8(results: Results) -> Claim:
    """Stochastic depth against normal training: a comparison of two training procedures, so decided over
    seeds (each seed's mean rise over the blocks both share); with one seed a side, the bootstrap over
    blocks is shown but cannot decide, as it ignores how much another training would differ."""
    paper = "F8 stochastic depth makes single-block deletion slightly less harmful"
    rule = ("over seeds: the 95% bootstrap interval of the mean rise per single deletion with stochastic depth "
            "minus without (each seed's rise averaged over the blocks both have) lies below 0 (above 0: not "
            f"reproduced; across 0: not resolved); at least 2 seeds a side, else \"{ONE_SEED}\"")
    f3_runs = set(results.study("single_deletion")["run_id"])
    sd = [r for r in residual_runs(results, "stochastic_depth") if r in f3_runs]
    normal = [r for r in residual_runs(results, "normal") if r in f3_runs]
    if not sd or not normal:
        return Claim("F8", paper, "needs single deletions on a normal and a stochastic-depth run", "not run", "")
    groups: dict[str, list[str]] = {}
    for s in sd:   # a stochastic-depth network's seeds, with the normal runs of the same network
        groups.setdefault(results.series(s), []).append(s)
    pairs = []
    for name, members in groups.items():
        label, blocks = results.run(members[0])["label"], results.structure(members[0]).num_blocks
        twins = [r for r in normal if results.run(r)["label"] == label] or \
                [r for r in normal if results.structure(r).num_blocks == blocks]
        if twins:
            pairs.append((name, twins, members))
    if not pairs:
        return Claim("F8", paper, "no normal run of the same network as the stochastic-depth run", "not run", "")
    parts, outcomes, overs = [], [], set()
    for name, twins, members in pairs:
        blocks = sorted(set.intersection(*(set(results.single_deletion_rises(r)) for r in twins + members)))
        a = [_mean_rise(results, r, blocks) for r in twins]
        b = [_mean_rise(results, r, blocks) for r in members]
        if min(len(a), len(b)) < 2:
            per_block = paired_difference_interval(
                [np.mean([results.single_deletion_rises(r)[x] for r in twins]) for x in blocks],
                [np.mean([results.single_deletion_rises(r)[x] for r in members]) for x in blocks])
            outcomes.append(ONE_SEED)
            overs.add(f"over the {plural(len(blocks), 'block')} of one trained network a side: the spread between "
                      f"blocks, not between trainings, so it cannot decide")
            parts.append(f"{name}: mean rise per deletion {np.mean(b):.2f} points against {np.mean(a):.2f} normally; "
                         f"difference {per_block.text(2)} points over {plural(len(blocks), 'block')} "
                         f"({plural(len(b), 'seed')} with stochastic depth, {plural(len(a), 'seed')} normal)")
            continue
        diff = difference_interval(a, b)
        outcomes.append(True if diff.below(0) else False if diff.above(0) else None)
        overs.add("bootstrap over seeds, each seed's rise averaged over its blocks: covers training variance")
        parts.append(f"{name}: mean rise per deletion {np.mean(b):.2f} points against {np.mean(a):.2f} normally; "
                     f"difference {diff.text(2)} points over seeds ({len(b)} with stochastic depth, {len(a)} normal; "
                     f"{plural(len(blocks), 'block')} each)")
    verdict = ("not reproduced" if any(o is False for o in outcomes) else ONE_SEED if all(o == ONE_SEED for o in outcomes)
               else "reproduced" if all(o is True for o in outcomes) else "not resolved on this data")
    return Claim("F8", paper, "; ".join(parts), verdict, rule, "; ".join(sorted(overs)))
