"""Admission per device (#17) and parallel swaps whose evictions are disjoint (#15).

Pure: the config loader on YAML text, :mod:`homelab.supervisor.admission` and the scheduler's
state machine. The property tests draw hosts of 1-4 GPUs of different sizes (plus system RAM as a
device) with pinned and split models, and check the promises on every step.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.supervisor.admission import AdmissionError, evictions, over_budget, room_evictions, shortfall
from homelab.supervisor.config import Config, ModelConfig
from homelab.supervisor.config_load import ConfigError, parse_config
from homelab.supervisor.scheduler import Admit, Reject, Scheduler, Start, State, Stop

DUO3060 = {"CUDA0": 11427, "CUDA1": 11427}
"""The 2x3060 host of the issue: 12288 MiB cards at vram_budget 0.93."""


def model(mid: str, devices: dict[str, int] | None = None, **kw: object) -> ModelConfig:
    return ModelConfig(id=mid, cmd=("x",), proxy="http://127.0.0.1:1", port=1, devices_mib=devices, **kw)  # type: ignore[arg-type]


def config(*models: ModelConfig, budget: dict[str, int] | None = None, **kw: object) -> Config:
    return Config(models={m.id: m for m in models}, device_budget_mib=dict(budget or DUO3060), **kw)  # type: ignore[arg-type]


def run(s: Scheduler, req: int, mid: str, now: float) -> None:
    """Request ``mid``, carry out its start (and nothing else), leave it idle."""
    actions = s.request(req, mid, now)
    assert actions == [Start(mid, now)], actions
    s.ready(mid, now)
    s.done(req, now)


# ------------------------------------------------------------------ the config


YAML = """
x-deviceBudgetMiB: {CUDA0: 11427, CUDA1: 11427}
models:
  a:
    cmd: llama-server --port ${PORT}
    x-devices: {CUDA0: 8000}
  b:
    cmd: llama-server --port ${PORT}
    x-devices: {CUDA0: 3000, CUDA1: 4500}
  c:
    cmd: llama-server --port ${PORT}
"""


def test_config_reads_device_budget_and_model_figures() -> None:
    cfg = parse_config(YAML)
    assert cfg.device_budget_mib == DUO3060
    assert cfg.models["a"].devices_mib == {"CUDA0": 8000}
    assert cfg.models["b"].devices_mib == {"CUDA0": 3000, "CUDA1": 4500}
    assert cfg.models["c"].devices_mib is None


def test_config_refuses_a_device_the_budget_does_not_list() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(YAML.replace("{CUDA0: 8000}", "{CUDA2: 8000}"))
    text = str(err.value)
    assert "<config>:6: models.a.x-devices" in text and "'CUDA2' is not in x-deviceBudgetMiB (CUDA0, CUDA1)" in text
    with pytest.raises(ConfigError, match="did you mean 'CUDA0'"):
        parse_config(YAML.replace("{CUDA0: 8000}", "{CUDA_0: 8000}"))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{CUDA0: 8000}", "{CUDA0: -1}", "models.a.x-devices.CUDA0: must be at least 0"),
        ("{CUDA0: 8000}", "[CUDA0]", "models.a.x-devices: expected a mapping of device name to MiB"),
        ("{CUDA0: 11427, CUDA1: 11427}", "{CUDA0: 0, CUDA1: 11427}", "x-deviceBudgetMiB.CUDA0: must be at least 1"),
    ],
)
def test_config_errors_name_the_key(old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(YAML.replace(old, new, 1))


# ------------------------------------------------------------------ the 2x3060 case


def test_duo3060_two_models_pinned_to_gpu0_are_never_resident_together() -> None:
    """#17: two 8000 MiB models pinned to GPU 0 were both admitted under the summed 22854 MiB."""
    s = Scheduler(config(model("a", {"CUDA0": 8000}), model("b", {"CUDA0": 8000})))
    assert s.request(1, "a", 0) == [Start("a", 0)]
    s.ready("a", 0)  # request 1 in flight: a is busy
    assert s.request(2, "b", 1) == []  # waits: CUDA0 has 3427 MiB free
    assert s.models["b"].state is State.STOPPED
    assert s.done(1, 2) == [Stop("a", "evicted to start 'b' (CUDA0: needs 8000 MiB, 3427 of 11427 MiB free)")]
    assert s.stopped("a", 3) == [Start("b", 1)]


