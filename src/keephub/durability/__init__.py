"""Keeping training results: checks before a job starts (`preflight`) and what runs beside it.

Deliberately imports nothing: `python -m keephub.durability.sidecar` runs inside job sandboxes, where
this package's __init__ runs first and must not pull in the server (starlette, sqlalchemy) or torch.
Import the modules themselves, e.g. `from keephub.durability.preflight import preflight`.
"""
