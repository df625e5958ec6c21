"""The result tables of one experiment, read from disk, with the facts analysis needs per run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workloads.models import NetConfig, build_network

from .. import store


@dataclass
class Results:
    out: Path
    runs: pd.DataFrame
    epochs: pd.DataFrame
    lesion: pd.DataFrame
    gradients: pd.DataFrame
    errors: pd.DataFrame
    spec: dict

    @classmethod
    def load(cls, out: str | Path) -> "Results":
        out = Path(out)
        spec_file = out / "spec.json"
        spec = json.loads(spec_file.read_text())["spec"] if spec_file.exists() else {}
        return cls(out, store.read_table(out, "runs"), store.read_table(out, "epochs"), store.read_parts(out, "lesion"),
                   store.read_parts(out, "gradients"), store.read_parts(out, "errors"), spec)

    def run(self, run_id: str) -> pd.Series:
        return self.runs.set_index("run_id").loc[run_id]

    def downsampling_blocks(self, run_id: str) -> list[int]:
        net = build_network(NetConfig.from_json(self.run(run_id)["net_config"]))
        return [i.index for i in net.block_infos() if i.changes_shape]

    def is_plain(self, run_id: str) -> bool:
        return NetConfig.from_json(self.run(run_id)["net_config"]).arch == "plain"

    def intact_error(self, run_id: str) -> float:
        rows = self.lesion[(self.lesion["run_id"] == run_id) & (self.lesion["study"] == "intact")]
        return float(rows["error"].iloc[0]) if len(rows) else float(self.run(run_id)["test_error"])

    def study(self, name: str) -> pd.DataFrame:
        return self.lesion[self.lesion["study"] == name] if len(self.lesion) else self.lesion

    def title(self, run_id: str) -> str:
        r = self.run(run_id)
        return f"{r['label']} ({r['mode'].replace('_', ' ')}, seed {r['seed']}) on {r['dataset']}"

    @property
    def dataset(self) -> str:
        return str(self.runs["dataset"].iloc[0]) if len(self.runs) else "?"

    @property
    def num_classes(self) -> int:
        return NetConfig.from_json(self.runs["net_config"].iloc[0]).num_classes if len(self.runs) else 10
