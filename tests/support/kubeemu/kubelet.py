"""Pod runtime ("kubelet"): runs containers as local processes or by image rules, serves their logs.

Image rules (used when ``command[0]`` is not on the local PATH, or there is no ``command``):

* image containing ``pull-error``   -> stays Pending, waiting reason ``ImagePullBackOff``
* tag ``fail``  (``img:fail``)      -> logs a line, exits 1 (reason ``Error``)
* tag ``oom``                       -> terminated, reason ``OOMKilled``, exit code 137
* tag ``sleep-N``                   -> runs N seconds (float allowed), exits 0
* tag ``exit-N``                    -> exits with code N
* anything else                     -> logs ``kubeemu: container NAME ran image IMAGE``, exits 0
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import ApiError
from .http import Response, StreamingResponse
from .resources import BY_PLURAL
from .store import Event, Obj, now_iso

if TYPE_CHECKING:
    from .server import KubeEmulator

PODS = BY_PLURAL["pods"]
NODE_NAME = "kubeemu-node"


@dataclass
class LogBuffer:
    lines: list[tuple[str, bytes]] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, data: bytes) -> None:
        self.lines.append((now_iso(), data))
        self._notify()

    def close(self) -> None:
        self.done = True
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    task: asyncio.Task[None] | None = None
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    stopping: bool = False


def _image_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


class Kubelet:
    def __init__(self, emu: KubeEmulator) -> None:
        self.emu = emu
        self.runs: dict[tuple[str, str], PodRun] = {}
        self.logs: dict[tuple[str, str, str], LogBuffer] = {}
        self.all_procs: set[asyncio.subprocess.Process] = set()
        emu.store.listeners.append(self._on_event)
        emu.registry.pod_is_active = self._is_active

    def _is_active(self, pod: Obj) -> bool:
        md = pod["metadata"]
        run = self.runs.get((md.get("namespace", ""), md["name"]))
        return run is not None and run.task is not None and not run.task.done()

    # ------------------------------------------------------------------ events
    def _on_event(self, ev: Event) -> None:
        if ev.plural != "pods":
            return
        md = ev.obj["metadata"]
        key = (md.get("namespace", ""), md["name"])
        if ev.type == "ADDED":
            phase = (ev.obj.get("status") or {}).get("phase", "Pending")
            if phase in ("Pending", "") and not md.get("deletionTimestamp"):
                run = PodRun(key[0], key[1], md["uid"])
                self.runs[key] = run
                run.task = asyncio.get_running_loop().create_task(self._run_pod(run))
        elif (
            ev.type == "MODIFIED"
            and md.get("deletionTimestamp")
            and not (ev.old or {}).get("metadata", {}).get("deletionTimestamp")
        ):
            existing = self.runs.get(key)
            grace = int(md.get("deletionGracePeriodSeconds") or 0)
            if existing is not None and existing.uid == md["uid"]:
                asyncio.get_running_loop().create_task(self._terminate(existing, grace, remove=True))
            else:
                self.emu.registry.remove_now(PODS, *key)
        elif ev.type == "DELETED":
            existing = self.runs.get(key)
            if existing is not None and existing.uid == md["uid"]:
                asyncio.get_running_loop().create_task(self._terminate(existing, 0, remove=False))
            for lk in [k for k in self.logs if k[:2] == key]:
                self.logs[lk].close()
                del self.logs[lk]

    async def _terminate(self, run: PodRun, grace: int, remove: bool) -> None:
        run.stopping = True
        for proc in list(run.procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        if run.task is not None and not run.task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(run.task), timeout=min(grace, 5) if run.procs else 0)
            for proc in list(run.procs.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if not run.task.done():
                run.task.cancel()
            with contextlib.suppress(BaseException):
                await run.task
        if self.runs.get((run.namespace, run.name)) is run:
            del self.runs[(run.namespace, run.name)]
        if remove:
            pod = self.emu.store.get("pods", run.namespace, run.name)
            if pod is not None and pod["metadata"]["uid"] == run.uid:
                self.emu.registry.remove_now(PODS, run.namespace, run.name)

    async def stop(self) -> None:
        runs = list(self.runs.values())
        for run in runs:
            for proc in list(run.procs.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(r.task for r in runs if r.task is not None), return_exceptions=True)
        for proc in self.all_procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(proc.wait(), 5)
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()  # close pipes while the loop is alive (no ResourceWarning at GC)
        self.all_procs.clear()

    # ------------------------------------------------------------------ status helpers
    def _set_status(self, run: PodRun, fn: Any) -> Obj | None:
        pod = self.emu.store.get("pods", run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return None
        return self.emu.registry.mutate(PODS, run.namespace, run.name, fn, status=True)

    # ------------------------------------------------------------------ running a pod
    async def _run_pod(self, run: PodRun) -> None:
        pod = self.emu.store.get("pods", run.namespace, run.name)
        if pod is None:
            return
        spec = pod.get("spec") or {}
        containers: list[Obj] = spec.get("containers") or []
        restart = spec.get("restartPolicy", "Always")
        now = now_iso()

        def scheduled(p: Obj) -> None:
            st = p.setdefault("status", {})
            st["phase"] = "Pending"
            st["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now},
            ]
            st["hostIP"] = "127.0.0.1"
            st["hostIPs"] = [{"ip": "127.0.0.1"}]
            st["startTime"] = now
            st["containerStatuses"] = [
                self._cstatus(c, {"waiting": {"reason": "ContainerCreating"}}) for c in containers
            ]

        if not spec.get("nodeName"):
            self.emu.registry.mutate(
                PODS, run.namespace, run.name, lambda p: p["spec"].__setitem__("nodeName", NODE_NAME)
            )
        self._set_status(run, scheduled)
        if any("pull-error" in str(c.get("image", "")) for c in containers):

            def backoff(p: Obj) -> None:
                for cs in p["status"]["containerStatuses"]:
                    if "pull-error" in cs["image"]:
                        cs["state"] = {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": f'Back-off pulling image "{cs["image"]}"',
                            }
                        }

            self._set_status(run, backoff)
            await asyncio.Event().wait()  # until deleted
            return
        started = now_iso()

        def running(p: Obj) -> None:
            st = p["status"]
            st["phase"] = "Running"
            st["podIP"] = "127.0.0.1"
            st["podIPs"] = [{"ip": "127.0.0.1"}]
            st["conditions"] = [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": started}
                for t in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ]
            st["containerStatuses"] = [
                self._cstatus(c, {"running": {"startedAt": started}}, ready=True) for c in containers
            ]

        self._set_status(run, running)
        results = await asyncio.gather(*(self._run_container(run, pod, c, restart) for c in containers))
        ok = all(code == 0 for code, _ in results)

        def finished(p: Obj) -> None:
            st = p["status"]
            st["phase"] = "Succeeded" if ok else "Failed"
            for cond in st.get("conditions", []):
                if cond["type"] in ("Ready", "ContainersReady", "PodReadyToStartContainers"):
                    cond["status"] = "False"
                    cond["lastTransitionTime"] = now_iso()
                    if cond["type"] != "PodReadyToStartContainers":
                        cond["reason"] = "PodCompleted"

        if not run.stopping:
            self._set_status(run, finished)

    def _cstatus(self, c: Obj, state: Obj, ready: bool = False, restarts: int = 0) -> Obj:
        return {
            "name": c.get("name"),
            "state": state,
            "lastState": {},
            "ready": ready,
            "restartCount": restarts,
            "image": c.get("image"),
            "imageID": f"docker.io/library/{c.get('image')}@sha256:" + "0" * 64,
            "containerID": f"containerd://{os.urandom(32).hex()}",
            "started": "running" in state,
        }

    def _env(self, pod: Obj, c: Obj) -> dict[str, str]:
        md = pod["metadata"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": md["name"],
            "HOME": os.environ.get("HOME", "/root"),
        }
        for e in c.get("env") or []:
            name = e.get("name")
            if not name:
                continue
            if "value" in e:
                env[name] = _expand(str(e["value"]), env)
                continue
            ref = e.get("valueFrom") or {}
            if "fieldRef" in ref:
                fp = ref["fieldRef"].get("fieldPath", "")
                env[name] = {
                    "metadata.name": md["name"],
                    "metadata.namespace": md.get("namespace", ""),
                    "metadata.uid": md["uid"],
                    "spec.nodeName": NODE_NAME,
                    "status.podIP": "127.0.0.1",
                }.get(fp, "")
            elif "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                cm = self.emu.store.get("configmaps", md.get("namespace", ""), r.get("name", ""))
                env[name] = ((cm or {}).get("data") or {}).get(r.get("key", ""), "")
        return env

    async def _run_container(self, run: PodRun, pod: Obj, c: Obj, restart: str) -> tuple[int, str]:
        name = c["name"]
        restarts = 0
        while True:
            buf = LogBuffer()
            old = self.logs.get((run.namespace, run.name, name))
            self.logs[(run.namespace, run.name, name)] = buf
            if old is not None:
                old.close()
            started = now_iso()
            try:
                code, reason = await self._exec(run, pod, c, buf)
            finally:
                buf.close()
            finished = now_iso()
            if run.stopping:
                return code, reason
            term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished}
            again = restart == "Always" or (restart == "OnFailure" and code != 0)

            def update(p: Obj, term: Obj = term, again: bool = again, restarts: int = restarts) -> None:
                for cs in p["status"].get("containerStatuses", []):
                    if cs["name"] != name:
                        continue
                    if again:
                        cs["lastState"] = {"terminated": {**term, "containerID": cs["containerID"]}}
                        cs["restartCount"] = restarts + 1
                        cs["state"] = {"running": {"startedAt": now_iso()}}
                    else:
                        cs["state"] = {"terminated": {**term, "containerID": cs["containerID"]}}
                        cs["ready"] = False
                        cs["started"] = False

            self._set_status(run, update)
            if not again:
                return code, reason
            restarts += 1
            await asyncio.sleep(min(0.05 * (2**restarts), 2.0))  # crash-loop back-off (a timer)

    async def _exec(self, run: PodRun, pod: Obj, c: Obj, buf: LogBuffer) -> tuple[int, str]:
        command: list[str] = [str(x) for x in c.get("command") or []]
        args: list[str] = [str(x) for x in c.get("args") or []]
        env = self._env(pod, c)
        if command and shutil.which(command[0], path=env["PATH"]):
            argv = [_expand(x, env) for x in command + args]
            cwd = c.get("workingDir") if c.get("workingDir") and os.path.isdir(c["workingDir"]) else None
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            run.procs[c["name"]] = proc
            self.all_procs.add(proc)
            completed = False
            try:
                assert proc.stdout is not None
                async for line in proc.stdout:
                    buf.append(line)
                rc = await proc.wait()
                completed = True
            finally:
                run.procs.pop(c["name"], None)
                if completed:
                    self.all_procs.discard(proc)
                else:  # cancelled (pod deleted, emulator stopping): reap it, drain its pipe
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(proc.communicate(), 5)
            if rc < 0:
                rc = 128 - rc
            return rc, "Completed" if rc == 0 else "Error"
        image = str(c.get("image", ""))
        tag = _image_tag(image)
        if tag == "fail":
            buf.append(f"kubeemu: container {c['name']} ran image {image} and failed\n".encode())
            return 1, "Error"
        if tag == "oom":
            return 137, "OOMKilled"
        m = re.fullmatch(r"exit-(\d+)", tag)
        if m:
            code = int(m.group(1))
            return code, "Completed" if code == 0 else "Error"
        m = re.fullmatch(r"sleep-(\d+(?:\.\d+)?)", tag)
        if m:
            buf.append(f"kubeemu: container {c['name']} sleeping {m.group(1)}s\n".encode())
            await asyncio.sleep(float(m.group(1)))
        buf.append(f"kubeemu: container {c['name']} ran image {image}\n".encode())
        return 0, "Completed"

    # ------------------------------------------------------------------ logs
    async def serve_logs(self, namespace: str, name: str, q: dict[str, str]) -> Response | StreamingResponse:
        pod = self.emu.store.get("pods", namespace, name)
        if pod is None:
            raise errors.not_found("", "pods", name)
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = q.get("container") or ""
        if not container:
            if len(names) != 1:
                raise errors.bad_request(
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(map(str, names))}]"
                )
            container = str(names[0])
        if container not in names:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        buf = self.logs.get((namespace, name, container))
        if buf is None:
            reason = "ContainerCreating"
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                if cs.get("name") == container and (cs.get("state") or {}).get("waiting"):
                    reason = cs["state"]["waiting"].get("reason", reason)
            if reason == "ImagePullBackOff":
                raise ApiError(
                    400,
                    f'container "{container}" in pod "{name}" is waiting to start: trying and '
                    "failing to pull image",
                    "BadRequest",
                )
            raise ApiError(
                400, f'container "{container}" in pod "{name}" is waiting to start: {reason}', "BadRequest"
            )
        timestamps = q.get("timestamps", "").lower() in ("1", "true")
        tail = int(q["tailLines"]) if q.get("tailLines", "").lstrip("-").isdigit() else None
        limit = int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None

        def fmt(entry: tuple[str, bytes]) -> bytes:
            ts, data = entry
            return (ts.replace("Z", ".000000000Z") + " ").encode() + data if timestamps else data

        start = 0 if tail is None or tail < 0 else max(0, len(buf.lines) - tail)
        if q.get("follow", "").lower() not in ("1", "true"):
            body = b"".join(fmt(e) for e in buf.lines[start:])
            if limit is not None:
                body = body[:limit]
            return Response(200, body, "text/plain")

        async def stream() -> AsyncIterator[bytes]:
            idx = start
            sent = 0
            while True:
                while idx < len(buf.lines):
                    chunk = fmt(buf.lines[idx])
                    idx += 1
                    if limit is not None:
                        chunk = chunk[: max(0, limit - sent)]
                    sent += len(chunk)
                    if chunk:
                        yield chunk
                    if limit is not None and sent >= limit:
                        return
                if buf.done:
                    return
                await buf.changed.wait()

        return StreamingResponse(200, stream(), "text/plain", is_watch=False)
