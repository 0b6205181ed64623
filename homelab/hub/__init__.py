"""hub stage: pin model files in the lock, fetch them verified, read GGUF headers remotely.

- :mod:`homelab.hub.resolve` — ``resolve_lock`` (``homelab lock``), ``load_lock``
- :mod:`homelab.hub.fetch` — ``fetch_host`` (``homelab fetch``), ``model_files`` (local paths for render/deploy)
- :mod:`homelab.hub.gguf_header` — ``GGUFHeader``, ``read_local_header``, ``read_remote_header``, ``read_pinned_header``
- :mod:`homelab.hub.bench` — ``homelab bench fetch``
"""
