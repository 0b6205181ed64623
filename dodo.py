"""doit entry point: `doit deploy host=xtx`. The tasks live in homelab.tasks."""

from homelab.tasks import *  # noqa: F401,F403
from homelab.tasks.config import DOIT_CONFIG  # noqa: F401
