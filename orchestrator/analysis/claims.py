"""Every claim the report tests, in the report's order, and the shipped spec that runs each one."""
from __future__ import annotations

from orchestrator.analysis.claim import Claim
from orchestrator.analysis.effective_paths import t1_claim
from orchestrator.analysis.highway import h_claim
from orchestrator.analysis.identity_mappings import im_shortcuts, im_units
from orchestrator.analysis.proxy_claims import p1
from orchestrator.analysis.results import Results
from orchestrator.analysis.task_claims import p2, p3, p4
from orchestrator.analysis.veit_claims import f3_plain, f3_resnet, f5a, f5b, f6, f6a, f7, f8

# the shipped digits spec that runs each claim: a report names it for every claim it leaves "not run"
DEMO_SPEC = "experiments/digits.yaml"  # what make demo runs
IM_SPEC = "experiments/identity-mappings-digits.yaml"
LLM_SPEC = "experiments/llm-layer-deletion.yaml"  # a local language model's lesion and tasks studies
RUN_BY = {"F3-resnet": DEMO_SPEC, "F3-plain": DEMO_SPEC, "F5a": DEMO_SPEC, "F5b": DEMO_SPEC, "F6a": DEMO_SPEC,
          "F6b": DEMO_SPEC, "F6c": DEMO_SPEC, "F7": DEMO_SPEC, "F8": DEMO_SPEC, "T1": IM_SPEC, "H": IM_SPEC,
          "IM-units": IM_SPEC, "IM-shortcuts": IM_SPEC, "P1": DEMO_SPEC, "P2": LLM_SPEC, "P3": LLM_SPEC, "P4": LLM_SPEC}


def left_to_other_specs(claims: list[Claim]) -> dict[str, str]:
    """Claim key -> the shipped spec that runs it, for the claims this experiment has no data for."""
    return {c.key: RUN_BY[c.key] for c in claims if c.verdict == "not run" and c.key in RUN_BY}

def all_claims(results: Results) -> list[Claim]:
    """Veit et al.'s claims, then T1, H, the Identity Mappings tables and the layer-pruning literature's (P1-P4)."""
    return [f3_resnet(results), f3_plain(results), f5a(results), f5b(results), f6a(results), *f6(results),
            f7(results), f8(results), t1_claim(results), h_claim(results), im_units(results), im_shortcuts(results),
            p1(results), p2(results), p3(results), p4(results)]
