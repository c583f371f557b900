"""The virtual environments of `bench/peers.py`'s peers: one each, made once and reused.

Each peer (a serving framework, or the tutorial app) runs from its own venv, so that nothing of
theirs leaks into the project's (BentoML and TorchServe bring dozens of packages, TorchServe
torch itself). The venvs live outside the work tree, under $PEER_VENVS (default
~/.cache/mnist-steps/peers/<peer>), and each records the requirements it was made with: a venv
whose record matches is reused as it is; one whose record differs gets the new requirements
installed over it; one without a record (never finished) is made again from scratch. The packages
both sides share (onnxruntime, Pillow, numpy) are pinned to the project venv's versions, so
that only the framework differs.

    python bench/peer_venvs.py [PEER ...]   # make (or check) them; prints each venv's python
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

RECORD = "mnist-steps-requirements.txt"  # in the venv: the requirements it was made with
TORCH = "torch==2.14.1"  # what pip takes from this machine's disk (the guide's pin)


def ours(package: str) -> str:
    """`package==VERSION` as installed in the project's venv (this interpreter)."""
    return f"{package}=={importlib.metadata.version(package)}"


def requirements(peer: str) -> list[str]:
    """What `pip install` gets for each peer's venv."""
    shared = [ours("onnxruntime"), ours("pillow"), ours("numpy")]
    if peer == "tutorial":  # the stack a blog post uses, at the versions we serve with
        uvicorn = f"uvicorn[standard]=={importlib.metadata.version('uvicorn')}"
        return [ours("fastapi"), uvicorn, ours("python-multipart"), *shared]
    if peer == "litserve":
        return ["litserve==0.2.19", ours("python-multipart"), *shared]  # it reads forms with it
    if peer == "bentoml":
        return ["bentoml==1.4.40", *shared]
    if peer == "torchserve":
        # TorchServe's worker imports torch even to serve ONNX, and yaml, which its wheel does
        # not require; its ONNX support needs psutil. Our preprocessing needs pydantic
        # (service.images imports the volume's constants).
        serve = ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml", "psutil"]
        return [TORCH, *serve, "pydantic", *shared]
    raise ValueError(f"unknown peer {peer!r}")


PEERS = ("tutorial", "litserve", "bentoml", "torchserve")


def venvs_dir() -> Path:
    return Path(os.environ.get("PEER_VENVS", Path.home() / ".cache/mnist-steps/peers"))


def venv(peer: str, log: Path | None = None) -> Path:
    """The venv of `peer`, made now if it is missing or was made with other requirements."""
    wanted = "\n".join(requirements(peer)) + "\n"
    root = venvs_dir() / peer
    record = root / RECORD
    complete = record.exists() and (root / "bin/python").exists()
    if complete and record.read_text() == wanted:
        return root
    if complete:
        print(f"updating the {peer} venv in {root}", file=sys.stderr, flush=True)
        record.unlink()  # until pip has finished
    else:
        print(f"making the {peer} venv in {root} (once; minutes)", file=sys.stderr, flush=True)
        shutil.rmtree(root, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)  # not the project venv's python
        subprocess.run([base, "-m", "venv", str(root)], check=True)
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"  pip's output goes to {log}", file=sys.stderr, flush=True)
    output = open(log, "ab") if log else None  # noqa: SIM115 (closed below)
    try:
        subprocess.run(
            [str(root / "bin/python"), "-m", "pip", "install", "-q", *requirements(peer)],
            check=True,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            timeout=3600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        shutil.rmtree(root, ignore_errors=True)  # half a venv is never reused
        raise
    finally:
        if output:
            output.close()
    record.write_text(wanted)  # last: only a complete venv has its record
    return root


if __name__ == "__main__":
    for name in sys.argv[1:] or PEERS:
        print(venv(name) / "bin/python")
