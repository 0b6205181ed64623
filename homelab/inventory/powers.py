"""Recipes describe a model; they cannot grant powers over the host.

A recipe is often someone else's file (``recipe:`` may be an https URL), so it must not be able
to turn on what lets a request act on the machine: llama-server's built-in tools and agent mode
(shell commands, file reads and writes), MCP servers and the CORS proxy, files read or written at
paths it names, ``--rpc`` (sending the model to other machines), or environment variables that
make the dynamic loader or an interpreter load code (``LD_PRELOAD`` and the like). Those need an
explicit line in the host file: the same key in the model entry's ``server:`` or ``env:``, which
also overrides the recipe's value (``null`` drops it).
"""

from __future__ import annotations

from .problems import Problem
from .schema import HostModel, Recipe
from .sourcemap import YamlDoc

POWER_FLAGS = {
    "tools": "runs built-in tools (shell commands, file reads and writes) on this host",
    "tools-runtime": "chooses where built-in tools run (a container, or another host over ssh)",
    "agent": "turns on all built-in tools (shell commands, file writes) and a CORS proxy",
    "mcp-servers-config": "starts the MCP servers a file names",
    "mcp-servers-json": "starts the MCP servers it names",
    "ui-mcp-proxy": "runs a CORS proxy that fetches any URL for a browser",
    "webui-mcp-proxy": "runs a CORS proxy that fetches any URL for a browser",
    "rpc": "sends the model and its data to other machines (name workers in the host entry's `rpc:`)",
    "media-path": "lets requests read local files through file:// URLs",
    "path": "serves the files of a directory over HTTP",
    "slot-save-path": "lets requests write KV-cache files into a directory",
    "log-file": "writes a file wherever the service may write",
    "log-prompts-dir": "writes every prompt into a directory",
    "lookup-cache-dynamic": "writes a file wherever the service may write",
    "props": "lets any client change server settings through POST /props",
    "video-ffmpeg-dir": "runs ffmpeg/ffprobe from the directory it names",
    "cors-origins": "lets web pages of other origins read the backend's answers",
}
"""llama-server flags (b11434) a recipe cannot set: what each lets a request do."""

POWER_FLAG_ENV = {
    "LLAMA_ARG_TOOLS": "tools",
    "LLAMA_ARG_TOOLS_RUNTIME": "tools-runtime",
    "LLAMA_ARG_AGENT": "agent",
    "LLAMA_ARG_MCP_SERVERS_CONFIG": "mcp-servers-config",
    "LLAMA_ARG_MCP_SERVERS_JSON": "mcp-servers-json",
    "LLAMA_ARG_UI_MCP_PROXY": "ui-mcp-proxy",
    "LLAMA_ARG_RPC": "rpc",
    "LLAMA_ARG_STATIC_PATH": "path",
    "LLAMA_ARG_LOG_FILE": "log-file",
    "LLAMA_ARG_ENDPOINT_PROPS": "props",
    "LLAMA_ARG_VIDEO_FFMPEG_DIR": "video-ffmpeg-dir",
    "LLAMA_ARG_CORS_ORIGINS": "cors-origins",
}
"""The environment spelling of those flags: llama-server reads them as if given on the command line."""

LOADER_ENV = frozenset(
    {
        "PATH", "GCONV_PATH", "GLIBC_TUNABLES", "HOSTALIASES", "LOCPATH", "NLSPATH", "MALLOC_TRACE",
        "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PERL5LIB", "PERL5OPT", "PERLLIB",
        "RUBYLIB", "RUBYOPT", "NODE_OPTIONS", "BASH_ENV", "ENV", "HSA_TOOLS_LIB", "CUDA_INJECTION64_PATH",
        "OCL_ICD_VENDORS", "OCL_ICD_FILENAMES", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES",
        "VK_LAYER_PATH", "VK_ADD_LAYER_PATH", "VK_INSTANCE_LAYERS", "VK_LOADER_LAYERS_ENABLE",
        "OPENSSL_CONF", "OPENSSL_MODULES",
    }
)  # fmt: skip
"""Variables that make the dynamic loader, a GPU runtime or an interpreter load code or data
from a path they name (``LD_*`` and ``DYLD_*`` as a whole are refused too)."""
LOADER_PREFIXES = ("LD_", "DYLD_")


def env_power(name: str) -> str | None:
    """Why a recipe cannot set the environment variable ``name``, or None if it may."""
    if name in POWER_FLAG_ENV:
        flag = POWER_FLAG_ENV[name]
        return f"llama-server reads it as --{flag}, which {POWER_FLAGS[flag]}"
    if name in LOADER_ENV or name.startswith(LOADER_PREFIXES):
        return "it makes the loader, a GPU runtime or an interpreter load code from a path it names"
    return None


def recipe_power_problems(
    recipe_doc: YamlDoc, recipe: Recipe, host_display: str, index: int, entry: HostModel
) -> list[Problem]:
    """A problem at the recipe's line for every power it sets that the host entry does not set
    itself (the host entry ``models[index]`` of ``host_display``)."""
    problems = []
    for name, value in recipe.server.items():
        if name not in POWER_FLAGS or value is None or value is False or name in entry.server:
            continue
        problems.append(
            recipe_doc.problem(
                ("server", name),
                f"recipe {recipe.name!r} sets {name!r}, which {POWER_FLAGS[name]}: a recipe cannot grant "
                f"that; to allow it, set it in the host file ({host_display}: models[{index}].server.{name})",
            )
        )
    for name in recipe.env:
        why = env_power(name)
        if why is None or name in entry.env:
            continue
        problems.append(
            recipe_doc.problem(
                ("env", name),
                f"recipe {recipe.name!r} sets environment variable {name}: {why}; a recipe cannot "
                f"grant that; to allow it, set it in the host file ({host_display}: models[{index}].env.{name})",
            )
        )
    return problems
