"""hilbed example plug-in: registered through entry points (see pyproject.toml)."""

from __future__ import annotations


def register_models() -> None:
    """Entry point of ``hilbed.models``: registers the prefix lazily so the controller needs no torch."""
    from hilbed.nodes.workload.model_specs import register_model_loader
    register_model_loader("example-mean", "hilbed_example_plugin.model:load",
                          "example-mean:, a tiny mean-colour classifier for the synthetic set (example plug-in)")
