"""llamacpp stage: check out llama.cpp, apply the patch series, configure per backend, compile,
cache by build key, and know which flags the build accepts.

Modules, from the bottom up:

- :mod:`.gitrepo`   every git call (deterministic identity, safe.directory), snapshot commits
- :mod:`.source`    shared clones, tarballs, local directories, worktrees
- :mod:`.patches`   patch files, series folders, upstream PRs; check, apply, explain conflicts
- :mod:`.configure` the pure cmake plan per backend, option rename table, toolchain probe
- :mod:`.build`     build key, compile with log + progress, atomic install, current, pruning
- :mod:`.flags`     ``llama-server --help`` parsing, recipe flag checks, MTP spelling
- :mod:`.pin`       ``resolve_llama_cpp`` for the lock command
- :mod:`.stage`     one host from inventory + lock to a build (used by CLI and doit tasks)

The test build (``build_test_server()``) lives in :mod:`homelab.testing.llama_server`.
"""
