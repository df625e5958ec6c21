"""Bad input never gets past the spec loader: one line naming the field, exit 2, nothing written.

Two halves:

* a corpus, ``tests/bad_specs/NN-short-name.yaml``: small digits specs with exactly one mistake
  each. Their leading ``# expect: <substring>`` lines (one or more) say what the one-line error
  must contain: the field path and a word of the problem. Each runs through the real CLI
  (``unravel lesion SPEC --out DIR``) in a clean working directory.
* hypothesis properties of ``parse_spec`` / ``load_spec``: random mutations of a valid spec are
  either accepted or rejected with a one-line ``SpecError`` that starts with a field path, and a
  valid spec dumped to YAML loads back to the same trials and studies.
"""
from __future__ import annotations

import copy
import math
import re
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.experiment.spec import ExperimentSpec, SpecError, load_spec, parse_spec

BAD_SPECS = Path(__file__).parent / "bad_specs"
CASES = sorted(BAD_SPECS.glob("*.yaml"))
EXPECT = re.compile(r"#\s*expect:\s*(.*?)\s*$")


def expectations(path: Path) -> list[str]:
    """The substrings of a corpus file's leading ``# expect:`` lines."""
    found = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        m = EXPECT.match(line)
        if not m:
            break
        found.append(m.group(1))
    return found


# -- the corpus --------------------------------------------------------------------------------

def test_corpus_is_large_and_every_case_says_what_to_expect():
    assert len(CASES) >= 40, f"only {len(CASES)} bad specs in {BAD_SPECS}"
    numbers = [p.name.split("-", 1)[0] for p in CASES]
    assert all(re.fullmatch(r"\d{2,}", n) for n in numbers) and len(set(numbers)) == len(numbers)
    for path in CASES:
        first = path.read_bytes().decode("utf-8", "replace")
        assert first.startswith("# expect: "), f"{path.name}: the first line must be '# expect: ...'"
        assert all(expectations(path)), f"{path.name}: an empty expectation"


class ReachedRay(Exception):
    """A bad spec got past every check to the point of connecting to Ray."""


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(path, tmp_path, monkeypatch):
    import orchestrator.run.cluster

    def no_ray(*args, **kwargs):
        raise ReachedRay("the spec was accepted and the CLI went on to connect to Ray")

    # a bad spec the loader misses must not start a private Ray inside the test process
    monkeypatch.setattr(orchestrator.run.cluster, "connect", no_ray)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["lesion", str(path), "--out", str(tmp_path / "out")])
    output = result.output.strip()
    crash = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = f" (uncaught {type(result.exception).__name__}: {str(result.exception)[:200]})"
    shown = f"exit {result.exit_code}{crash}, output {output!r}"
    assert result.exit_code == 2, shown
    assert len(output.splitlines()) == 1 and output.startswith("Error: "), shown
    assert "Traceback" not in output, shown
    for expected in expectations(path):
        assert expected in output, f"expected {expected!r} in the message; {shown}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the CLI wrote files for a bad spec"


# -- properties of the loader ------------------------------------------------------------------

VALID = {
    "name": "prop-digits",
    "data": {"dataset": "digits"},
    "training": {
        "iterations": 20, "seeds": 1, "resources": {"cpu": 1}, "recipe": {"eval_every": 10},
        "runs": [{"network": "resnet20", "label": "res", "overrides": {"widths": [2, 4, 4]},
                  "modes": ["normal", "stochastic_depth"]},
                 {"network": "plain15", "label": "plain", "overrides": {"widths": [2, 4, 4]}}],
    },
    "studies": {
        "single_deletion": {},
        "random_deletion": {"k_max": 2, "draws": 2},
        "reorder": {"k_max": 2, "draws": 2},
        "gradients": {"draws": 2, "runs": ["res"], "batch_size": 8},
        "span_deletion": {"max_length": 2},
        "evaluators": {"count": 1, "cpu": 1},
        "test_examples": 50,
        "exclude_blocks": [0],
    },
}
TOP_KEYS = {"name", "data", "training", "studies"}
# words the loader knows, so that random values sometimes land on meaningful ones
KNOWN_WORDS = ["resnet20", "preact_resnet20", "plain15", "resnet21", "res", "plain", "all", "normal",
               "stochastic_depth", "effective_paths", "digits", "cifar10", "mnist", "auto", "fp32", "bf16", "fp16"]