def test_a_model_over_its_device_budget_is_refused_with_the_device_and_numbers() -> None:
    s = Scheduler(config(model("big", {"CUDA0": 12000, "CPU": 500}), budget={**DUO3060, "CPU": 30000}))
    [reject] = s.request(1, "big", 0)
    assert isinstance(reject, Reject) and reject.status == 503
    assert "model 'big' needs 12000 MiB on CUDA0 but the budget of CUDA0 (x-deviceBudgetMiB) is 11427 MiB" in (
        reject.message
    )
    assert "573 MiB short" in reject.message


def test_split_model_evicts_on_each_short_device_only() -> None:
    s = Scheduler(config(
        model("p0", {"CUDA0": 8000}), model("p1", {"CUDA1": 8000}), model("q1", {"CUDA1": 2000}),
        model("split", {"CUDA0": 3000, "CUDA1": 3000}),
    ))
    run(s, 1, "p0", 0)
    run(s, 2, "q1", 1)
    # CUDA0: 8000 + 3000 fits; CUDA1: 2000 + 3000 fits: nothing to evict
    assert s.request(3, "split", 2) == [Start("split", 2)]
    s.ready("split", 2)
    s.done(3, 2)
    # p1 needs CUDA1 8000: split (3000) and q1 (2000) hold 5000 of 11427; one must go. q1 is the
    # least recently used on CUDA1; p0 shares no device with p1 and stays.
    [stop] = s.request(4, "p1", 3)
    assert stop == Stop("q1", "evicted to start 'p1' (CUDA1: needs 8000 MiB, 6427 of 11427 MiB free)")


def test_old_configs_keep_one_pool() -> None:
    """No per-device figures: x-vramBudgetMiB and vram_mib decide as before (the sum of GPUs)."""
    models = [ModelConfig(id=m, cmd=("x",), proxy="http://127.0.0.1:1", port=1, vram_mib=8000) for m in "ab"]
    s = Scheduler(Config(models={m.id: m for m in models}, vram_budget_mib=22854))
    run(s, 1, "a", 0)
    assert s.request(2, "b", 1) == [Start("b", 1)]  # one pool: both fit in 22854
    s = Scheduler(Config(models={m.id: m for m in models}, vram_budget_mib=12000))
    run(s, 1, "a", 0)
    assert s.request(2, "b", 1) == [Stop("a", "evicted to start 'b'")]


# ------------------------------------------------------------------ parallel swaps (#15)


def test_swaps_on_different_devices_evict_in_parallel() -> None:
    s = Scheduler(config(*(model(m, {dev: 8000}) for m, dev in
                           (("a0", "CUDA0"), ("a1", "CUDA0"), ("b0", "CUDA1"), ("b1", "CUDA1")))))
    run(s, 1, "a0", 0)
    run(s, 2, "b0", 0)
    assert s.request(3, "a1", 1) == [Stop("a0", "evicted to start 'a1' (CUDA0: needs 8000 MiB, 3427 of 11427 MiB free)")]
    # b1's eviction (b0, CUDA1) is disjoint from a1's: it does not wait for a1's swap
    assert s.request(4, "b1", 2) == [Stop("b0", "evicted to start 'b1' (CUDA1: needs 8000 MiB, 3427 of 11427 MiB free)")]
    assert s.stopped("b0", 3) == [Start("b1", 2)]  # b1 starts first: a0 is still stopping
    assert s.stopped("a0", 4) == [Start("a1", 1)]
    assert s.models["a1"].state is s.models["b1"].state is State.STARTING


def test_a_later_swap_that_needs_the_same_room_waits_behind() -> None:
    s = Scheduler(config(model("a0", {"CUDA0": 8000}), model("a1", {"CUDA0": 8000}), model("a2", {"CUDA0": 8000}),
                         max_wait=100))
    assert s.request(1, "a0", 0) == [Start("a0", 0)]
    s.ready("a0", 0)  # busy
    assert s.request(2, "a1", 1) == []  # waits for a0
    assert s.request(3, "a2", 2) == []  # would have to evict a1 (reserved): waits behind it
    assert s.done(1, 3) == [Stop("a0", "evicted to start 'a1' (CUDA0: needs 8000 MiB, 3427 of 11427 MiB free)")]
    assert s.stopped("a0", 4) == [Start("a1", 1)]
    assert s.models["a2"].state is State.STOPPED


