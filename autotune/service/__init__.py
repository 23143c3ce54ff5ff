"""``autotune serve``: the HTTP service (JSON API v1, server-sent progress, bearer auth) and its study runner.

:func:`autotune.service.app.create_app` builds the FastAPI app from :class:`autotune.service.settings.Settings`.
"""
