"""The RunPod worker's job-take loop (runpod_worker/handler.py: prompt_job_scaler): the SDK's real JobScaler, run
in-process with its local-test hooks (a job fetcher and a job handler of our own), takes the next job the moment one
ends instead of looking once a second while busy; concurrency, order and shutdown stay the SDK's.

The SDK's ``asyncio`` is swapped for one whose one-second "queue is full" sleeps are counted (and return at once), so
the tests count what the loop does instead of timing it."""

from __future__ import annotations

import asyncio
import types

import pytest
from runpod.serverless.modules import rp_scale
from runpod.serverless.modules.worker_state import JobsProgress

from .test_handler import handler_mod


@pytest.fixture
def counted_sleeps(monkeypatch):
    """The SDK module's asyncio, with sleeps of a second or more counted and cut short."""
    calls = []
    real_sleep = asyncio.sleep

    async def sleep(delay, *args, **kwargs):
        if delay >= 1:
            calls.append(delay)
            delay = 0
        return await real_sleep(delay, *args, **kwargs)

    proxy = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio) if not k.startswith("__")})
    proxy.sleep = sleep
    monkeypatch.setattr(rp_scale, "asyncio", proxy)
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    monkeypatch.setattr(rp_scale, "IS_LOCAL_TEST", True)
    JobsProgress().clear()
    yield calls
    JobsProgress().clear()


def _run(scaler_cls, n_jobs=4, concurrency=1):
    """Serve ``n_jobs`` jobs of 0.05 s; the events in order: ("take", id) / ("start", id) / ("end", id)."""
    events, queue = [], [{"id": f"job-{i}", "input": {}} for i in range(n_jobs)]
    scaler = None

    async def fetcher(session, how_many):
        taken, queue[:] = queue[:how_many], queue[how_many:]
        events.extend(("take", job["id"]) for job in taken)
        if not taken:
            await asyncio.sleep(0.01)
        return taken

    async def handler(session, config, job):
        events.append(("start", job["id"]))
        await asyncio.sleep(0.05)
        events.append(("end", job["id"]))
        if sum(1 for e in events if e[0] == "end") == n_jobs:
            scaler.kill_worker()

    async def main():
        nonlocal scaler
        scaler = scaler_cls({"handler": lambda job: None, "jobs_fetcher": fetcher, "jobs_handler": handler,
                             "concurrency_modifier": lambda current: concurrency})
        await asyncio.wait_for(asyncio.gather(scaler.get_jobs(None), scaler.run_jobs(None)), timeout=60)

    asyncio.run(main())
    return events


def test_the_sdk_loop_looks_once_a_second_while_busy(counted_sleeps):
    events = _run(rp_scale.JobScaler)
    assert [e for e in events if e[0] == "end"] == [("end", f"job-{i}") for i in range(4)]
    assert counted_sleeps  # the baseline the prompt loop removes: "Queue is full. Retrying soon." -> sleep(1)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_the_prompt_loop_takes_the_next_job_when_one_ends_and_keeps_the_concurrency(counted_sleeps, concurrency):
    events = _run(handler_mod.prompt_job_scaler(rp_scale.JobScaler), n_jobs=5, concurrency=concurrency)
    assert counted_sleeps == []  # never the one-second look
    assert sorted(e[1] for e in events if e[0] == "end") == [f"job-{i}" for i in range(5)]
    held = 0  # jobs taken and not ended: never more than the concurrency
    for kind, _ in events:
        held += {"take": 1, "end": -1}.get(kind, 0)
        assert 0 <= held <= concurrency
    takes = [i for i, e in enumerate(events) if e[0] == "take"]
    ends = [i for i, e in enumerate(events) if e[0] == "end"]
    # with one job at a time, every take after the first follows an end directly (nothing else happens between)
    if concurrency == 1:
        assert all(events[t - 1][0] == "end" for t in takes[1:]) and len(ends) == 5


def test_install_uses_the_prompt_loop_unless_turned_off(monkeypatch):
    monkeypatch.setattr(rp_scale, "JobScaler", rp_scale.JobScaler)  # restored after the test
    sdk = rp_scale.JobScaler
    monkeypatch.setenv("HPO_WORKER_PROMPT_TAKE", "0")
    assert handler_mod.install_prompt_take() is False and rp_scale.JobScaler is sdk
    monkeypatch.delenv("HPO_WORKER_PROMPT_TAKE")
    assert handler_mod.install_prompt_take() is True
    prompt = rp_scale.JobScaler
    assert issubclass(prompt, sdk) and prompt is not sdk and prompt.__name__ == "PromptJobScaler"
    assert handler_mod.install_prompt_take() is True and rp_scale.JobScaler is prompt  # once, not wrapped twice