def test_a_later_start_does_not_take_the_room_a_waiting_one_needs() -> None:
    """a1 waits for busy a0; c would fit beside a0 now, but not beside a1: it waits behind a1."""
    s = Scheduler(config(model("a0", {"CUDA0": 5000}), model("a1", {"CUDA0": 8000}), model("c", {"CUDA0": 4000}),
                         max_wait=100))
    s.request(1, "a0", 0)
    s.ready("a0", 0)
    assert s.request(2, "a1", 1) == []
    assert s.request(3, "c", 2) == []  # 5000 + 4000 fits now, but c would have to evict reserved a1
    s.done(1, 3)
    assert s.stopped("a0", 4) == [Start("a1", 1)]
    assert s.models["c"].state is State.STOPPED


# ------------------------------------------------------------------ properties

DEVICE_SIZES = st.integers(1000, 24000)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """1-4 GPUs of different sizes and system RAM; 2-6 models, each pinned to one device, split
    over several, or offloading part to the CPU; each fits its devices alone."""
    n_gpus = draw(st.integers(1, 4))
    budget = {f"CUDA{i}": draw(DEVICE_SIZES) for i in range(n_gpus)}
    if draw(st.booleans()):
        budget["CPU"] = draw(st.integers(4000, 64000))
    devices = sorted(budget)
    models: dict[str, dict[str, int]] = {}
    for k in range(draw(st.integers(2, 6))):
        used = draw(st.lists(st.sampled_from(devices), min_size=1, max_size=len(devices), unique=True))
        models[f"m{k}"] = {d: draw(st.integers(1, budget[d])) for d in used}
    return budget, models


def device_config(budget: dict[str, int], models: dict[str, dict[str, int]], **kw: object) -> Config:
    return config(*(model(m, d) for m, d in models.items()), budget=budget, **kw)


@settings(max_examples=300, deadline=None)
@given(hosts(), st.data())
def test_evictions_fit_touch_only_short_devices_and_are_irredundant(host, data) -> None:  # type: ignore[no-untyped-def]
    budget, models = host
    cfg = device_config(budget, models)
    ids = sorted(models)
    target = data.draw(st.sampled_from(ids))
    others = [m for m in ids if m != target]
    # a resident set that fits (as the supervisor would keep it), in LRU order
    resident: list[str] = []
    for m in data.draw(st.permutations(others)):
        if data.draw(st.booleans()) and not over_budget(cfg, [*resident, m]):
            resident.append(m)
    busy = set(data.draw(st.lists(st.sampled_from(resident), unique=True))) if resident else set()
    short = shortfall(cfg, target, resident)
    evict = evictions(cfg, target, resident, busy)
    kept = [m for m in resident if m not in evict]
    assert not over_budget(cfg, [*kept, target]), "admitted over a device's budget"
    for m in evict:
        assert set(models[m]) & set(short), f"evicted {m}, which uses no device short of room"
        assert over_budget(cfg, [*kept, m, target]), f"evicted {m} though everything fits with it"
    if not short:
        assert not evict
    # idle models go before busy ones: a busy one is evicted only if no set of idle ones would do
    if evict & busy:
        assert over_budget(cfg, [m for m in resident if m in busy] + [target])


def test_room_evictions_prefers_one_big_eviction_over_redundant_small_ones() -> None:
    cfg = config(model("s1", {"CUDA0": 1000}), model("s2", {"CUDA0": 1000}), model("big", {"CUDA0": 9000}),
                 model("t", {"CUDA0": 9000}))
    # LRU order s1, s2, big: greedy takes s1, s2 (not enough) then big; then s1 and s2 are redundant
    assert room_evictions(cfg, "t", ["s1", "s2", "big"]) == {"big"}


OPS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.integers(0, 5)),
    st.tuples(st.just("finish"), st.integers(0, 30)),
    st.tuples(st.just("complete"), st.integers(0, 10), st.booleans()),
    st.tuples(st.just("crash"), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.floats(0, 5)),
), max_size=50)


