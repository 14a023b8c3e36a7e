"""The HTTP API and the jobs page, served by `ovis-batch serve` (FastAPI on uvicorn).

`create_app` (jobs.http.app) builds the application from the settings; the routers live in their own modules
(routes_write, routes_read, page) and authentication in jobs.http.auth. Importing this package imports no web
framework: the CLI loads it only when `serve` runs.
"""
