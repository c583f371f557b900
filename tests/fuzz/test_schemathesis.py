"""schemathesis, a fuzzer no one here wrote, against the live service's own OpenAPI schema.

The service runs as users run it (`python -m service`, a real uvicorn) on a volume where every
step but the last is published, so that both a prediction and "not trained yet" are reachable,
with API keys on: schemathesis is given one, and its `ignored_auth` check sends none.
schemathesis runs every phase (examples, coverage, fuzzing, stateful) with all of its checks;
the configuration, and each finding fixed or justified, are in tests/fuzz/schemathesis.toml.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import volume
from tests.conftest import ROOT
from tests.servers import serve
from tests.service.conftest import KEYS, publish, random_model

CONFIG = Path(__file__).with_name("schemathesis.toml")


def schemathesis_command() -> list[str]:
    found = Path(sys.executable).with_name("schemathesis")
    return [str(found)] if found.exists() else [shutil.which("schemathesis") or "schemathesis"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    for number, step in enumerate(volume.STEP_SLUGS[:-1]):
        publish(models_dir, step, random_model(number), accuracy=90.0 + number / 10)
    env = os.environ | {"MODELS_DIR": str(models_dir), "PYTHONPATH": str(ROOT)}
    env |= {"API_KEYS": ",".join(KEYS)}
    command = [sys.executable, "-m", "service"]
    log = tmp_path / "service.log"
    with serve(lambda port: [*command, "--port", str(port)], env, ROOT, log) as (client, _):
        result = subprocess.run(
            [*schemathesis_command(), "--no-color", "--config-file", str(CONFIG), "run",
             f"{client.base_url}/openapi.json", "--checks", "all",
             "--header", f"Authorization: Bearer {KEYS[0]}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800,
        )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and generated.group(1) == generated.group(2), report[-3000:]
    assert int(generated.group(1)) > 100, report[-3000:]  # it really ran
    # It reached the real logic: predictions answered, not only 404s and 422s.
    served = log.read_text()
    assert len(re.findall(r'"POST /predict/\S+ HTTP/1.1" 200', served)) >= 10, served[-3000:]
    assert re.search(r'"GET /steps/\S+/(summary|metrics)\S* HTTP/1.1" 200', served)
