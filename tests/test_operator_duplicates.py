"""Two PracticeWriteback resources with the same practiceId, through the real API server.

Real: the testenv's kube-apiserver (creationTimestamp, status, Events, deletions), Kopf in-process,
the PMS simulator, the drivers (the `env` fixture and `operator` helper of `test_operator.py`).
Nothing is faked. The resource created first keeps managing the practice; the copy says so in its
status and an Event, runs no poller, and takes over once the first one is deleted.
"""

from __future__ import annotations

import pytest
from test_operator import Env, env, eventually, operator, polls_again  # noqa: F401 (env is a fixture)

pytestmark = pytest.mark.kube


async def test_a_second_resource_for_the_same_practice_is_refused_until_the_first_goes(
    env: Env,  # noqa: F811
) -> None:
    await env.secrets_for_examples()
    async with operator(env) as op:
        await env.create(env.example("lakeside-dental"))
        await env.wait_condition("lakeside-dental", "Ready", "True")
        copy = env.example("lakeside-dental")
        copy["metadata"]["name"] = "lakeside-dental-copy"
        await env.create(copy)
        c = await env.wait_condition(
            "lakeside-dental-copy", "Ready", "False", reason="DuplicatePracticeId"
        )
        assert (
            f"is already managed by {env.ns}/lakeside-dental, which was created first"
            in (c["message"])
        )
        assert op.engine.scheduler.kinds(f"{env.ns}/lakeside-dental-copy") == {}
        assert (await env.condition("lakeside-dental", "Ready") or {})["status"] == "True"

        async def warned() -> bool:
            return any(
                e.reason == "DuplicatePracticeId"
                and e.involved_object.name == "lakeside-dental-copy"
                and e.type == "Warning"
                for e in await env.events()
            )

        await eventually(warned, 15, "a Warning Event on the copy")

        await env.delete("lakeside-dental")
        await env.wait_condition("lakeside-dental-copy", "Ready", "True", timeout=30)
        assert len(op.engine.scheduler.kinds(f"{env.ns}/lakeside-dental-copy")) == 4
        env.sim.clear_requests("lakeside-dental")
        await polls_again(op, f"{env.ns}/lakeside-dental-copy", "patients")  # the copy now polls
        assert env.sim.requests("lakeside-dental")
