"""One module per command: its settings (ranges, config, resume identity) and its pass over a data set."""
