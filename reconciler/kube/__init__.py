"""The Kubernetes adapter: the only package that imports Kopf or the Kubernetes client (handlers, the run loop, the client, leader election)."""
