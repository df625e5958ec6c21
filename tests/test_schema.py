"""`unravel schema`: the JSON schema an editor checks a spec against agrees with the loader."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main

SPECS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_is_valid_against_the_schema(schema, path):
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


@pytest.mark.parametrize("change, where", [
    ({"studys": {}}, "studys"),
    ({"training": {"iterations": 0, "runs": [{"network": "resnet20"}]}}, "iterations"),
    ({"training": {"iterations": 10, "runs": [{"network": "resnet21"}]}}, "resnet21"),
    ({"training": {"iterations": 10, "runs": [{"network": "resnet20", "overrides": {"widths": [0]}}]}}, "widths"),
    ({"studies": {"precision": "fp16"}}, "fp16"),
])
def test_the_schema_refuses_what_the_loader_refuses(schema, change, where):
    spec = {"name": "x", "training": {"iterations": 10, "runs": [{"network": "resnet20"}]}, **change}
    with pytest.raises(jsonschema.ValidationError, match=where):
        jsonschema.validate(spec, schema)
