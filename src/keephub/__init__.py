"""keephub: a self-hosted Hugging Face-compatible hub and job runner where training results are never lost."""

__version__ = "0.1.0"
