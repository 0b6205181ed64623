"""Parsing the real b11434 ``llama-server --help`` and checking recipe flags against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from homelab.llamacpp.flags import (
    AcceptedFlags,
    MtpSettings,
    check_flags,
    mtp_architectures,
    mtp_architectures_in,
    mtp_flags,
    mtp_unusable,
    parse_help,
)

# the real b11434 --help, shipped for the validate-time check
HELP = (Path(__file__).resolve().parents[2] / "homelab" / "llamacpp" / "server_help_b11434.txt").read_text()
SNAPSHOT = Path(__file__).resolve().parents[2] / "homelab" / "llamacpp" / "server_flags_b11434.txt"


@pytest.fixture(scope="module")
def accepted() -> AcceptedFlags:
    return parse_help(HELP, "b11434")


def test_every_long_alias_is_known_with_its_value_kind(accepted: AcceptedFlags) -> None:
    ctx = accepted.flags["ctx-size"]
    assert ctx.aliases == ("-c", "--ctx-size") and ctx.value == "required" and ctx.placeholder == "N"
    # every spelling of one option maps to the same entry
    assert accepted.flags["n-predict"] is accepted.flags["predict"]
    assert accepted.flags["no-kv-offload"] is accepted.flags["kv-offload"]
    assert accepted.flags["kv-offload"].value == "none"
    assert accepted.flags["flash-attn"].value == "optional"
    assert accepted.flags["flash-attn"].choices == ("on", "off", "auto")
    # specs longer than the description column, values with spaces, names with dots
    assert accepted.flags["n-cpu-moe-draft"].name == "spec-draft-n-cpu-moe"
    assert accepted.flags["control-vector-layer-range"].placeholder == "START END"
    assert accepted.flags["fim-qwen-1.5b-default"].value == "none"
    assert accepted.flags["split-mode"].choices == ("none", "layer", "row", "tensor")
    # "allowed values:" lines in the description become choices
    assert "q4_0" in accepted.flags["cache-type-k"].choices
    assert "draft-mtp" in accepted.flags["spec-type"].choices


def test_removed_options_are_listed_but_not_accepted(accepted: AcceptedFlags) -> None:
    assert "draft-max" in accepted.flags
    assert not accepted.accepts("draft-max")
    assert "spec-draft-n-max" in (accepted.flags["draft-max"].removed or "")
    assert accepted.accepts("spec-draft-n-max") and accepted.accepts("--ctx-size")


def test_json_round_trip(accepted: AcceptedFlags, tmp_path: Path) -> None:
    accepted.write(tmp_path / "flags.json")
    again = AcceptedFlags.read(tmp_path / "flags.json")
    assert again.build == "b11434"
    assert again.long_names(include_removed=True) == accepted.long_names(include_removed=True)
    assert again.flags["cache-type-v"] == accepted.flags["cache-type-v"]


def test_static_snapshot_matches_the_real_help(accepted: AcceptedFlags) -> None:
    lines = SNAPSHOT.read_text().splitlines()
    assert lines == sorted(lines) and all(not n.startswith("-") for n in lines)
    assert lines == accepted.long_names()
    assert {"ctx-size", "cache-type-k", "n-gpu-layers", "spec-type", "load-mode"} <= set(lines)
    assert not {"draft-max", "no-mmap", "mlock"} & set(lines)


def test_check_flags_names_model_flag_and_build(accepted: AcceptedFlags) -> None:
    server = {
        "ctx-size": 8192,
        "cache-type-k": "q4_0",
        "flash-attn": "on",
        "jinja": True,
        "ctx-sise": 100,  # typo
        "no-mmap": True,  # renamed upstream
        "draft-max": 4,  # removed upstream
        "metrics": 3,  # a switch given a value
        "port": True,  # a valued flag given no value
        "cache-type-v": "q3_k",  # not an allowed value
        "spec-type": "draft-mtp,ngram-mod",  # a comma list: each element is a choice
        "split-mode": "layer",
    }
    problems = check_flags("qwen3", server, accepted, recipe_file="recipes/qwen3.yaml")
    by_flag = {p.flag: str(p) for p in problems}
    assert set(by_flag) == {"ctx-sise", "no-mmap", "draft-max", "metrics", "port", "cache-type-v"}
    for message in by_flag.values():
        assert "recipes/qwen3.yaml" in message and "qwen3" in message
    assert "did you mean 'ctx-size'" in by_flag["ctx-sise"] and "b11434" in by_flag["ctx-sise"]
    assert "load-mode" in by_flag["no-mmap"]
    assert "removed" in by_flag["draft-max"] and "spec-draft-n-max" in by_flag["draft-max"]
    assert check_flags("ok", {"ctx-size": 1, "n-gpu-layers": 99, "mlock": None} | {}, accepted)[0].flag == "mlock"


def test_mtp_only_with_heads_and_spelled_as_the_build_does(accepted: AcceptedFlags) -> None:
    mtp = MtpSettings(draft_n_max=3)
    assert mtp_flags(mtp, has_mtp_heads=False, accepted=accepted) == {}
    assert mtp_flags(None, has_mtp_heads=True, accepted=accepted) == {}
    flags = mtp_flags(mtp, has_mtp_heads=True, accepted=accepted)
    assert flags == {"spec-type": "draft-mtp", "spec-draft-n-max": "3"}
    assert check_flags("m", flags, accepted) == []
    # an older patched branch: no help at hand, the build number decides
    assert mtp_flags(mtp, has_mtp_heads=True, build_number=9000)["spec-type"] == "mtp"
    assert mtp_flags(MtpSettings(2, 1), has_mtp_heads=True, build_number=9180) == {
        "spec-type": "draft-mtp", "spec-draft-n-max": "2", "spec-draft-n-min": "1"
    }
    # a build whose --spec-type only knows "mtp"
    old = parse_help("--spec-type none,mtp,ngram             speculative type\n", "patched-b9000")
    assert mtp_flags(mtp, has_mtp_heads=True, accepted=old)["spec-type"] == "mtp"


def test_one_of_lists_in_descriptions_become_choices(accepted: AcceptedFlags) -> None:
    # "--reasoning-format FORMAT ... one of: - none: ... (default: auto)": auto is accepted too
    assert accepted.flags["reasoning-format"].choices == ("none", "deepseek", "deepseek-legacy", "auto")
    assert accepted.flags["spec-type"].takes_list and not accepted.flags["split-mode"].takes_list


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("spec-type", "mtp", "value 'mtp' is not one of none, draft-simple, draft-eagle3, draft-mtp"),
        ("spec-type", "mtp", "did you mean 'draft-mtp'?"),
        ("spec-type", "draft-mtp,eagle3,ngram", "values 'eagle3', 'ngram' are not one of"),
        ("spec-type", "draft-mtp,eagle3,ngram", "'eagle3' -> 'draft-eagle3'"),
        ("cache-type-k", "F16", "did you mean 'f16'?"),
        ("split-mode", "rows", "did you mean 'row'?"),
        ("reasoning-format", "deepseek-legacyy", "did you mean 'deepseek-legacy'?"),
    ],
)
def test_bad_enumerated_values_name_the_nearest_choice(
    accepted: AcceptedFlags, flag: str, value: str, expected: str
) -> None:
    problems = check_flags("m", {flag: value}, accepted)
    assert len(problems) == 1 and expected in str(problems[0]), problems


def test_switch_values_of_optional_flags_are_not_choice_checked(accepted: AcceptedFlags) -> None:
    # YAML reads `flash-attn: on` as true: a bare --flash-attn, which the build accepts
    assert check_flags("m", {"flash-attn": True, "spec-type": "none"}, accepted) == []


# -- which architectures llama.cpp runs MTP for, read from its tree

MODELS_H = """
struct llama_model_qwen35 : public llama_model_base {
struct llama_model_clef : public llama_model_qwen35 {
struct llama_model_child : public llama_model_qwen35 {
struct llama_model_llama : public llama_model_base {
"""
QWEN35_CPP = """
std::unique_ptr<llm_graph_context> llama_model_qwen35::build_arch_graph(const llm_graph_params & params) const {
    if (params.gtype == LLM_GRAPH_TYPE_DECODER_MTP) {
        return std::make_unique<graph_mtp>(*this, params);
    }
    return std::make_unique<graph>(*this, params);
}
"""
CLEF_CPP = """
std::unique_ptr<llm_graph_context> llama_model_clef::build_arch_graph(const llm_graph_params & params) const {
    return std::make_unique<graph>(*this, params);
}
"""
LLAMA_CPP = """
std::unique_ptr<llm_graph_context> llama_model_llama::build_arch_graph(const llm_graph_params & params) const {
    return std::make_unique<graph>(*this, params);
}
std::unique_ptr<llm_graph_context> llama_model_other::build_arch_graph(const llm_graph_params & params) const {
    if (params.gtype == LLM_GRAPH_TYPE_DECODER_MTP) { return nullptr; }
}
"""
FACTORY = """
        case LLM_ARCH_LLAMA:
        case LLM_ARCH_LLAMA4:
            return new llama_model_llama(params);
        case LLM_ARCH_QWEN35:
            return new llama_model_qwen35(params);
        case LLM_ARCH_CLEF:
            return new llama_model_clef(params);
        case LLM_ARCH_CHILD:
            return new llama_model_child(params);
"""
NAMES = """
    { LLM_ARCH_LLAMA,            "llama"            },
    { LLM_ARCH_LLAMA4,           "llama4"           },
    { LLM_ARCH_QWEN35,           "qwen35"           },
    { LLM_ARCH_CLEF,             "clef"             },
    { LLM_ARCH_CHILD,            "child"            },
"""


def test_mtp_architectures_follow_the_graph_builders_and_inheritance() -> None:
    archs = mtp_architectures([QWEN35_CPP, CLEF_CPP, LLAMA_CPP], MODELS_H, FACTORY, NAMES)
    # qwen35 handles the MTP graph; child inherits it; clef overrides without it; llama has none
    assert archs == frozenset({"qwen35", "child"})


def test_mtp_is_unusable_without_heads_or_without_a_graph() -> None:
    archs = frozenset({"qwen35", "qwen35moe"})
    assert mtp_unusable("qwen35moe", 1, archs) is None
    assert "has no MTP heads" in (mtp_unusable("qwen35moe", 0, archs) or "")
    assert "builds no MTP graph for architecture 'llama'" in (mtp_unusable("llama", 1, archs) or "")
    assert mtp_unusable("llama", 1, None) is None  # an unknown build: the GGUF decides


def test_the_real_b11434_tree(tmp_path: Path) -> None:
    """The pinned tree itself (the e2e tests' cached sdist repository), when this machine has it."""
    import subprocess

    repo = Path.home() / ".cache" / "homelab-tests" / "src" / "llama.cpp-b11434.git"
    if not repo.is_dir():
        pytest.skip("no cached b11434 tree (the llama_server_bin fixture creates it)")
    archive = subprocess.run(["git", "--git-dir", str(repo), "archive", "HEAD", "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    archs = mtp_architectures_in(tmp_path)
    assert archs is not None and {"qwen35", "qwen35moe", "qwen3next", "glm4moe", "deepseek2", "step35"} <= archs
    assert not {"llama", "qwen3", "qwen3moe", "gemma3"} & archs


def test_the_validate_time_check_reads_the_same_help(accepted: AcceptedFlags) -> None:
    from homelab.inventory.flagnames import known_help

    shipped = known_help("b11434")
    assert shipped is not None and shipped.flags["spec-type"].choices == accepted.flags["spec-type"].choices
    assert known_help("b1") is None and known_help("master") is None
