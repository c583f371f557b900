"""The service runs where torch is not installed: importing it there must not even try."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# Run in a fresh interpreter: this test process has torch loaded by other tests.
BLOCK_TORCH_THEN_SERVE = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"the service imported {name}; it must run without torch")
        return None

sys.meta_path.insert(0, NoTorch())
sys.modules.pop("torch", None)

from fastapi.testclient import TestClient
from service.app import app

with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # an empty volume
    assert client.get("/steps").status_code == 200
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded
print("served without torch")
"""


def test_the_service_imports_and_serves_without_torch(tmp_path: Path) -> None:
    env = os.environ | {"MODELS_DIR": str(tmp_path / "empty"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH_THEN_SERVE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "served without torch" in result.stdout
