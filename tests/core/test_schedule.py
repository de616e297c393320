"""Schedule against a plain dict model, with hypothesis choosing the operations."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.schedule import Schedule

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "discard", "due", "pop_all"]),
        st.integers(0, 5),  # key
        st.integers(0, 20),  # time
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_schedule_agrees_with_a_dict(ops: list[tuple[str, int, int]]) -> None:
    schedule: Schedule[int] = Schedule()
    model: dict[int, int] = {}
    for op, key, at in ops:
        if op == "set":
            schedule.set(key, at)
            model[key] = at
        elif op == "discard":
            schedule.discard(key)
            model.pop(key, None)
        elif op == "due":
            got = schedule.due(at)
            want = [k for k in model if model[k] <= at]
            assert sorted(got) == sorted(want)
            assert [model[k] for k in got] == sorted(model[k] for k in got)  # earliest first
            for k in want:
                del model[k]
        else:
            got = schedule.pop_all()
            assert sorted(got) == sorted(model)
            assert [model[k] for k in got] == sorted(model.values())
            model.clear()
        assert schedule.next_at() == (min(model.values()) if model else None)
        assert len(schedule) == len(model)
        assert all(schedule.get(k) == v and k in schedule for k, v in model.items())


def test_keys_due_together_come_out_in_the_order_they_were_set() -> None:
    schedule: Schedule[str] = Schedule()
    for key in ("b", "a", "c"):
        schedule.set(key, 1.0)
    schedule.set("early", 0.5)
    assert schedule.due(1.0) == ["early", "b", "a", "c"]
    assert schedule.next_at() is None
