"""The catalogue-embedding library the embedding job (``jobs/embed_catalogue.py``) runs: the
stages (verified reads → model inputs → embeddings), the plan against the previous run and the
streaming carry, the Ray Data pipeline whose workers write the run's files, and the client for
small increments through the running service."""
