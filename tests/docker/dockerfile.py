"""Read what the Dockerfiles say, without a Docker engine: instructions, stages, the final
stage's ENV, ENTRYPOINT and CMD, and the .dockerignore's verdict on a path."""

from __future__ import annotations

import fnmatch
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

DOCKER_DIR = ROOT / "docker"
TRAINER_DOCKERFILE = DOCKER_DIR / "trainer.Dockerfile"
SERVICE_DOCKERFILE = DOCKER_DIR / "service.Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
E2E_COMPOSE_FILE = ROOT / "tests" / "docker" / "compose.e2e.yml"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest, continuation lines joined
    line: int  # 1-based line of the keyword


@dataclass
class Stage:
    base: str  # FROM's image, ${...} unexpanded
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                key, _, value = word.partition("=")
                env[key] = value
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT or CMD as an argv; only the exec (JSON) form is accepted."""
        instruction = self.last(keyword)
        if instruction is None:
            return []
        argv = json.loads(instruction.args)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), instruction
        return argv


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    global_args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def argv(self) -> list[str]:
        """What the image runs by default: ENTRYPOINT + CMD."""
        return self.final.exec_form("ENTRYPOINT") + self.final.exec_form("CMD")


def parse_dockerfile(path: Path) -> Dockerfile:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, f"{path}: the last instruction ends with a backslash"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path}:{instruction.line}: before FROM"
            key, _, value = instruction.args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path, instructions, global_args, stages)


def dockerignored(relative: str, patterns: list[str] | None = None) -> bool:
    """Whether Docker leaves ``relative`` (a path in the build context) out of the context.

    Docker's rules: patterns in order, the last one that matches the path or one of its parent
    folders wins, ``!`` re-includes, ``**`` matches any number of folders.
    """
    if patterns is None:
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        if any(_match(body, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def _match(pattern: str, path: str) -> bool:
    if pattern.startswith("**/"):
        rest = pattern[3:]
        segments = path.split("/")
        return any(_match(rest, "/".join(segments[i:])) for i in range(len(segments)))
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    if len(pattern_parts) != len(path_parts):
        return False
    return all(fnmatch.fnmatchcase(s, p) for p, s in zip(pattern_parts, path_parts, strict=True))
