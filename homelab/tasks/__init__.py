"""doit task creators, one module per stage; ``dodo.py`` star-imports this package."""

from .build import task_build
from .deploy import task_deploy
from .fetch import task_fetch
from .install import task_install
from .lock import task_lock
from .plan import task_plan
from .render import task_render
from .source import task_source

__all__ = [
    "task_lock",
    "task_fetch",
    "task_source",
    "task_build",
    "task_plan",
    "task_render",
    "task_install",
    "task_deploy",
]
