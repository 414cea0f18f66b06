"""Jobs: the Hugging Face Jobs API, a local scheduler, and a bubblewrap sandbox per attempt."""

from keephub.jobs.routes import routes
from keephub.jobs.scheduler import Scheduler
from keephub.jobs.service import JobService

__all__ = ["JobService", "Scheduler", "routes"]
