"""Buckets: Xet-backed files without history (`service`, `routes`), and the volume sync a job's agent runs
(`volume_sync`, which imports only the standard library and huggingface_hub, so this file imports nothing)."""
