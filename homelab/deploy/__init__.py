"""deploy stage: generations, install and activation, health verification, rollback, remote hosts.

The core works on a *rendered directory* (the render stage's output: ``config.yaml``, systemd
units, env files and ``manifest.json`` with the hash of every input). A deploy that changes
anything copies it into a new numbered generation under ``HOMELAB_STATE/hosts/<host>/``, switches
the ``current`` link atomically, installs and (re)starts or reloads the service, verifies the
endpoint and rolls back to the previous generation when the check fails.
"""
