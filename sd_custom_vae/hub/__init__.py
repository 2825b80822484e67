"""Layer 6, the Hub: a training run, or any VAE a user names, pushed as a complete model repository."""

from .push import push_run

__all__ = ["push_run"]
