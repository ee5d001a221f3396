"""The Ray Serve application (classifier + HNSW search replicas); built in a later issue.

Inside this package use relative imports only: ``from ray import serve`` must keep meaning Ray's.
"""
