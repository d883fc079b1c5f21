"""The health and readiness judgements (count/cluster/health.py): pure inputs to verdicts."""

from __future__ import annotations

import pytest

from count.cluster.health import NodeState, health, readiness


def state(alive: int = 3, members: int = 3, down: tuple[str, ...] = (),
          storage: str | None = None, syncing: bool = False) -> NodeState:
    return NodeState(alive=alive, members=members, down=down, storage_problem=storage,
                     syncing=syncing)


def test_all_alive_and_writable_is_healthy_and_ready() -> None:
    assert health(state()).status == "healthy" and health(state()).reasons == ()
    assert readiness(state()).status == "ready" and readiness(state()).reasons == ()
    single = state(alive=1, members=1)
    assert health(single).status == "healthy" and readiness(single).status == "ready"


def test_a_majority_with_some_down_is_degraded_but_ready() -> None:
    s = state(alive=2, down=("node 3 (h:3)",))
    assert health(s).status == "degraded"
    assert health(s).reasons == ("node 3 (h:3) is down",)
    assert readiness(s).status == "ready"


@pytest.mark.parametrize(("alive", "members"), [(1, 3), (2, 4), (2, 5), (1, 2)])
def test_less_than_a_majority_is_unhealthy_and_not_ready(alive: int, members: int) -> None:
    s = state(alive=alive, members=members, down=("x",) * (members - alive))
    needed = members // 2 + 1
    for verdict, bad in ((health(s), "unhealthy"), (readiness(s), "not_ready")):
        assert verdict.status == bad
        assert verdict.reasons[0] == (
            f"network partition: this node sees {alive} of {members} members alive, "
            f"fewer than a majority ({needed}), so it refuses writes")


def test_storage_not_writable_is_unhealthy_even_with_every_member_alive() -> None:
    s = state(storage="storage is not writable: disk full")
    assert health(s).status == "unhealthy"
    assert health(s).reasons == ("storage is not writable: disk full",)
    assert readiness(s) == health(s).__class__("not_ready", ("storage is not writable: disk full",))


def test_both_problems_are_both_reported_then_the_down_members() -> None:
    s = state(alive=1, down=("node 2 (h:2)", "node 3 (h:3)"), storage="disk full")
    reasons = health(s).reasons
    assert reasons[0].startswith("network partition") and reasons[1] == "disk full"
    assert reasons[2:] == ("node 2 (h:2) is down", "node 3 (h:3) is down")
    assert readiness(s).reasons == reasons[:2]


def test_catching_up_is_neither_unhealthy_nor_unready() -> None:
    s = state(syncing=True)
    assert health(s).status == "healthy" and readiness(s).status == "ready"
