"""Token usage read from relayed answers (metrics), ``bench proxy --pin`` / ``--baseline`` parsing, and
the bench's CPU accounting of a front process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from homelab.bench.supervisor import Pinning, _baseline_env, _cpu_seconds, _pinning
from homelab.errors import HomelabError
from homelab.supervisor.proxy import ForwardResult, multipart_with_model, parse_body, usage_from


def test_usage_of_a_json_answer_is_its_usage_object() -> None:
    body = json.dumps({"choices": [{"message": {"content": 'say "usage": {"x": 1}'}}],
                       "usage": {"prompt_tokens": 20, "completion_tokens": 3}, "timings": {"predicted_n": 3}})
    assert usage_from(body.encode()) == {"prompt_tokens": 20, "completion_tokens": 3}


def test_usage_of_a_stream_is_the_last_usage_object_not_null_or_text() -> None:
    tail = (b'data: {"choices":[{"delta":{"content":"\\"usage\\": {"}}],"usage":null}\n\n'
            b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n'
            b'data: {"choices":[{"delta":{}}],"usage": null}\n\ndata: [DONE]\n\n')
    assert usage_from(tail) == {"prompt_tokens": 3, "completion_tokens": 7}


def test_llama_cpp_completion_counts_without_usage() -> None:
    tail = b'data: {"content":"a","stop":true,"tokens_predicted":12,"tokens_evaluated":5}\n\n'
    assert usage_from(tail) == {"prompt_tokens": 5, "completion_tokens": 12}


def test_no_usage_gives_none() -> None:
    assert usage_from(b"") is None
    assert usage_from(b'{"usage": null}') is None
    assert usage_from(b'{"usage": {"prompt_tokens": 1') is None  # cut off


def test_usage_after_megabytes_of_embeddings_is_found() -> None:
    body = json.dumps({"data": [{"embedding": [0.125] * 300_000}], "usage": {"prompt_tokens": 9}})
    assert usage_from(body.encode()) == {"prompt_tokens": 9}


def test_pin_parsing() -> None:
    assert _pinning(argparse.Namespace(pin=None)) is None
    assert _pinning(argparse.Namespace(pin="0-2,5:3,4")) == Pinning({0, 1, 2, 5}, {3, 4})
    for bad in ("0", "0:", "a:1", ":1"):
        with pytest.raises(HomelabError, match="--pin"):
            _pinning(argparse.Namespace(pin=bad))


def test_multipart_model_field_is_replaced_and_nothing_else() -> None:
    content_type = "multipart/form-data; boundary=XyZ"
    audio = b"\x00\x01RIFF\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nfake"
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n" + audio + b"\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nnas/whisper\r\n--XyZ--\r\n")
    out = multipart_with_model(content_type, body, "whisper")
    assert parse_body(content_type, out)[1] == "whisper"
    assert out.replace(b"\r\n\r\nwhisper\r\n", b"\r\n\r\nnas/whisper\r\n") == body  # only the value moved
    no_field = body.replace(b'name="model"\r\n\r\nnas/whisper', b'name="language"\r\n\r\nen')
    assert multipart_with_model(content_type, no_field, "whisper") == no_field
    assert multipart_with_model("multipart/form-data", body, "whisper") == body  # no boundary: as is


def test_a_short_answers_usage_is_read_when_asked() -> None:
    """The relay hands the body over and sends the answer; the usage is parsed after, once."""
    result = ForwardResult()
    result.usage_in(b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}')
    assert result.usage == {"prompt_tokens": 4, "completion_tokens": 1}
    assert result.usage is result.usage  # parsed once
    result.usage_in(b'{"choices":[]}')
    assert result.usage is None
    result.usage_in(b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}')
    result.usage = {"prompt_tokens": 9}  # a later answer (a stream's tail) wins
    assert result.usage == {"prompt_tokens": 9}


def test_baseline_must_be_a_source_tree(tmp_path: Path) -> None:
    with pytest.raises(HomelabError, match="not a homelab source tree.*git worktree add"):
        _baseline_env(tmp_path)
    tree = Path(__file__).resolve().parents[2]  # this checkout
    assert _baseline_env(tree)["PYTHONPATH"] == str(tree)


def test_baseline_code_is_imported_even_when_run_from_a_checkout(tmp_path: Path) -> None:
    """`python -m homelab.cli serve` started in this checkout (as `bench proxy` is) must run the
    baseline tree's code, not the checkout's, which `-m` would put first on sys.path."""
    base = tmp_path / "base"
    (base / "homelab" / "supervisor").mkdir(parents=True)
    (base / "homelab" / "__init__.py").write_text("")
    (base / "homelab" / "whoami.py").write_text("import homelab\nprint(homelab.__file__)\n")
    checkout = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "homelab.whoami"], cwd=checkout, env=_baseline_env(base),
        capture_output=True, text=True, check=True,
    ).stdout
    assert Path(out.strip()) == base / "homelab" / "__init__.py"


def test_cpu_of_threads_that_have_exited_is_still_counted() -> None:
    """A front that runs work on short-lived threads (router mode's connection threads, a relay
    thread per stream) must not look cheaper: the live threads' counters alone lose it."""
    burned: list[float] = []

    def burn() -> None:
        start = time.thread_time()
        while time.thread_time() - start < 0.2:
            pass
        burned.append(time.thread_time() - start)

    before = _cpu_seconds(os.getpid())
    for _ in range(2):
        thread = threading.Thread(target=burn)
        thread.start()
        thread.join()
    counted = _cpu_seconds(os.getpid()) - before
    assert counted >= sum(burned) - 0.001  # the whole process's clock, in nanoseconds


def test_cpu_time_never_goes_back_as_threads_end() -> None:
    """Before, live threads counted in nanoseconds and ended ones in clock ticks: a thread that
    ended between two readings could make the second one smaller than the first."""
    readings = [_cpu_seconds(os.getpid())]
    for _ in range(60):  # the code before went back in 3 of 5 runs of 20
        thread = threading.Thread(target=lambda: sum(range(20_000)))
        thread.start()
        readings.append(_cpu_seconds(os.getpid()))
        thread.join()
        readings.append(_cpu_seconds(os.getpid()))
    assert readings == sorted(readings)
