"""The plan as the table `unravel plan` prints (``render``), from its JSON document (``plan.make_plan``)."""
from __future__ import annotations

import textwrap
from collections import Counter

UNKNOWN_DEVICE_TIME = "unknown, give --rates or calibrate on a node like the spec's"


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    return f"{_num(hours)} h"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header), *(fmt(r) for r in rows)]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 'es' if noun.endswith('ch') else 's'}"


def _res(r: dict) -> str:
    return f"{r['cpu']:g} CPU + {r['gpu']:g} GPU"


def render(doc: dict) -> str:
    """The plan as the table `unravel plan` prints."""
    d = doc["data"]
    test = f"{d['test_examples']:,} test examples per unit" if d["test_examples"] else "test examples unknown"
    nodes = Counter((n["cpu"], n["gpu"]) for n in doc["nodes"]["nodes"])
    shape = ", ".join(f"{c} x ({cpu:g} CPU, {gpu:g} GPU)" for (cpu, gpu), c in nodes.items()) or "none"
    spec = f" ({doc['spec']})" if doc["spec"] else ""
    size = f"{d['channels']}x{d['image_size']}x{d['image_size']}, {d['classes']} classes"
    if "sequence_length" in d:
        vocabulary = f"a vocabulary of {d['classes']:,}" if d["classes"] else "the vocabulary unknown"
        size = f"sequences of {d['sequence_length']} tokens, {vocabulary}"
        test = test.replace("test examples", "test sequences")
    lines = [f"plan of '{doc['experiment']}'{spec}: nothing submitted, nothing written",
             f"data: {d['dataset']}, {size}; {test}",
             f"nodes ({doc['nodes']['source']}): {shape}"]
    t = doc["training"]
    if t["trials"]:
        lines += ["", f"training: {_count(t['trials'], 'trial')}, each {_res(t['resources'])}; {t['fit_at_once']} "
                      f"fit at once, {t['at_once']} run at once"]
        lines += _table([[r["group"], r["trials"], f"{r['iterations']:,}", _num(r["iterations_per_s"]),
                          r["rate"] or "none", _duration(r["device_hours"])] for r in t["groups"]],
                        ["run group", "trials", "iterations", "iterations/s", "rate", "device time"])
    s = doc["studies"]
    unknown = s["units_unknown_for"]
    if s["units"] or unknown:
        e = s["evaluators"]
        counted = f"{_count(s['units'], 'unit')} in {_count(s['batches'], 'batch')}"
        if unknown:
            counted = (f"{counted} and the unknown units of {', '.join(unknown)}" if s["units"] else
                       f"the units of {', '.join(unknown)} unknown")
        lines += ["", f"studies: {counted}, {_count(e['count'], 'evaluator')} of {_res(e)} each; "
                      f"{s['fit_at_once']} fit at once, {s['at_once']} run at once"]
        lines += _table([[r["study"], r["runs"], f"{r['units']:,}",
                          _num(r["units"] / (r["device_hours"] * 3600)) if r["device_hours"] else "-",
                          _duration(r["device_hours"])] for r in s["per_study"]],
                        ["study", "runs", "units", "units/s", "device time"]) if s["per_study"] else []
        for r in s["tasks"]:
            tokens = (f"{r['tokens_per_plan']:,} input tokens per plan ({r['requests']:,} requests), "
                      f"{r['tokens']:,} in all" if r["tokens"] is not None
                      else "tokens unknown (the model's tokenizer is not here)")
            lines.append(f"  task {r['task']} on {r['run_id']}: {_count(r['plans'], 'plan')}, {tokens}")
    parts = [f"{name} {_duration(x['device_hours']) if x['device_hours'] is not None else 'unknown'}"
             for name, x, has in
             (("training", t, t["trials"]), ("studies", s, s["units"] or unknown)) if has]
    if doc["wall_hours"] is not None:
        wall = f"about {_duration(doc['wall_hours'])} on these nodes"
    else:
        wall = "wall time unknown" if doc["device_hours"] is None else "no wall time: a worker fits on no node"
    est = doc["estimate"]
    if doc["device_hours"] is None:
        known = [p for p in parts if not p.endswith(" unknown")]
        lines += ["", f"device time: {UNKNOWN_DEVICE_TIME}" + (f" (known: {', '.join(known)})" if known else "")]
    else:
        lines += ["", f"device time: {_num(doc['device_hours'])} device-hours ({', '.join(parts)}); {wall}",
                  *_wrapped(f"estimate: {est['method']}")]
    total = len(t["groups"]) + len(s["groups"])
    rates = [f"{est['given']} of {total} given"] if est["given"] else []
    c = est["calibration"]
    if c and c["timed"]:   # a calibration that measured nothing says why in the notes
        rates.append(f"{est['measured']} of {total} measured on this machine's {' and '.join(c['devices'])} in "
                     f"{c['seconds']:.0f} s (budget {c['budget_seconds']:g} s):")
    lines.append(f"rates: {', '.join(rates) or 'none'}")
    lines += [f"  {what}" for what in (c["timed"] if c else [])]
    lines += [line for n in doc["notes"] for line in _wrapped(f"note: {n}")]
    return "\n".join(lines)


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=110, subsequent_indent="  ", break_on_hyphens=False)
