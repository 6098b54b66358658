"""Hole 8: a cancel lands inside a step (between transformer blocks), and a 202 always ends the job cancelled."""

from __future__ import annotations

import threading
import uuid

import pytest
import torch

from ltxserve.engine.contract import JobCancelled
from ltxserve.jobs.outcome import Outcome
from ltxserve.jobs.sqlite import SqliteJobStore
from ltxserve.jobs.store import Job
from ltxserve.protocol import QueueState


@pytest.fixture(scope="module")
def transformer():
    return _tiny_transformer()


def _tiny_transformer():
    from diffusers import LTXVideoTransformer3DModel

    from ltxserve.engine.models import TINY_TRANSFORMER

    torch.manual_seed(0)
    return LTXVideoTransformer3DModel(**TINY_TRANSFORMER).eval()


def _forward(transformer):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 2 * 4 * 4, 16, generator=g)
    text = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([500]),
                           encoder_attention_mask=torch.ones(1, 5), num_frames=2, height=4, width=4,
                           return_dict=False)[0]


def test_cancel_lands_between_transformer_blocks(transformer):
    from ltxserve.engine.cancel import cancel_between_blocks

    ran = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
             for i, b in enumerate(transformer.transformer_blocks)]
    asked = []

    def should_cancel() -> bool:  # true once five blocks ran: a cancel arriving in the middle of one step
        asked.append(len(ran))
        return len(ran) >= 5

    with pytest.raises(JobCancelled):
        with cancel_between_blocks(transformer, should_cancel, min_interval=0.0):
            _forward(transformer)
    assert ran == [0, 1, 2, 3, 4], ran  # stopped inside the forward, at the next block
    assert len(transformer.transformer_blocks) == 48
    # Hooks are gone afterwards: the same model runs whole, as before.
    ran.clear()
    reference = _forward(transformer)
    assert ran == list(range(48)) and torch.isfinite(reference).all()
    for h in hooks:
        h.remove()


def test_no_cancel_changes_nothing(transformer):
    from ltxserve.engine.cancel import cancel_between_blocks

    plain = _forward(transformer)
    with cancel_between_blocks(transformer, lambda: False, min_interval=0.0):
        hooked = _forward(transformer)
    assert torch.equal(plain, hooked)


def _running_job(store: SqliteJobStore) -> str:
    rid = str(uuid.uuid4())
    store.submit(Job(request_id=rid, endpoint_id="t/a/b", owner="t", app="a", input={}))
    assert store.claim_next("w", ["t/a/b"]).request_id == rid
    return rid


def test_a_202_cancel_ends_the_job_cancelled_even_if_the_result_comes_after(tmp_path):
    """The reported race: the worker finished the step loop, cancel got 202, then the result was written: the job
    completed OK. The store now decides: a job with a cancel request completes cancelled."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    rid = _running_job(store)
    assert store.request_cancel(rid) == "CANCELLATION_REQUESTED"
    store.complete(rid, Outcome.ok({"video": "made anyway"}))
    job = store.get(rid)
    assert job.state == QueueState.COMPLETED and job.error_type == "request_cancelled" and job.result is None
    assert job.status_code == 400


def test_cancel_and_completion_racing_agree(tmp_path):
    """Truly concurrent (a barrier releases both at once), many times: whenever the cancel was answered
    CANCELLATION_REQUESTED (202) the job ended cancelled; otherwise (ALREADY_COMPLETED) it ended OK."""
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    outcomes = {"CANCELLATION_REQUESTED": 0, "ALREADY_COMPLETED": 0}
    for _ in range(40):
        rid = _running_job(store)
        barrier = threading.Barrier(2)
        answer = {}

        def cancel():
            barrier.wait(5)
            answer["cancel"] = store.request_cancel(rid)

        def finish():
            barrier.wait(5)
            store.complete(rid, Outcome.ok({"ok": True}))

        threads = [threading.Thread(target=cancel), threading.Thread(target=finish)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        job = store.get(rid)
        outcomes[answer["cancel"]] += 1
        if answer["cancel"] == "CANCELLATION_REQUESTED":
            assert job.error_type == "request_cancelled", job
        else:
            assert answer["cancel"] == "ALREADY_COMPLETED" and job.error is None and job.result == {"ok": True}
    print("cancel/complete races:", outcomes)
    assert sum(outcomes.values()) == 40