KNOWN_KEYS = ["name", "data", "training", "studies", "dataset", "root", "download", "iterations", "seeds",
              "resources", "max_failures", "recipe", "runs", "network", "label", "overrides", "variants", "modes",
              "active_blocks", "widths", "depth", "unit", "lr", "batch_size", "milestones", "cpu", "gpu", "count",
              "k_max", "draws", "single_deletion", "random_deletion", "reorder", "gradients", "span_deletion",
              "max_length", "precision", "exclude_blocks", "evaluators"]

# ints: small ones (incl. negative), boundaries and huge ones; no mid-size ones (widths of a few
# thousand would spend seconds building a network, not find more)
ints = st.one_of(st.integers(-3, 40),
                 st.sampled_from([-1, -2**31, 10**6, 10**6 + 1, 2**31 - 1, 2**31, 10**8 + 1, 10**9, 10**12, 2**63,
                                  10**30]))
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=10), st.sampled_from(KNOWN_WORDS))
keys = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True), st.sampled_from(KNOWN_KEYS))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=8)


def _paths(node, prefix=()):
    """Every (path, node) of a JSON-ish tree, the root included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _at(tree, path):
    for step in path:
        tree = tree[step]
    return tree


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(spec))
        paths = paths[1:] + paths[:1]  # the root last: hypothesis favours early choices
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "replace":
            path, _ = draw(st.sampled_from(paths))
            value = draw(values)
            if not path:
                spec = value
            else:
                _at(spec, path[:-1])[path[-1]] = value
        elif op == "delete":
            removable = [p for p, _ in paths if p]
            if not removable:
                continue
            path = draw(st.sampled_from(removable))
            del _at(spec, path[:-1])[path[-1]]
        else:
            mappings = [p for p, node in paths if isinstance(node, dict)]
            if not mappings:
                continue
            path = draw(st.sampled_from(mappings))
            _at(spec, path)[draw(keys)] = draw(values)
    return spec


def _first_segment(field_path: str) -> str:
    return re.split(r"[.\[]", field_path, maxsplit=1)[0]


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_specs())
def test_mutated_spec_is_accepted_or_names_the_field(raw):
    snapshot = copy.deepcopy(raw)
    try:
        spec = parse_spec(raw)
    except SpecError as e:
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert "Traceback" not in message, message
        field_path, sep, problem = message.partition(": ")
        assert sep and field_path.strip() and problem.strip(), f"no 'field.path: problem' shape: {message!r}"
        top = {str(k) for k in raw} | TOP_KEYS if isinstance(raw, dict) else None
        if top is not None:
            assert _first_segment(field_path) in top, f"does not start with a field path: {message!r}"
    else:
        assert isinstance(spec, ExperimentSpec)
        assert spec.training.trials, "an accepted spec must have something to train"
    assert raw == snapshot or _has_nan(snapshot), "parse_spec changed its input"


def _has_nan(tree) -> bool:
    return any(isinstance(v, float) and math.isnan(v) for _, v in _paths(tree))


# -- round trip: YAML out, the same experiment back ------------------------------------------------

@st.composite
def valid_specs(draw):
    runs = []
    labels = draw(st.lists(st.sampled_from(["res", "pre", "plain", "a-1", "b_2", "c.3"]), min_size=1, max_size=3,
                           unique=True))
    for label in labels:
        network = draw(st.sampled_from(["resnet20", "preact_resnet20", "plain15"]))
        entry = {"network": network, "label": label,
                 "overrides": {"widths": draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))}}
        if network != "plain15" and draw(st.booleans()):
            entry["modes"] = draw(st.lists(st.sampled_from(["normal", "stochastic_depth", "effective_paths"]),
                                           min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            entry["variants"] = [{}, {"widths": [draw(st.integers(5, 6))]}]
        runs.append(entry)
    seeds = draw(st.one_of(st.integers(1, 2), st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=2,
                                                       unique=True)))
    training = {"iterations": draw(st.integers(1, 10**8)), "seeds": seeds, "runs": runs,
                "resources": draw(st.sampled_from([{"cpu": 1}, {"cpu": 0.5}, {"gpu": 1}, {"cpu": 2, "gpu": 0.25}])),
                "max_failures": draw(st.integers(0, 100))}
    if draw(st.booleans()):
        training["recipe"] = {"eval_every": draw(st.integers(1, 50)), "lr": draw(st.sampled_from([0.1, 0.05]))}
    residual = [r["label"] for r in runs if r["network"] != "plain15"]
    studies: dict = {"single_deletion": draw(st.sampled_from([{}, None, {"runs": [labels[0]]}]))}
    if draw(st.booleans()):
        studies["random_deletion"] = {"k_max": draw(st.integers(1, 3)), "draws": draw(st.integers(1, 10**6))}
    if draw(st.booleans()):
        studies["reorder"] = {"k_max": draw(st.integers(1, 2)), "draws": draw(st.integers(1, 5))}
    if residual and draw(st.booleans()):
        studies["gradients"] = {"draws": draw(st.integers(1, 5)), "runs": [draw(st.sampled_from(residual))],
                                "batch_size": draw(st.integers(1, 256))}
    studies["evaluators"] = draw(st.sampled_from([{"count": 1, "cpu": 1}, {"count": 4, "gpu": 0.25}, {}]))
    studies["precision"] = draw(st.sampled_from(["auto", "fp32", "bf16"]))
    if draw(st.booleans()):
        studies["test_examples"] = draw(st.integers(1, 10**7))
    name = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True))
    return {"name": name, "data": {"dataset": "digits"}, "training": training, "studies": studies}


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_specs(), st.booleans(), st.booleans())
def test_valid_spec_round_trips_through_yaml(raw, flow, sort_keys):
    spec = parse_spec(raw)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_text(yaml.safe_dump(raw, default_flow_style=flow, sort_keys=sort_keys))
        loaded = load_spec(path)
    assert [t.run_id for t in loaded.training.trials] == [t.run_id for t in spec.training.trials]
    assert loaded.studies == spec.studies
    assert (loaded.name, loaded.data, loaded.training) == (spec.name, spec.data, spec.training)
    assert loaded.path == str(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# -- what only the cluster can say -------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"studies": {"single_deletion": {}, "evaluators": {"count": 1, "gpu": 2}}},
     "studies.evaluators.gpu: asks for 0 CPU and 2 GPU per worker, and no node of the cluster has that"),
    ({"training": {**VALID["training"], "resources": {"cpu": 1, "gpu": 4}}},
     "training.resources.gpu: asks for 1 CPU and 4 GPU per worker"),
    ({"training": {**VALID["training"], "resources": {"cpu": 64}}},
     "training.resources.cpu: asks for 64 CPU and 0 GPU per worker"),
])
@pytest.mark.slow
def test_a_spec_asking_for_more_than_any_node_has_is_refused(change, message, ray_session, tmp_path, monkeypatch):
    """The session's Ray has one node with 2 CPUs and 1 (declared) GPU."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**VALID, **change}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {message}"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_yaml_merge_keys_are_a_valid_way_to_share_settings(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("""name: merged
training:
  iterations: 10
  runs:
    - &base {network: resnet20, label: a, overrides: {widths: [4, 8, 16]}}
    - <<: *base
      label: b
""")
    spec = load_spec(path)
    assert [t.label for t in spec.runs] == ["a", "b"] and spec.runs[1].net_config.widths == (4, 8, 16)
