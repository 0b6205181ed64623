"""Property test: random event sequences keep the scheduler's promises.

A simulated driver carries out Start/Stop actions in random order and random outcomes. Checked:
no model is ever stopped with requests in flight; requests are only admitted to ready models;
a start never begins while a model it conflicts with is still resident; every request gets
exactly one answer once the driver settles.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.matrix import compile_matrix
from homelab.supervisor.admission import evictions
from homelab.supervisor.config import Config, ModelConfig
from homelab.supervisor.scheduler import Admit, Reject, Scheduler, Start, State, Stop

MODELS = ("a", "b", "c")


def model(mid: str, **kw: object) -> ModelConfig:
    return ModelConfig(id=mid, cmd=("x",), proxy="http://127.0.0.1:1", port=1, **kw)  # type: ignore[arg-type]


CONFIGS = [
    Config(models={m: model(m, concurrency_limit=3) for m in MODELS}, max_wait=2),
    Config(models={m: model(m, ttl=3) for m in MODELS}, max_wait=1,
           matrix=compile_matrix({"ab": "a & b", "c": "c"})),
    Config(models={m: model(m, vram_mib=10) for m in MODELS}, vram_budget_mib=20, max_wait=0),
]

ops = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from(MODELS)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("complete"), st.integers(0, 10), st.booleans()),
    st.tuples(st.just("crash"), st.sampled_from(MODELS)),
    st.tuples(st.just("advance"), st.floats(0, 5)),
    st.tuples(st.just("unload"), st.sampled_from(MODELS)),
), max_size=60)


class Sim:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.s = Scheduler(config)
        self.now = 0.0
        self.next_req = 0
        self.answers: dict[int, object] = {}
        self.admitted: list[int] = []
        self.pending: list[object] = []  # Start/Stop actions the driver still has to finish

    def apply(self, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, (Admit, Reject)):
                assert action.req not in self.answers, "answered twice"
                self.answers[action.req] = action
                if isinstance(action, Admit):
                    assert self.s.models[action.model].state is State.READY
                    self.admitted.append(action.req)
            elif isinstance(action, Stop):
                state = self.s.models[action.model]
                assert not state.inflight, f"stopped {action.model} with requests in flight"
                self.pending.append(action)
            elif isinstance(action, Start):
                resident = [m for m, st_ in self.s.models.items()
                            if st_.state is not State.STOPPED and m != action.model]
                assert not evictions(self.config, action.model, resident), "started into a conflict"
                self.pending.append(action)

    def step(self, op: tuple) -> None:
        kind = op[0]
        if kind == "request":
            self.next_req += 1
            self.apply(self.s.request(self.next_req, op[1], self.now))
        elif kind == "finish" and self.admitted:
            req = self.admitted.pop(op[1] % len(self.admitted))
            self.apply(self.s.done(req, self.now))
        elif kind == "finish" and self.next_req:  # a queued client goes away
            req = op[1] % self.next_req + 1
            if req not in self.answers:
                self.answers[req] = "cancelled"
                self.apply(self.s.done(req, self.now))
        elif kind == "complete" and self.pending:
            action = self.pending.pop(op[1] % len(self.pending))
            if isinstance(action, Start):
                self.apply(self.s.ready(action.model, self.now) if op[2]
                           else self.s.start_failed(action.model, "boom", self.now))
            else:
                self.apply(self.s.stopped(action.model, self.now))
        elif kind == "crash":
            state = self.s.models[op[1]]
            if state.state is State.READY:
                self.apply(self.s.exited(op[1], "crash", self.now))
        elif kind == "advance":
            self.now += op[1]
            self.apply(self.s.tick(self.now))
        elif kind == "unload":
            self.apply(self.s.unload([op[1]], self.now))

    def settle(self) -> None:
        for _ in range(200):
            if self.pending:
                self.step(("complete", 0, True))
            elif self.admitted:
                self.step(("finish", 0))
            else:
                self.now += 31  # past any back-off, hold or ttl
                self.apply(self.s.tick(self.now))
                if not self.pending and not self.admitted:
                    break


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(CONFIGS))), ops)
def test_random_event_sequences_keep_the_promises(which: int, sequence: list[tuple]) -> None:
    sim = Sim(CONFIGS[which])
    for op in sequence:
        sim.step(op)
    sim.settle()
    assert set(sim.answers) == set(range(1, sim.next_req + 1)), "a request was never answered"
    assert not sim.s.requests