class DeviceSim:
    """A driver carrying out Start/Stop in random order; checks memory after every batch."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.s = Scheduler(cfg)
        self.ids = sorted(cfg.models)
        self.now = 0.0
        self.next_req = 0
        self.answers: dict[int, object] = {}
        self.admitted: list[int] = []
        self.pending: list[Start | Stop] = []
        self.starts = 0
        self.parallel = 0

    def holding(self) -> list[str]:
        """Models that hold device memory: starting, ready or stopping."""
        return [m for m, st_ in self.s.models.items() if st_.state is not State.STOPPED]

    def apply(self, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, (Admit, Reject)):
                assert action.req not in self.answers
                self.answers[action.req] = action
                if isinstance(action, Admit):
                    self.admitted.append(action.req)
            elif isinstance(action, Stop):
                assert not self.s.models[action.model].inflight
                self.pending.append(action)
            elif isinstance(action, Start):
                self.starts += 1
                self.parallel += any(isinstance(p, Start) for p in self.pending)
                self.pending.append(action)
        assert not over_budget(self.cfg, self.holding()), f"over budget: {over_budget(self.cfg, self.holding())}"

    def step(self, op: tuple) -> None:  # type: ignore[type-arg]
        kind = op[0]
        if kind == "request":
            self.next_req += 1
            self.apply(self.s.request(self.next_req, self.ids[op[1] % len(self.ids)], self.now))
        elif kind == "finish" and self.admitted:
            self.apply(self.s.done(self.admitted.pop(op[1] % len(self.admitted)), self.now))
        elif kind == "complete" and self.pending:
            action = self.pending.pop(op[1] % len(self.pending))
            if isinstance(action, Start):
                self.apply(self.s.ready(action.model, self.now) if op[2]
                           else self.s.start_failed(action.model, "boom", self.now))
            else:
                self.apply(self.s.stopped(action.model, self.now))
        elif kind == "crash":
            mid = self.ids[op[1] % len(self.ids)]
            if self.s.models[mid].state is State.READY:
                self.apply(self.s.exited(mid, "crash", self.now))
        elif kind == "advance":
            self.now += op[1]
            self.apply(self.s.tick(self.now))

    def settle(self) -> None:
        for _ in range(300):
            if self.pending:
                self.step(("complete", 0, True))
            elif self.admitted:
                self.step(("finish", 0))
            else:
                self.now += 31
                self.apply(self.s.tick(self.now))
                if not self.pending and not self.admitted:
                    break


COUNTS = {"runs": 0, "starts": 0, "parallel": 0, "gpus": set()}


@settings(max_examples=300, deadline=None)
@given(hosts(), OPS)
def test_random_hosts_never_go_over_any_device_budget(host, ops) -> None:  # type: ignore[no-untyped-def]
    budget, models = host
    sim = DeviceSim(device_config(budget, models, max_wait=2))
    for op in ops:
        sim.step(op)
    sim.settle()
    assert set(sim.answers) == set(range(1, sim.next_req + 1)), "a request was never answered"
    COUNTS["runs"] += 1
    COUNTS["starts"] += sim.starts
    COUNTS["parallel"] += sim.parallel
    COUNTS["gpus"].add(sum(1 for d in budget if d.startswith("CUDA")))  # type: ignore[union-attr]


def test_property_counts_cover_the_shapes() -> None:
    """Runs after the property test (file order): the draws covered 1-4 GPUs and parallel starts."""
    if not COUNTS["runs"]:
        pytest.skip("run with the property test")
    print(f"\nper-device property: {COUNTS['runs']} hosts, {COUNTS['starts']} starts, "
          f"{COUNTS['parallel']} begun while another load was in progress, GPU counts {sorted(COUNTS['gpus'])}")
    assert COUNTS["gpus"] == {1, 2, 3, 4}
    assert COUNTS["parallel"] > 0


def test_evictions_error_is_admission_error() -> None:
    cfg = config(model("a", {"CUDA1": 20000}))
    with pytest.raises(AdmissionError, match="needs 20000 MiB on CUDA1"):
        evictions(cfg, "a", [])
