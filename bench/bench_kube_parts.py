"""CPU of the per-run parts of a Kubernetes run, old way and new way, on the same machine state
(docs/scale.md, "10,000 concurrent Kubernetes runs"): what the end-to-end row (`bench_kube`)
cannot tell apart on a shared 2-core machine.

    .venv/bin/python -m bench.bench_kube_parts [--n 2000]

* create: N Job creations against the emulator, one at a time — lightkube's model round trip
  (`Job.from_dict`, then the answer decoded into a `Job` and `to_dict`-ed, as `Kube.create_job`
  did) against the plain-dict POST (`Kube.create_job` now); jobwire's CPU per creation.
* decode: the watch lines of a finished Job and of its pod, as the emulator sends them, decoded
  N times — lightkube's watch decoding (a model per event) + `to_dict` + `slim` against
  `decode_event`.

Rounds alternate old and new; the best of each is reported (the least disturbed by other load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from lightkube import AsyncClient, KubeConfig
from lightkube.core import decoders
from lightkube.resources.batch_v1 import Job as KJob
from lightkube.resources.core_v1 import Pod as KPod

from bench.bench_kube import emulator
from jobwire.model import KubernetesTarget as KubeSpec
from jobwire.targets.kubernetes import build
from jobwire.targets.kubernetes.client import Kube
from jobwire.targets.kubernetes.watch import decode_event, slim


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _manifest(i: int, prefix: str) -> dict[str, Any]:
    spec = KubeSpec.model_validate({"type": "kubernetes", "image": "lab/fan:sleep-0", "cpu_request": "100m"})
    info = build.RunInfo(
        job="fan", run_id=f"{prefix}{i}", target_name=f"{prefix}{i}", attempt=1, event_id=f"ev{i}"
    )
    return build.from_short_spec(spec, info)


async def _creates(kubeconfig: Path, n: int, rounds: int) -> tuple[float, float]:
    config = KubeConfig.from_file(kubeconfig).get()
    kube = Kube(config)
    lk = AsyncClient(config, field_manager="jobwire", trust_env=False)
    old: list[float] = []
    new: list[float] = []
    try:
        for r in range(rounds):
            manifests = [_manifest(i, f"old{r}-") for i in range(n)]
            c0 = _cpu()
            for m in manifests:
                job = KJob.from_dict({**m, "metadata": {**m["metadata"], "namespace": "default"}})
                (await lk.create(job)).to_dict()
            old.append((_cpu() - c0) / n)
            manifests = [_manifest(i, f"new{r}-") for i in range(n)]
            c0 = _cpu()
            for m in manifests:
                await kube.create_job("default", m)
            new.append((_cpu() - c0) / n)
    finally:
        await kube.close()
        await lk.close()
    return min(old), min(new)


def _watch_lines(url: str, kubeconfig: Path) -> list[tuple[bytes, type]]:
    """The watch lines of one finished Job and of its pod (with their model classes)."""
    lines: list[tuple[bytes, type]] = []

    async def make() -> None:
        kube = Kube(KubeConfig.from_file(kubeconfig).get())
        try:
            await kube.create_job("default", _manifest(0, "watched-"))
        finally:
            await kube.close()

    with httpx.Client(base_url=url, timeout=30) as c:
        for what in ("apis/batch/v1", "api/v1"):
            plural = "jobs" if "batch" in what else "pods"
            if plural == "jobs":
                asyncio.run(make())
            params = {"watch": "1", "labelSelector": build.LABEL_RUN, "resourceVersion": "0"}
            deadline = time.monotonic() + 20
            with c.stream("GET", f"/{what}/namespaces/default/{plural}", params=params) as resp:
                for line in resp.iter_lines():
                    if line:
                        lines.append((line.encode(), KJob if plural == "jobs" else KPod))
                        obj = json.loads(line)["object"]
                        phase = (obj.get("status") or {}).get("phase")
                        if build.finished(obj.get("status")) or phase == "Succeeded":
                            break
                    if time.monotonic() > deadline:
                        break
    return lines


def _decode(lines: list[tuple[bytes, type]], n: int, rounds: int) -> tuple[float, float, int]:
    def old(line: bytes, res: type) -> dict[str, Any]:
        event = decoders.decode_watch_event(line)
        return slim(decoders.decode_object(event.object, res).to_dict())

    old_t: list[float] = []
    new_t: list[float] = []
    total = n * len(lines)
    for _ in range(rounds):
        c0 = _cpu()
        for _ in range(n):
            for line, res in lines:
                old(line, res)
        old_t.append((_cpu() - c0) / total)
        c0 = _cpu()
        for _ in range(n):
            for line, _ in lines:
                decode_event(line)
        new_t.append((_cpu() - c0) / total)
    return min(old_t), min(new_t), len(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("JOBWIRE_LOG_LEVEL", "warning")
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-kube-parts-") as d, emulator(Path(d)) as (url, kc):
        old, new = asyncio.run(_creates(kc, args.n, args.rounds))
        print(f"create, CPU per Job: model round trip {old * 1e6:.0f} µs, plain dict {new * 1e6:.0f} µs")
        lines = _watch_lines(url, kc)
    old_d, new_d, k = _decode(lines, args.n, args.rounds)
    print(
        f"watch event decode ({k} lines: a finished Job, its pod), CPU per event: model + to_dict + slim "
        f"{old_d * 1e6:.1f} µs, decode_event {new_d * 1e6:.1f} µs"
    )


if __name__ == "__main__":
    main()
