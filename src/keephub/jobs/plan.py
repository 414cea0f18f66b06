"""What an attempt's agent is told when it starts: the command, environment, limits, deadline and network,
all decided here, on the server, from the job's spec and keephub's settings (see keephub.agent.main)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from keephub.agent.output import timestamp
from keephub.config import ConfigError, Settings
from keephub.jobs.flavors import Flavor

EGRESS_PORT = 3128
JOB_NETWORKS = ("isolated", "host")


@dataclass(frozen=True)
class JobNetwork:
    """How jobs reach keephub and the egress proxy: listeners inside isolated sandboxes that the agent forwards
    (to keephub, to its egress proxy), or the host's network."""

    endpoint: str
    routes: tuple[dict, ...] = ()
    host_names: tuple[str, ...] = ()
    proxy_env: dict[str, str] = field(default_factory=dict)

    def to_plan(self, egress_allow: str) -> dict | None:
        if not self.routes:
            return None
        return {"routes": list(self.routes), "hostNames": list(self.host_names), "egressAllow": egress_allow}


def job_network(settings: Settings) -> JobNetwork:
    """In an isolated sandbox, keephub's URL leads to the sandbox's own loopback, where the agent forwards it to
    keephub: a host name in the URL is pointed at loopback, a non-loopback address is replaced by 127.0.0.1, as
    is an IPv6 one (links keephub returns with it will not work from jobs: give public_url a host name)."""
    if settings.job_network not in JOB_NETWORKS:
        raise ConfigError(f"job_network={settings.job_network!r} must be one of {', '.join(JOB_NETWORKS)}")
    if settings.job_network == "host":
        return JobNetwork(endpoint=settings.base_url)
    url = urlsplit(settings.base_url)
    if url.scheme != "http":
        raise ConfigError(f"public_url {settings.base_url} is not http://: jobs in isolated networks reach keephub "
                          "over plain HTTP through their agent; set job_network = \"host\" to let jobs use it")
    host, port = (url.hostname or "127.0.0.1"), url.port or 80
    names: tuple[str, ...] = ()
    try:
        address = ipaddress.ip_address(host)
        listen = host if address.version == 4 and address.is_loopback else "127.0.0.1"
    except ValueError:
        listen, names = "127.0.0.1", (host,)
    endpoint = f"http://{host if names else listen}:{port}"
    egress_port = EGRESS_PORT if port != EGRESS_PORT else EGRESS_PORT + 1
    proxy = f"http://127.0.0.1:{egress_port}"
    no_proxy = ",".join(["127.0.0.1", "localhost", "::1", *names])
    return JobNetwork(
        endpoint=endpoint,
        routes=({"host": listen, "port": port, "to": "hub"}, {"host": "127.0.0.1", "port": egress_port, "to": "egress"}),
        host_names=names,
        proxy_env={"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "http_proxy": proxy,
                   "NO_PROXY": no_proxy, "no_proxy": no_proxy},
    )


def limits_of(flavor: Flavor, settings: Settings) -> dict:
    """The flavor's limits, each capped by its job_* setting when that is set."""
    def capped(own: int, cap: int) -> int:
        return min(own, cap) if cap else own
    return {"memory_bytes": capped(flavor.memory_gb, settings.job_memory_gb) * 1024**3,
            "processes": capped(flavor.processes, settings.job_processes),
            "disk_bytes": capped(flavor.disk_gb, settings.job_disk_gb) * 1024**3}


@dataclass(frozen=True)
class AttemptFacts:
    """What the plan is made from, read from the database when the agent starts."""

    job_id: str
    attempt: int
    max_attempts: int
    owner: str
    uid: int | None
    spec: dict
    secrets: dict[str, str]
    flavor: Flavor
    deadline: float  # seconds since the epoch
    sidecar_credential: str | None
    volume_token: str | None  # the job's token, for the agent to mount the volumes with


def build_plan(facts: AttemptFacts, settings: Settings, network: JobNetwork) -> dict:
    spec = facts.spec
    if facts.attempt == 1:
        notes = [f"===== Job started at {timestamp()} =====", *spec.get("preflightNotes", [])]
    else:
        notes = [f"===== Attempt {facts.attempt} of {facts.max_attempts}: starting in a fresh sandbox ====="]
    durability = spec.get("durability")
    sidecar = None
    if durability:
        sidecar = {"repo": durability["repo"], "outputDir": durability["outputDir"],
                   "resume": bool(durability.get("resume")), "solePusher": durability.get("scriptPushes") is False}
    return {
        "command": spec["command"],
        "env": {
            "defaults": {"HF_ENDPOINT": network.endpoint, **network.proxy_env},
            "user": {**spec["environment"], **facts.secrets},
            "enforced": {"JOB_ID": facts.job_id, "KEEPHUB_JOB_ID": facts.job_id,
                         "KEEPHUB_ATTEMPT": str(facts.attempt), "KEEPHUB_AGENT_URL": network.endpoint},
        },
        "redact": [*facts.secrets.values(), *([facts.volume_token] if facts.volume_token else [])],
        "notes": notes,
        "owner": facts.owner,
        "uid": facts.uid,
        "flavor": facts.flavor.name,
        "limits": limits_of(facts.flavor, settings),
        "deadline": facts.deadline,
        "grace": settings.job_grace_seconds,
        "logMaxBytes": settings.job_log_max_bytes,
        "network": network.to_plan(settings.job_egress_allow),
        "sidecar": sidecar,
        "sidecarCredential": facts.sidecar_credential,
        "volumes": spec.get("volumes") or [],
        "volumeToken": facts.volume_token,
    }
