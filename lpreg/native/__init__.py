"""The native backend: the one-process trainer (CPU or one GPU), the instrument and the oracle the verl backend is
tested against. Rollout engines, the chunked token pass, evaluation, checkpoints and the embedded model live here."""
