"""Prometheus text exposition for the supervisor, without a client-library dependency.

Per model: requests (by route and status class), errors, request latency, swaps (starts) and
their duration (first waiting request -> ready, evictions included), time to ready (spawn ->
ready), backend crashes, and tokens where the backend reports ``usage``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def escape_label(value: str) -> str:
    """A Prometheus label value in the text format (backslash, quote and newline escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


LabelKey = tuple[tuple[str, str], ...]


def _labels(labels: LabelKey) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


class _Series:
    """One metric's series, each named by its labels in name order whatever order a caller gave
    them in (the order seen is remembered: a request's counters cost no sort)."""

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._keys: dict[LabelKey, LabelKey] = {}

    def _key(self, labels: dict[str, str]) -> LabelKey:
        given = tuple(labels.items())
        key = self._keys.get(given)
        if key is None:
            key = self._keys[given] = tuple(sorted(given))
        return key


class Counter(_Series):
    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self.values: dict[LabelKey, float] = defaultdict(float)

    def inc(self, amount: float = 1, **labels: str) -> None:
        self.values[self._key(labels)] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self.values.items())]
        return lines


class Histogram(_Series):
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help)
        self.buckets = buckets
        self.counts: dict[LabelKey, list[int]] = {}
        self.sums: dict[LabelKey, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip(self.buckets, counts, strict=False):
                running += count
                lines.append(f"{self.name}_bucket{_labels(key + (('le', f'{bound:g}'),))} {running}")
            running += counts[-1]
            lines.append(f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {running}")
            lines.append(f"{self.name}_sum{_labels(key)} {self.sums[key]:.6f}")
            lines.append(f"{self.name}_count{_labels(key)} {running}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("homelab_requests_total", "Requests by model, route and status code.")
        self.errors = Counter("homelab_errors_total", "Requests answered with an error, by model and reason.")
        self.latency = Histogram(
            "homelab_request_duration_seconds", "Request duration (arrival to last byte), by model.", LATENCY_BUCKETS
        )
        self.swaps = Counter("homelab_swaps_total", "Backend starts by model and outcome.")
        self.swap_duration = Histogram(
            "homelab_swap_duration_seconds", "First waiting request to ready, evictions included.", START_BUCKETS
        )
        self.time_to_ready = Histogram(
            "homelab_time_to_ready_seconds", "Backend spawn to ready (checkEndpoint answered 200).", START_BUCKETS
        )
        self.crashes = Counter("homelab_backend_crashes_total", "Backends that exited without being asked to.")
        self.tokens = Counter("homelab_tokens_total", "Tokens reported by backends in usage, by kind.")
        self.peer_requests = Counter(
            "homelab_peer_requests_total",
            "Requests forwarded to peers, by peer and code (503: the peer was down or unreachable).",
        )
        self.prompt_cache_saves = Counter(
            "homelab_prompt_cache_saves_total",
            "Slots saved before a stop, by model and outcome (saved, failed, timeout).",
        )
        self.prompt_cache_restores = Counter(
            "homelab_prompt_cache_restores_total",
            "Saved slots at a start, by model and outcome (restored; refused: "
            "saved with another model file, build or KV flags; failed; timeout).",
        )
        self.prompt_cache_dropped = Counter(
            "homelab_prompt_cache_dropped_total", "Saved slots dropped to stay within the disk caps (LRU)."
        )
        self.prefetch_bytes = Counter(
            "homelab_prefetch_bytes_total", "Bytes of model files read ahead into the page cache, by model."
        )

    def render(self, loaded: dict[str, bool], peers_up: dict[str, bool] | None = None) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.errors,
            self.latency,
            self.swaps,
            self.swap_duration,
            self.time_to_ready,
            self.crashes,
            self.tokens,
            self.peer_requests,
            self.prompt_cache_saves,
            self.prompt_cache_restores,
            self.prompt_cache_dropped,
            self.prefetch_bytes,
        ):
            lines += metric.render()
        lines += [
            "# HELP homelab_model_loaded 1 when the model's backend is ready.",
            "# TYPE homelab_model_loaded gauge",
        ]
        lines += [f'homelab_model_loaded{{model="{escape_label(m)}"}} {int(v)}' for m, v in sorted(loaded.items())]
        if peers_up:
            lines += [
                "# HELP homelab_peer_up 1 when the peer answered its last health probe.",
                "# TYPE homelab_peer_up gauge",
            ]
            lines += [f'homelab_peer_up{{peer="{escape_label(p)}"}} {int(v)}' for p, v in sorted(peers_up.items())]
        return "\n".join(lines) + "\n"
