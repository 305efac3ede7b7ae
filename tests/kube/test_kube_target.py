"""The kubernetes target driven through the engine, in-process, against the API emulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import CronJob
from lightkube.resources.batch_v1 import Job as KJob
from lightkube.resources.core_v1 import ConfigMap

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, Run, RunState, StatusDocument, event_run_key, run_id_for, utcnow
from jobwire.targets.kubernetes import KubernetesJobTarget, build
from tests.support.kubeemu import KubeEmulator
from tests.support.waiting import eventually

NS = "default"


def settings(tmp_path: Path, kubeconfig: Path, **kw: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "d",
        kubeconfig=kubeconfig,
        kube_namespace=NS,
        kube_cleanup_interval=timedelta(0),  # sweeps are run by the tests, with a chosen "now"
        shutdown_grace=timedelta(seconds=0.2),
        **kw,
    )


def kube_target(engine: Engine) -> KubernetesJobTarget:
    target = engine.targets["kubernetes"]
    assert isinstance(target, KubernetesJobTarget)
    return target


def bind(engine: Engine) -> None:
    async def run_exists(run_id: str) -> bool:
        return await engine.store.get_run(run_id) is not None

    kube_target(engine).bind(
        run_exists=run_exists, jobs=lambda: [s.job for s in engine.jobs.values()], registry=engine.registry
    )


@pytest.fixture
async def engine(kube_kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Engine]:
    eng = Engine(settings(tmp_path, kube_kubeconfig))
    bind(eng)
    await eng.start()
    yield eng
    await eng.stop()


@pytest.fixture
async def client(kube_kubeconfig: Path) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(KubeConfig.from_file(kube_kubeconfig))
    yield c
    await c.close()


def kjob(name: str, target: dict[str, Any], **kw: Any) -> Job:
    return Job.model_validate({"name": name, "target": {"type": "kubernetes", **target}, **kw})


async def finished(engine: Engine, run_id: str, timeout: float = 20) -> Run:
    async def check() -> Run | None:
        run = await engine.get_run(run_id)
        return run if run.state.terminal else None

    return await eventually(check, timeout, f"run {run_id} to finish")


async def state(engine: Engine, run_id: str, want: RunState, timeout: float = 20) -> Run:
    async def check() -> Run | None:
        run = await engine.get_run(run_id)
        return run if run.state == want else None

    return await eventually(check, timeout, f"run {run_id} to be {want.value}")


def jobs_of(kube: KubeEmulator, job: str) -> list[dict[str, Any]]:
    return [
        j
        for j in kube.control.objects("jobs", NS)
        if (j["metadata"].get("labels") or {}).get(build.LABEL_JOB) == job
    ]


def pods_of(kube: KubeEmulator, job_name: str) -> list[dict[str, Any]]:
    return [
        p for p in kube.control.objects("pods", NS) if p["metadata"]["labels"].get("job-name") == job_name
    ]


async def log_text(engine: Engine, run_id: str, follow: bool = False) -> str:
    return b"".join([c async for c in engine.run_log(run_id, follow)]).decode()


class Docs:
    """Status documents published for one run, in order."""

    def __init__(self, engine: Engine) -> None:
        self.docs: list[StatusDocument] = []
        self._it = engine.subscribe()
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for doc in self._it:
            self.docs.append(doc)

    def of(self, run_id: str) -> list[StatusDocument]:
        return [d for d in self.docs if d.run_id == run_id]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# --------------------------------------------------------------------------- short spec


async def test_short_spec_end_to_end_with_status_documents_in_order(
    engine: Engine, kube: KubeEmulator
) -> None:
    docs = Docs(engine)
    await engine.put_job(
        kjob(
            "spikes",
            {
                "image": "lab/spikes:1",
                "command": ["sh", "-c", 'echo "sorting $JOBWIRE_PARAM_FILE for $WHO"; echo "args: $0 $1"'],
                "args": ["{{file}}", "second"],
                "env": {"WHO": "lab-{{file}}"},
                "cpu_request": "500m",
                "memory_request": "1Gi",
                "gpu": 1,
                "disk_request": "5Gi",
                "memory_limit": "2Gi",
            },
            parameters=[{"name": "file", "required": True}],
            environment="test",
        )
    )
    adm = await engine.trigger("spikes", {"file": "a.csv"})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded, run.error
    name = build.job_name("spikes", run.id)
    assert run.target_ref == name
    assert build.condition(run.target_status, "Complete") is not None

    (kj,) = jobs_of(kube, "spikes")
    md = kj["metadata"]
    assert md["name"] == name
    assert md["labels"][build.LABEL_RUN] == run.id
    assert md["annotations"][build.ANN_EVENT] == run.event_id
    assert md["annotations"][build.ANN_ENVIRONMENT] == "test"
    (c,) = kj["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["ephemeral-storage"] == "5Gi"
    assert kj["spec"]["backoffLimit"] == 0
    assert kj["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    text = await log_text(engine, run.id)
    assert "sorting a.csv for lab-a.csv" in text and "args: a.csv second" in text

    await eventually(lambda: docs.of(run.id) and docs.of(run.id)[-1].action == "succeeded", 5, "final doc")
    seen = docs.of(run.id)
    await docs.close()
    actions = [d.action for d in seen]
    assert actions[0] == "pending" and actions[-1] == "succeeded"
    assert "running" in actions
    assert actions.index("running") < len(actions) - 1
    assert all(a in ("pending", "running", "succeeded") for a in actions)
    running = [d for d in seen if d.action == "running"]
    assert all(d.status.startTime is not None for d in running)
    final = seen[-1]
    assert final.status.succeeded == 1 and final.status.completionTime is not None
    assert final.status.startTime is not None and final.status.active == 0
    assert final.environment == "test" and final.event_id == run.event_id
    times = [d.time for d in seen]
    assert times == sorted(times)
    # the Job's final status is told once, by the run's end (not also as a running report before it)
    assert [d.action for d in seen if d.status.completionTime is not None] == ["succeeded"]


async def test_run_log_is_captured_and_survives_the_job(engine: Engine, kube: KubeEmulator) -> None:
    await engine.put_job(kjob("talk", {"image": "busybox", "command": ["sh", "-c", "echo one; echo two"]}))
    adm = await engine.trigger("talk", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded
    assert await log_text(engine, run.id) == "one\ntwo\n"  # from the pod
    await kube_target(engine).sweep(now=utcnow() + timedelta(hours=9))  # keeps 3: still there
    kube.control.fail_next("list", "pods", count=10, code=500)
    assert "one\ntwo\n" in await log_text(engine, run.id)  # the pod is unreachable: the copy jobwire kept


async def test_follow_logs_stream_while_the_pod_runs(
    engine: Engine, kube: KubeEmulator, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    script = f"echo first; while [ ! -f {flag} ]; do sleep 0.02; done; echo second"
    await engine.put_job(kjob("follow", {"image": "busybox", "command": ["sh", "-c", script]}))
    adm = await engine.trigger("follow", {})
    assert adm.run is not None
    await state(engine, adm.run.id, RunState.running)
    name = build.job_name("follow", adm.run.id)
    await eventually(
        lambda: any((p.get("status") or {}).get("phase") == "Running" for p in pods_of(kube, name)),
        10,
        "pod running",
    )
    got: list[bytes] = []
    stream = engine.run_log(adm.run.id, follow=True)

    async def read() -> None:
        async for chunk in stream:
            got.append(chunk)

    reader = asyncio.create_task(read())
    await eventually(lambda: b"first\n" in b"".join(got), 10, "first line")
    flag.write_text("")
    await asyncio.wait_for(reader, 10)
    assert b"".join(got) == b"first\nsecond\n"
    assert (await finished(engine, adm.run.id)).state == RunState.succeeded


# --------------------------------------------------------------------------- template


async def test_template_from_cronjob_end_to_end(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    """Seed 000: a file ENVIRONMENT/JOB-NAME/input.csv runs the batch job of that name in the namespace."""
    tmpl = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "ingest", "namespace": NS},
        "spec": {
            "schedule": "0 0 * * *",
            "suspend": True,
            "jobTemplate": {
                "metadata": {"labels": {"team": "data"}},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "ingest",
                                    "image": "lab/ingest:1",
                                    "command": ["sh", "-c", 'echo "ingesting $JOBWIRE_PARAM_INPUT ($STAGE)"'],
                                    "env": [{"name": "STAGE", "value": "raw"}],
                                }
                            ],
                        }
                    },
                },
            },
        },
    }
    await client.create(CronJob.from_dict(tmpl))
    await engine.put_job(
        kjob("ingest", {"template": "ingest"}, parameters=[{"name": "input"}], environment="test")
    )
    adm = await engine.trigger("ingest", {"input": "test/ingest/input.csv"})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded, run.error
    (kj,) = jobs_of(kube, "ingest")
    assert kj["metadata"]["labels"]["team"] == "data"
    assert kj["metadata"]["annotations"][build.ANN_TEMPLATE] == "CronJob/ingest"
    assert "ingesting test/ingest/input.csv (raw)" in await log_text(engine, run.id)


async def test_template_from_labelled_suspended_job(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    tmpl = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "report", "namespace": NS, "labels": {"jobwire.io/template": "true"}},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "c", "image": "x", "command": ["sh", "-c", "echo report $JOBWIRE_JOB"]}
                    ],
                }
            },
        },
    }
    await client.create(KJob.from_dict(tmpl))
    await engine.put_job(kjob("report", {"template": "report"}))
    adm = await engine.trigger("report", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded, run.error
    assert "report report" in await log_text(engine, run.id)
    assert kube.control.get("jobs", NS, "report") is not None  # the template itself is untouched
    assert not pods_of(kube, "report")  # and never ran


async def test_missing_template_fails_with_a_clear_reason(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    # a Job of that name without the template label is not a template
    plain = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "other", "namespace": NS},
        "spec": {
            "suspend": True,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}},
        },
    }
    await client.create(KJob.from_dict(plain))
    for tname in ("nosuch", "other"):
        await engine.put_job(kjob(f"j-{tname}", {"template": tname}))
        adm = await engine.trigger(f"j-{tname}", {})
        assert adm.run is not None
        run = await finished(engine, adm.run.id)
        assert run.state == RunState.failed
        assert run.error is not None and run.error.reason == "TemplateNotFound"
        assert f"no job template {tname!r} in namespace 'default'" in run.error.message
    assert not jobs_of(kube, "j-nosuch")


# --------------------------------------------------------------------------- adoption, restart


async def test_create_meeting_already_exists_adopts_the_job(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    job = kjob("adopt", {"image": "busybox:sleep-0.3"})
    await engine.put_job(job)
    run_id = run_id_for(event_run_key("adopt", "api", "evt-1"))
    info = build.RunInfo(job="adopt", run_id=run_id, target_name=run_id, attempt=1, event_id="e-earlier")
    manifest = build.from_short_spec(job.target, info)  # type: ignore[arg-type]
    manifest["metadata"]["namespace"] = NS
    await client.create(KJob.from_dict(manifest))  # as if a previous jobwire created it, then crashed
    adm = await engine.trigger("adopt", {}, idempotency_key="evt-1")
    assert adm.run is not None and adm.run.id == run_id
    run = await finished(engine, run_id)
    assert run.state == RunState.succeeded, run.error
    assert len(jobs_of(kube, "adopt")) == 1
    posts = [p for m, p in kube.control.requests() if m == "POST" and "/jobs" in p]
    assert len(posts) == 2  # ours above, then jobwire's, answered 409 AlreadyExists
    assert jobs_of(kube, "adopt")[0]["metadata"]["annotations"][build.ANN_EVENT] == "e-earlier"


async def test_shutdown_leaves_the_job_running_and_restart_adopts_it(
    kube: KubeEmulator, kube_kubeconfig: Path, tmp_path: Path
) -> None:
    eng = Engine(settings(tmp_path, kube_kubeconfig))
    await eng.start()
    flag = tmp_path / "go"
    await eng.put_job(
        kjob(
            "long",
            {"image": "busybox", "command": ["sh", "-c", f"while [ ! -f {flag} ]; do sleep 0.02; done"]},
        )
    )
    adm = await eng.trigger("long", {})
    assert adm.run is not None
    await state(eng, adm.run.id, RunState.running)
    await eng.stop()
    name = build.job_name("long", adm.run.id)
    assert kube.control.get("jobs", NS, name) is not None  # left running

    eng2 = Engine(settings(tmp_path, kube_kubeconfig))
    await eng2.start()
    try:
        assert (await eng2.get_run(adm.run.id)).state == RunState.running
        flag.write_text("")
        run = await finished(eng2, adm.run.id)
        assert run.state == RunState.succeeded, run.error
        assert len(jobs_of(kube, "long")) == 1
    finally:
        await eng2.stop()


# --------------------------------------------------------------------------- watch recovery


async def test_watch_drop_and_410_are_recovered(
    engine: Engine, kube: KubeEmulator, client: AsyncClient, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    await engine.put_job(
        kjob(
            "steady",
            {"image": "busybox", "command": ["sh", "-c", f"while [ ! -f {flag} ]; do sleep 0.02; done"]},
        )
    )
    adm = await engine.trigger("steady", {})
    assert adm.run is not None
    await state(engine, adm.run.id, RunState.running)
    watch = kube_target(engine).job_watch(NS)
    lists, expired = watch.lists, watch.expired

    # 1) a dropped connection: resumed from the last resourceVersion, no relist
    await eventually(lambda: kube.control.open_watches() >= 2, 10, "the Job watch and the Pod watch")
    await eventually(lambda: kube.control.drop_watches() >= 1, 10, "a watch dropped")
    await eventually(lambda: watch.reconnects >= 1, 10, "reconnect")
    await eventually(lambda: kube.control.open_watches() >= 2, 10, "watches re-opened")
    assert watch.lists == lists and watch.reconnects >= 1

    # 2) history compacted past our resourceVersion, then dropped: 410 Expired → relist
    await client.create(ConfigMap.from_dict({"metadata": {"name": "bump", "namespace": NS}, "data": {}}))
    kube.control.compact()
    kube.control.drop_watches()
    await eventually(lambda: watch.expired > expired and watch.lists > lists, 10, "410 and relist")

    # 3) what happens while nobody watches is not lost
    kube.control.pause_controller()
    kube.control.drop_watches()
    flag.write_text("")
    kube.control.compact()
    kube.control.resume_controller()
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded, run.error
    assert len(jobs_of(kube, "steady")) == 1


async def test_one_watch_per_namespace_for_many_runs(engine: Engine, kube: KubeEmulator) -> None:
    await engine.put_job(kjob("many", {"image": "busybox:sleep-0.5"}))
    ids = []
    for _ in range(20):
        adm = await engine.trigger("many", {})
        assert adm.run is not None
        ids.append(adm.run.id)
    for rid in ids:
        assert (await finished(engine, rid)).state == RunState.succeeded
    watches = [p for m, p in kube.control.requests() if m == "GET" and "watch=" in p]
    assert len([p for p in watches if "/jobs?" in p]) == 1
    assert len([p for p in watches if "/pods?" in p]) == 1


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("code", "reason"), [(403, "Forbidden"), (404, "NotFound"), (422, "Invalid")])
async def test_api_errors_land_in_the_run_error(
    engine: Engine, kube: KubeEmulator, code: int, reason: str
) -> None:
    await engine.put_job(kjob("denied", {"image": "busybox"}))
    kube.control.fail_next("create", "jobs", code=code, message=f"injected {code}")
    adm = await engine.trigger("denied", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed
    assert run.error is not None
    assert run.error.code == code and run.error.reason == reason
    assert f"injected {code}" in run.error.message and "create Job" in run.error.message
    assert not jobs_of(kube, "denied")


async def test_real_422_from_the_api_server(engine: Engine, kube: KubeEmulator) -> None:
    # an empty image is refused by the API server itself (not an injected fault)
    await engine.put_job(kjob("bad", {"image": " x"}))
    kube.control.fail_next("create", "jobs", code=422, reason="Invalid", message='Job.batch "x" is invalid')
    adm = await engine.trigger("bad", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.error is not None and run.error.code == 422 and run.error.reason == "Invalid"


async def test_image_pull_error_fails_after_the_grace(engine: Engine, kube: KubeEmulator) -> None:
    await engine.put_job(kjob("pull", {"image": "registry.local/pull-error:1", "image_pull_grace": "0.3s"}))
    adm = await engine.trigger("pull", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed
    assert run.error is not None and run.error.reason == "ImagePullBackOff"
    assert "pull-error" in run.error.message
    name = build.job_name("pull", adm.run.id)
    await eventually(
        lambda: kube.control.get("jobs", NS, name) is None and not pods_of(kube, name), 10, "gone"
    )
    events = [
        e for e in kube.control.objects("events", NS) if e.get("source", {}).get("component") == "jobwire"
    ]
    assert events and events[0]["reason"] == "JobwireImagePullTimeout"


async def test_backoff_limit_and_failure_reason(engine: Engine, kube: KubeEmulator) -> None:
    await engine.put_job(kjob("flaky", {"image": "lab/flaky:fail", "backoff_limit": 1}))
    adm = await engine.trigger("flaky", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed
    assert run.error is not None and run.error.reason == "BackoffLimitExceeded"
    assert run.error.code == 1 and "exited with code 1" in run.error.message
    assert run.target_status.get("failed") == 2
    assert len(pods_of(kube, build.job_name("flaky", run.id))) == 2


async def test_oom_killed(engine: Engine) -> None:
    await engine.put_job(kjob("hungry", {"image": "lab/hungry:oom", "memory_limit": "64Mi"}))
    adm = await engine.trigger("hungry", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.error is not None and run.error.reason == "OOMKilled" and run.error.code == 137


async def test_active_deadline_seconds(engine: Engine) -> None:
    await engine.put_job(kjob("slow", {"image": "lab/slow:sleep-30", "active_deadline_seconds": 1}))
    adm = await engine.trigger("slow", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed
    assert run.error is not None and run.error.reason == "DeadlineExceeded"


async def test_retry_makes_a_new_job_per_attempt(engine: Engine, kube: KubeEmulator) -> None:
    await engine.put_job(
        kjob("again", {"image": "lab/x:fail"}, retry={"max_attempts": 2, "backoff": "10ms", "jitter": 0})
    )
    adm = await engine.trigger("again", {})
    assert adm.run is not None
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed and run.attempt == 2
    names = sorted(j["metadata"]["name"] for j in jobs_of(kube, "again"))
    assert names == sorted([build.job_name("again", run.id), build.job_name("again", f"{run.id}-2")])
    assert {j["metadata"]["labels"][build.LABEL_ATTEMPT] for j in jobs_of(kube, "again")} == {"1", "2"}


async def test_job_deleted_by_someone_else_fails_the_run(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    await engine.put_job(kjob("victim", {"image": "lab/v:sleep-30"}))
    adm = await engine.trigger("victim", {})
    assert adm.run is not None
    await state(engine, adm.run.id, RunState.running)
    await client.delete(KJob, build.job_name("victim", adm.run.id), namespace=NS)
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed
    assert run.error is not None and run.error.reason == "JobDeleted" and "deleted" in run.error.message


# --------------------------------------------------------------------------- cancel


async def test_cancel_deletes_the_job_and_its_pods(engine: Engine, kube: KubeEmulator) -> None:
    await engine.put_job(kjob("cancel-me", {"image": "busybox", "command": ["sleep", "60"]}))
    adm = await engine.trigger("cancel-me", {})
    assert adm.run is not None
    await state(engine, adm.run.id, RunState.running)
    name = build.job_name("cancel-me", adm.run.id)
    await eventually(lambda: pods_of(kube, name), 10, "pod")
    run = await engine.cancel(adm.run.id)
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.cancelled
    deletes = [p for m, p in kube.control.requests() if m == "DELETE" and f"/jobs/{name}" in p]
    assert len(deletes) == 1 and "propagationPolicy=Background" in deletes[0]
    await eventually(
        lambda: kube.control.get("jobs", NS, name) is None and not pods_of(kube, name), 15, "gone"
    )


async def test_timeout_deletes_the_job(kube: KubeEmulator, kube_kubeconfig: Path, tmp_path: Path) -> None:
    eng = Engine(settings(tmp_path, kube_kubeconfig))
    await eng.start()
    try:
        await eng.put_job(kjob("late", {"image": "lab/late:sleep-30"}, timeout="0.5s"))
        adm = await eng.trigger("late", {})
        assert adm.run is not None
        run = await finished(eng, adm.run.id)
        assert run.state == RunState.timed_out
        name = build.job_name("late", adm.run.id)
        await eventually(lambda: kube.control.get("jobs", NS, name) is None, 10, "job deleted")
    finally:
        await eng.stop()


# --------------------------------------------------------------------------- cleanup


async def test_cleanup_keeps_newest_n_and_deletes_old_finished_with_pods(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    await engine.put_job(kjob("batch", {"image": "busybox", "cleanup_min": 2}))
    ids = []
    for _ in range(5):
        adm = await engine.trigger("batch", {})
        assert adm.run is not None
        assert (await finished(engine, adm.run.id)).state == RunState.succeeded
        ids.append(adm.run.id)
    names = [build.job_name("batch", i) for i in ids]
    # a resource labelled with an old run, and one unrelated
    for i, rid in ((0, ids[0]), (4, ids[4])):
        await client.create(
            ConfigMap.from_dict(
                {
                    "metadata": {"name": f"cm-{i}", "namespace": NS, "labels": {build.LABEL_RUN: rid}},
                    "data": {},
                }
            )
        )
    # one running Job, older than everything, is never deleted by the cleanup
    await engine.put_job(kjob("batch-long", {"image": "lab/x:sleep-30", "cleanup_min": 0}))
    adm = await engine.trigger("batch-long", {})
    assert adm.run is not None
    await state(engine, adm.run.id, RunState.running)
    target = kube_target(engine)

    res = await target.sweep()  # nothing is past the TTL yet
    assert res.deleted_jobs == [] and not res.errors
    res = await target.sweep(now=utcnow() + timedelta(hours=9))
    assert sorted(res.deleted_jobs) == sorted(names[:3])
    assert res.deleted_configmaps == ["cm-0"]
    left = {j["metadata"]["name"] for j in jobs_of(kube, "batch")}
    assert left == set(names[3:])
    await eventually(lambda: not any(pods_of(kube, n) for n in names[:3]), 10, "pods of deleted jobs gone")
    assert all(pods_of(kube, n) for n in names[3:])
    assert kube.control.get("configmaps", NS, "cm-4") is not None
    assert jobs_of(kube, "batch-long")
    metrics = engine.registry.get_sample_value("jobwire_kube_cleanup_deleted_total", {"kind": "job"})
    assert metrics == 3
    assert engine.registry.get_sample_value("jobwire_kube_cleanup_sweeps_total", {"result": "ok"}) == 2


async def test_cleanup_default_keep_is_cleanup_min(
    kube: KubeEmulator, kube_kubeconfig: Path, tmp_path: Path
) -> None:
    eng = Engine(settings(tmp_path, kube_kubeconfig, kube_cleanup_min=1, kube_cleanup_ttl=timedelta(hours=1)))
    bind(eng)
    await eng.start()
    try:
        await eng.put_job(kjob("few", {"image": "busybox"}))
        for _ in range(3):
            adm = await eng.trigger("few", {})
            assert adm.run is not None
            await finished(eng, adm.run.id)
        res = await kube_target(eng).sweep(now=utcnow() + timedelta(minutes=61))
        assert len(res.deleted_jobs) == 2 and len(jobs_of(kube, "few")) == 1
    finally:
        await eng.stop()


async def test_orphans_are_recorded_then_removed_after_the_ttl(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    orphan = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "ghost-0123456789",
            "namespace": NS,
            "labels": {build.LABEL_JOB: "ghost", build.LABEL_RUN: "r-not-a-run-of-ours"},
        },
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}
        },
    }
    await client.create(KJob.from_dict(orphan))
    await eventually(
        lambda: build.finished((kube.control.get("jobs", NS, "ghost-0123456789") or {}).get("status")),
        10,
        "done",
    )
    target = kube_target(engine)
    res = await target.sweep()
    assert res.orphans == ["ghost-0123456789"] and res.deleted_orphans == []
    assert engine.registry.get_sample_value("jobwire_kube_orphan_jobs") == 1
    res = await target.sweep(now=utcnow() + timedelta(hours=9))
    assert res.deleted_orphans == ["ghost-0123456789"]
    await eventually(lambda: kube.control.get("jobs", NS, "ghost-0123456789") is None, 10, "orphan deleted")
    res = await target.sweep()
    assert engine.registry.get_sample_value("jobwire_kube_orphan_jobs") == 0


async def test_not_configured_fails_runs_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    eng = Engine(Settings(data_dir=tmp_path / "d", kube_cleanup_interval=timedelta(0)))
    await eng.start()
    try:
        await eng.put_job(kjob("nowhere", {"image": "busybox"}))
        adm = await eng.trigger("nowhere", {})
        assert adm.run is not None
        run = await finished(eng, adm.run.id)
        assert run.error is not None and run.error.reason == "KubernetesUnavailable"
        assert "KUBECONFIG" in run.error.message
    finally:
        await eng.stop()


# --------------------------------------------------------------------------- the examples


async def test_examples_run_against_the_emulator(
    engine: Engine, kube: KubeEmulator, client: AsyncClient
) -> None:
    from jobwire.jobfile import load_path

    examples = Path(__file__).resolve().parents[2] / "examples"
    # the template the example's comment tells the user to apply
    await client.create(
        CronJob.from_dict(
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "ingest", "namespace": NS},
                "spec": {
                    "schedule": "0 0 1 1 *",
                    "suspend": True,
                    "jobTemplate": {
                        "spec": {
                            "backoffLimit": 0,
                            "template": {
                                "spec": {
                                    "restartPolicy": "Never",
                                    "containers": [
                                        {
                                            "name": "ingest",
                                            "image": "busybox",
                                            "command": [
                                                "sh",
                                                "-c",
                                                "echo ingesting $JOBWIRE_PARAM_INPUT_LOCATION",
                                            ],
                                        }
                                    ],
                                }
                            },
                        }
                    },
                },
            }
        )
    )
    for file, params in (
        ("kubernetes-template.yaml", {"input_location": "test/ingest/input.csv"}),
        ("kubernetes-short-spec.yaml", {"uuid": "2023-05-01-e-test"}),
    ):
        ((job, _),) = load_path(examples / file)
        await engine.put_job(job)
        adm = await engine.trigger(job.name, params)
        assert adm.run is not None
        run = await finished(engine, adm.run.id)
        assert run.state == RunState.succeeded, (file, run.error)
    (ingest,) = jobs_of(kube, "ingest")
    assert ingest["metadata"]["annotations"][build.ANN_ENVIRONMENT] == "test"
    (sort,) = jobs_of(kube, "spike-sort")
    (c,) = sort["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"] == {
        "cpu": "4",
        "memory": "16Gi",
        "ephemeral-storage": "40Gi",
        "nvidia.com/gpu": "1",
    }
    assert c["args"] == ["--uuid", "2023-05-01-e-test"]
