"""Buckets: Xet-backed files without history (`service`, `routes`). What a job's agent runs to keep a bucket
volume in step with its bucket is `keephub.agent.volume_sync`."""
