"""What flatrob reads: checkpoints, layer specs, data sources, pickles to convert, detector and adversarial files."""
