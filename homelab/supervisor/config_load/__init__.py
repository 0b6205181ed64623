"""Parse llama-swap's ``config.yaml`` strictly into :class:`homelab.supervisor.config.Config`.

The format is llama-swap's (checked against its ``proxy/config`` / ``internal/config`` Go code);
we differ in being strict: an unknown key is an error (with the nearest valid key suggested),
except keys starting with ``x-``, which are free for extensions (ours: ``x-deviceBudgetMiB``,
``x-devices``, ``x-vramBudgetMiB``, ``x-maxWait``, ``x-promptCache``, ``x-prefetch``). Every key of current
llama-swap is accepted. Every error names the file, the line and the key path, and says how to fix it.

Order of work, as llama-swap does it:

1. ``${env.NAME}`` is substituted in the YAML text first (only inside YAML values and keys, not
   comments); an unset variable is fatal. Substituting before parsing means ``ttl: ${env.TTL}``
   becomes a number, as upstream.
2. The YAML is parsed (line numbers kept from :func:`yaml.compose`), keys are checked.
3. Per model, macros are expanded: ``MODEL_ID`` first, then the global ``macros`` in order, with
   the model's own ``macros`` overriding a global of the same name in place or appending. A macro
   may use only macros defined before it.
4. ``${PORT}`` is allocated from ``startPort`` in sorted model-ID order, for models whose ``cmd``
   uses it. ``${PID}`` stays in ``cmdStop`` for the process layer.
5. Aliases, ``setParamsByID`` aliases, peers, routing (groups or the matrix, legacy top-level
   or ``routing.router``; the scheduler's priorities), selectors, profiles and hooks are
   cross-checked.

One module per part: :mod:`.values` (YAML values with their lines, ``${env.X}``),
:mod:`.macros`, :mod:`.filters`, :mod:`.models` (and aliases, timeouts, capabilities, compat),
:mod:`.groups` (and the matrix), :mod:`.peers`, :mod:`.routing` (routing, selectors, profiles),
:mod:`.settings` (ui, performance, store, logTimeFormat, upstream), :mod:`.hooks`,
:mod:`.document` (the top level, in this order); :mod:`.restart` says which models a reload
restarts. What llama-swap ignores silently and is not a typo becomes ``Config.warnings``.
"""

from .document import load_config, parse_config
from .restart import models_to_restart
from .values import ConfigError

__all__ = ["ConfigError", "load_config", "models_to_restart", "parse_config"]
