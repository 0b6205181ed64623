"""hub stage: pin model files in the lock, fetch them verified, read GGUF headers remotely.

- :mod:`homelab.hub.resolve` — ``resolve_lock`` (``homelab lock``), ``load_lock``
- :mod:`homelab.hub.cache` — where fetched files live (``model_files``, ``local_path`` for plan/render/deploy) and the fetch manifests
- :mod:`homelab.hub.download` — resumable, hashed HTTP streaming; URL downloads
- :mod:`homelab.hub.fetch` — ``fetch_host`` (``homelab fetch``): every pinned file present and verified
- :mod:`homelab.hub.gguf_header` — ``GGUFHeader``, ``read_local_header``, ``read_remote_header``, ``read_pinned_header``
"""
