"""flatrob: what the flatness of the loss says about adversarial robustness."""

__version__ = "0.1.0"
