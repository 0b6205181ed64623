"""doit tasks: the deploy chain as a table of stages, each turned into tasks by one factory.

Each stage (what it consumes, produces, and its fingerprint) lives with its own logic; this
package only lists them in order and adds the ``deploy`` tasks on top. ``dodo.py`` star-imports
this package; ``homelab deploy HOST`` runs the same graph in-process (:func:`.commands.run_doit`).
"""

from ..deploy.stage import install_stage
from ..hub.stage import FETCH, lock_stage
from ..llamacpp.stage import BUILD, SOURCE
from ..plan.stage import PLAN
from ..render.stage import RENDER
from .deploy import task_deploy
from .factory import stage_tasks
from .graph import flag, var

task_lock = stage_tasks(lambda: lock_stage(frozen=flag("frozen")))
task_fetch = stage_tasks(lambda: FETCH)
task_source = stage_tasks(lambda: SOURCE)
task_build = stage_tasks(lambda: BUILD)
task_plan = stage_tasks(lambda: PLAN)
task_render = stage_tasks(lambda: RENDER)
task_install = stage_tasks(
    lambda: install_stage(service=var("service"), root=var("root"), verify=var("verify"), local=flag("local"))
)

__all__ = [
    "task_build",
    "task_deploy",
    "task_fetch",
    "task_install",
    "task_lock",
    "task_plan",
    "task_render",
    "task_source",
]
