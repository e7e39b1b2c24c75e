"""The harness above the backends: typed configuration, tracking (local store and W&B), the sweep loop and the
comparison protocol, Hydra callbacks and pruning. It knows runs, not tensors."""
