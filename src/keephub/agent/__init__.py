"""Code that runs where a job runs, inside its sandbox.

Nothing here imports the server's packages: each module runs as a plain file under `python -I`, with the
standard library only, so a job's sandbox needs no part of the server stack and no access to its data.
"""
