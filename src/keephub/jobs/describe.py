"""A job's record as people read it: `keephub jobs inspect` and the hf_jobs MCP tool print the same text.

Pure functions of the Jobs API's job record (`JobService.to_wire`), so the server uses them without the
client libraries.
"""

from __future__ import annotations

import shlex

from keephub.durability.script import inline_script


def display_command(command: list[str]) -> str:
    """The command as people wrote it: a script sent inline shows as `uv run NAME ARGS`, not its base64."""
    script = inline_script(command)
    if script is not None:
        return shlex.join(["uv", "run", script.name, *script.arguments])
    return shlex.join(command)


def describe(info: dict) -> str:
    """Stage, script or command, flavor, attempts, the job's token, then the durability record."""
    status = info["status"]
    lines = [f"job {info['id']} in {info['owner']['name']}: {status['stage']}"
             + (f" ({status['message']})" if status["message"] else "")]
    script = info.get("script")
    if script:
        lines.append(f"   script: {display_command(info['command'])} (sent inline, {script['inlineBytes']:,} bytes)")
    else:
        lines.append(f"   command: {display_command(info['command'])}")
    lines.append(f"   flavor {info['flavor']}, timeout {info['timeoutSeconds']}s, started by {info['startedBy']}")
    lines += [f"   attempt {attempt['number']}: {attempt['outcome']}"
              + (f" ({attempt['message']})" if attempt["message"] else "") + _placement(attempt)
              for attempt in info["attempts"]]
    lines += [token_summary(info), durability_summary(info)]
    return "\n".join(lines)


def _placement(attempt: dict) -> str:
    """Where the attempt ran: the Slurm job id (or the local agent's pid) and the node."""
    executor = attempt.get("executor") or {}
    if not executor.get("id"):
        return ""
    what = "Slurm job" if executor["name"] == "slurm" else f"{executor['name']} agent pid"
    return f"; {what} {executor['id']}" + (f" on {executor['node']}" if executor.get("node") else "")


def token_summary(info: dict) -> str:
    """The job's own token: what it may write and whether it still works."""
    token = info.get("token")
    if not token:
        return "   token: none (the job was submitted without an HF_TOKEN=$HF_TOKEN secret)"
    writes = ", ".join(token["scopes"]) if token["role"] == "write" else "nothing (read-only)"
    return f"   token {token['name']}: writes {writes}; {token['state']}"


def durability_summary(info: dict) -> str:
    """The durability record: the verdict first, then every push."""
    record = info.get("durability")
    if not record:
        return "durability: keephub did not guard this job's results (no training config or keephub.repo label)"
    kept = [record["targetRepo"]] if record["targetRepo"] else []
    kept += [f"bucket {bucket['bucket']} ({bucket['mountPath']})" for bucket in record.get("buckets", [])]
    lines = [f"durability record of job {info['id']} → {', '.join(kept) or 'nothing kept'}",
             f"   verdict: {record['verdict']['message']}"]
    for push in record["pushes"]:
        mark = "✅" if push["verified"] else "❌"
        lines.append(f"   {mark} attempt {push['attempt']}: {push['label']} → {push['revision']} "
                     f"commit {push['commit'][:12]}, {len(push['files'])} files, {push['bytes']:,} bytes"
                     f"{', verified' if push['verified'] else ', NOT verified'}"
                     f"{' (already there, identical: nothing pushed)' if push.get('alreadyThere') else ''}")
    lines += [f"   ❌ {failure['label']}: {failure['reason']}" for failure in record["failures"]]
    for bucket in record.get("buckets", []):
        mark = "✅" if bucket["saved"] else "❌"
        lines.append(f"   {mark} attempt {bucket['attempt']}: {bucket['mountPath']} → bucket {bucket['bucket']}: "
                     f"{bucket['files']} files, {bucket['bytes']:,} bytes"
                     + (", final push verified" if bucket["finalSync"] and bucket["saved"] else "")
                     + (f" ({bucket['error']})" if bucket.get("error") else ""))
    return "\n".join(lines)
