"""Code that runs where a job runs: its agent (on the job's node) and what runs inside its sandbox.

Nothing here imports the server's packages: these modules use the standard library, and the volume sync
huggingface_hub, so a job's node needs no part of the server stack and no access to its data.
"""
