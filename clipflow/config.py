"""The workflow configuration: loaded from YAML, checked against the JSON schema, defaults filled in."""

from pathlib import Path

import yaml
from snakemake.utils import validate

SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"


def load_config(path: Path | str) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    validate(config, str(SCHEMA), set_default=True)
    return config
