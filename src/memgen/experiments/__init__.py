"""One module per experiment family: parameters of each step from the config, the
sweep's points, and the tidy summary."""
